"""Live rendering of a run in a terminal, with plain ANSI escapes (used by the demo).

:class:`LiveView` draws for a TTY: tokens as they stream, then one line per tool
call of the step with a spinner, its progress and, once it ends, its result or
error; calls running in parallel are drawn (and updated) together. :class:`PlainView`
writes the same information as plain lines, for pipes and files. Both end with a
one-line summary of the run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from rxagent._text import clip, one_line
from rxagent.events import (
    AgentEvent,
    ReasoningDelta,
    RunCompleted,
    StepCompleted,
    StepRetry,
    TextDelta,
    ToolArgsDelta,
    ToolCallEnded,
    ToolCallStarted,
    ToolProgress,
)
from rxagent.events import (
    AgentRun as AgentRunResult,
)
from rxagent.messages import ToolCallStatus
from rxagent.state import RunState, ToolCallState

__all__ = ["LiveView", "PlainView", "Symbols", "View", "is_live", "summary", "wants_color"]


@dataclass(frozen=True)
class Symbols:
    spinner: tuple[str, ...]
    ok: str
    failed: str
    arrow: str
    dot: str
    retry: str
    rule: str
    ellipsis: str

    @staticmethod
    def for_stream(stream: TextIO) -> Symbols:
        """Unicode symbols where the stream can encode them, else ASCII."""
        fancy = Symbols(
            spinner=tuple("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"),
            ok="✓",
            failed="✗",
            arrow="→",
            dot="·",
            retry="↻",
            rule="─",
            ellipsis="…",
        )
        try:
            "".join([*fancy.spinner, fancy.ok, fancy.failed, fancy.arrow, fancy.dot]).encode(
                stream.encoding or "ascii"
            )
            (fancy.retry + fancy.rule + fancy.ellipsis).encode(stream.encoding or "ascii")
        except (UnicodeEncodeError, LookupError):
            return Symbols(tuple("|/-\\"), "ok", "x", "->", "-", "retry", "-", "...")
        return fancy


_OK = ToolCallStatus.COMPLETED
_ENDED = frozenset(
    {
        ToolCallStatus.COMPLETED,
        ToolCallStatus.FAILED,
        ToolCallStatus.REJECTED,
        ToolCallStatus.CANCELLED,
    }
)


def _signature(call: ToolCallState) -> str:
    if call.arguments is None:  # still streaming: the JSON so far
        return f"{call.name} {call.arguments_text}"
    shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in call.arguments.items())
    return f"{call.name}({shown})"


def _result(call: ToolCallState) -> str:
    return one_line(call.output if call.error is None else call.error)


def _took(call: ToolCallState, now: float) -> float:
    started = call.started_at if call.started_at is not None else now
    return (call.ended_at or now) - started


def _progress_text(data: Any) -> str:
    if isinstance(data, dict):
        stage = data.get("stage") or data.get("message") or data.get("status")
        done, total = data.get("done"), data.get("total")
        if stage is not None and done is not None and total is not None:
            return f"{stage} {done}/{total}"
        if stage is not None:
            return str(stage)
    return one_line(data, 40)


def _nested_tail(call: ToolCallState, s: Symbols) -> str:
    """What a sub-agent is doing, for its call's line: a call it runs, or its text."""
    nested = call.nested
    while nested is not None:
        running = [c for c in nested.calls.values() if not c.status.is_final]
        if not running:
            return f"{s.arrow} {one_line(nested.step_text[-60:] or 'thinking' + s.ellipsis)}"
        deeper = running[-1]
        if deeper.nested is None:
            return f"{s.arrow} {_signature(deeper)}"
        nested = deeper.nested
    return f"running{s.ellipsis}"


def summary(run: AgentRunResult, *, seconds: float, failed_calls: int, rule: str = "-") -> str:
    """One line: steps, tool calls, tokens, time and the stop reason."""
    calls = f"{run.tool_calls} tool call{'s' if run.tool_calls != 1 else ''}"
    if failed_calls:
        calls += f" ({failed_calls} failed)"
    usage = run.usage
    tokens = (
        f"{usage.total_tokens:,} tokens ({usage.prompt_tokens:,} in, "
        f"{usage.completion_tokens:,} out)"
    )
    return (
        f"{rule * 2} {run.steps} step{'s' if run.steps != 1 else ''} · {calls} · {tokens} · "
        f"{seconds:.1f} s · stop: {run.stop.value}"
    )


class View:
    """What the views share: the run's state (a fold of its events) and the output.

    The calls drawn come from :class:`~rxagent.state.RunState`, the fold every view
    shares; the text is written as it streams.
    """

    def __init__(self, out: TextIO, *, color: bool) -> None:
        self.out = out
        self.color = color
        self.symbols = Symbols.for_stream(out)
        self.state = RunState()
        self.line_open = False  # the cursor is after streamed text, mid-line
        self.started = time.monotonic()
        #: Set when the output went away (``rxagent | head``); nothing is written after.
        self.closed = False
        #: Called once when the output goes away.
        self.on_closed: Callable[[], None] = lambda: None

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def write(self, text: str) -> None:
        if self.closed:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:
            self.closed = True
            self.on_closed()

    def end_line(self) -> None:
        if self.line_open:
            self.write("\n")
            self.line_open = False

    @property
    def failed_calls(self) -> int:
        return sum(1 for c in self.state.calls.values() if c.status is ToolCallStatus.FAILED)

    def on_event(self, event: AgentEvent) -> None:
        """Render one event."""
        self.state = self.state.apply(event)
        kind = type(event)
        if kind is TextDelta:
            self.text(event.text)  # type: ignore[union-attr]
        elif kind is ReasoningDelta:
            self.text(self.paint(event.text, "2"))  # type: ignore[union-attr]
        elif kind is ToolProgress:
            call = self.state.calls.get(event.call_id)  # type: ignore[union-attr]
            if call is not None:
                if event.event is not None:  # type: ignore[union-attr]
                    self.nested(call, event)  # type: ignore[arg-type]
                else:
                    self.progressed(call)
        elif kind in (ToolArgsDelta, ToolCallStarted, ToolCallEnded):
            self.changed(self.state.calls[event.call_id])  # type: ignore[union-attr]
        elif kind is StepRetry:
            self.retried(event)  # type: ignore[arg-type]
        elif kind is StepCompleted:
            self.step_done()
        elif kind is RunCompleted:
            self.step_done()
            self.end_line()
            seconds = time.monotonic() - self.started
            line = summary(
                event.run,  # type: ignore[union-attr]
                seconds=seconds,
                failed_calls=self.failed_calls,
                rule=self.symbols.rule,
            )
            self.write(self.paint(line, "2") + "\n")

    # -- what the views do differently ------------------------------------------------
    def text(self, text: str) -> None:
        raise NotImplementedError

    def changed(self, call: ToolCallState) -> None:
        raise NotImplementedError

    def progressed(self, call: ToolCallState) -> None:
        raise NotImplementedError

    def nested(self, call: ToolCallState, event: ToolProgress) -> None:
        """An event of a sub-agent's run (``agent.as_tool()``), under ``call``."""
        self.progressed(call)

    def retried(self, event: StepRetry) -> None:
        self.end_line()
        note = f"  {self.symbols.retry} attempt {event.attempt} failed, retrying: {event.error}"
        self.write(self.paint(note, "33") + "\n")

    def step_done(self) -> None:
        """The step ended: its calls are drawn for good."""

    def tick(self) -> None:
        """Called a dozen times a second while the run lasts (spinners)."""

    def failed(self, error: BaseException) -> None:
        self.end_line()
        self.write(self.paint(f"error: {type(error).__name__}: {error}", "31") + "\n")


class PlainView(View):
    """Plain lines, for output that is not a terminal: no spinner, no cursor movement."""

    def text(self, text: str) -> None:
        self.write(text)
        self.line_open = not text.endswith("\n")

    def changed(self, call: ToolCallState) -> None:
        s = self.symbols
        if call.status is ToolCallStatus.RUNNING:
            self.end_line()
            self.write(f"  {s.arrow} {_signature(call)}\n")
        elif call.status.is_final:
            self.end_line()
            mark = s.ok if call.status is _OK else s.failed
            took = _took(call, call.ended_at or time.time())
            self.write(f"  {mark} {call.name} {s.arrow} {_result(call)} ({took:.1f} s)\n")

    def progressed(self, call: ToolCallState) -> None:
        self.end_line()
        self.write(f"    {self.symbols.dot} {call.name}: {_progress_text(call.last_progress)}\n")

    def nested(self, call: ToolCallState, event: ToolProgress) -> None:
        # A sub-agent's run, indented under its call: its tool calls as they end, and
        # its text once each of its steps is done.
        inner = event.innermost
        pad = "    " * (event.depth + 1)
        s = self.symbols
        if isinstance(inner, ToolCallEnded):
            mark = s.ok if inner.error is None else s.failed
            result = one_line(inner.output if inner.error is None else inner.error)
            self.end_line()
            self.write(f"{pad}{mark} {inner.name} {s.arrow} {result}\n")
        elif isinstance(inner, StepCompleted):
            for message in inner.outcome.messages:
                text = getattr(message, "content", None)
                if message.role == "assistant" and text:
                    self.end_line()
                    self.write(f"{pad}{call.name}: {one_line(text, 100)}\n")


class LiveView(View):
    """A live terminal view: the step's tool calls are a block of lines redrawn in place."""

    def __init__(self, out: TextIO, *, color: bool) -> None:
        super().__init__(out, color=color)
        self.block: list[str] = []  # the ids of the calls drawn, in call order
        self.drawn = 0  # how many lines the block takes on screen
        self.frame = 0
        self.held: list[str] = []  # text that arrived while calls were live

    def _block_done(self) -> bool:
        calls = self.state.calls
        return all(calls[i].status.is_final for i in self.block)

    def text(self, text: str) -> None:
        if self.block and not self._block_done():
            self.held.append(text)  # drawn under the block once its calls end
            return
        self.close_block()
        self.write(text)
        self.line_open = not text.endswith("\n")

    def changed(self, call: ToolCallState) -> None:
        if call.call_id not in self.block:
            self.block.append(call.call_id)
        self.draw()
        if self.held and self._block_done():
            held, self.held = "".join(self.held), []
            self.close_block()
            self.text(held)

    def progressed(self, call: ToolCallState) -> None:
        self.draw()

    def step_done(self) -> None:
        if self.held:
            held, self.held = "".join(self.held), []
            self.close_block()
            self.text(held)
        self.close_block()
        super().step_done()

    def close_block(self) -> None:
        """Leave the block on screen as it is; later output goes under it."""
        self.block, self.drawn = [], 0

    def tick(self) -> None:
        self.frame += 1
        if self.block and not self._block_done():
            self.draw()

    def draw(self) -> None:
        if not self.block:
            return
        self.end_line()
        width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
        s = self.symbols
        now = time.time()
        lines: list[str] = []
        for call in (self.state.calls[i] for i in self.block):
            if call.status is _OK:
                mark = self.paint(s.ok, "32")
            elif call.status.is_final:
                mark = self.paint(s.failed, "31")
            else:
                mark = self.paint(s.spinner[self.frame % len(s.spinner)], "36")
            took = _took(call, now)
            head = clip(_signature(call), width // 2)
            if call.status.is_final:
                tail = f"{s.arrow} {_result(call)}"
            elif call.status is ToolCallStatus.REQUESTED:
                tail = f"writing arguments{s.ellipsis}"
            elif call.nested is not None:
                tail = _nested_tail(call, s)
            elif call.progress:
                tail = _progress_text(call.last_progress)
            else:
                tail = f"running{s.ellipsis}"
            budget = max(8, width - len(head) - 14)
            line = f"  {mark} {head} {self.paint(clip(tail, budget), '2')} "
            lines.append(line + self.paint(f"{took:.1f}s", "2"))
        # Move up to the block's first line, then rewrite every line of it.
        moves = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.write(moves + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.drawn = len(lines)

    def failed(self, error: BaseException) -> None:
        self.close_block()
        super().failed(error)


def is_live(out: TextIO) -> bool:
    """Whether ``out`` is a terminal that understands cursor movement."""
    return out.isatty() and os.environ.get("TERM", "") != "dumb"


def wants_color(out: TextIO) -> bool:
    """Colour for a live terminal, unless ``NO_COLOR`` is set."""
    return is_live(out) and not os.environ.get("NO_COLOR")
