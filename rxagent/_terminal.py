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
from dataclasses import dataclass, field
from typing import Any, TextIO

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


@dataclass
class _Call:
    call_id: str
    name: str
    arguments_text: str = ""
    arguments: dict[str, Any] | None = None
    state: str = "writing"  # writing -> running -> ok | failed
    progress: str = ""
    result: str = ""
    # Wall-clock times from the events: ends are emitted in call order, so a fast
    # call's ToolCallEnded may arrive well after the call really ended.
    started: float = field(default_factory=time.time)
    ended: float | None = None

    @property
    def done(self) -> bool:
        return self.state in ("ok", "failed")

    def signature(self) -> str:
        if self.arguments is None:  # still streaming: the JSON so far
            return f"{self.name} {self.arguments_text}"
        shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in self.arguments.items())
        return f"{self.name}({shown})"


def _one_line(value: Any, limit: int = 72) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _progress_text(data: Any) -> str:
    if isinstance(data, dict):
        stage = data.get("stage") or data.get("message") or data.get("status")
        done, total = data.get("done"), data.get("total")
        if stage is not None and done is not None and total is not None:
            return f"{stage} {done}/{total}"
        if stage is not None:
            return str(stage)
    return _one_line(data, 40)


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
    """What the views share: the calls of the current step and the run's counts."""

    def __init__(self, out: TextIO, *, color: bool) -> None:
        self.out = out
        self.color = color
        self.symbols = Symbols.for_stream(out)
        self.calls: dict[str, _Call] = {}
        self.failed_calls = 0
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

    def call(self, call_id: str, name: str) -> _Call:
        view = self.calls.get(call_id)
        if view is None:
            view = self.calls[call_id] = _Call(call_id, name)
        return view

    def on_event(self, event: AgentEvent) -> None:
        """Render one event."""
        if isinstance(event, TextDelta):
            self.text(event.text)
        elif isinstance(event, ReasoningDelta):
            self.text(self.paint(event.text, "2"))
        elif isinstance(event, ToolArgsDelta):
            view = self.call(event.call_id, event.name)
            view.name = view.name or event.name
            view.arguments_text += event.delta
            self.changed(view)
        elif isinstance(event, ToolCallStarted):
            view = self.call(event.call_id, event.name)
            view.arguments, view.state, view.started = event.arguments, "running", event.at
            self.changed(view)
        elif isinstance(event, ToolProgress):
            if event.call_id in self.calls:
                view = self.calls[event.call_id]
                view.progress = _progress_text(event.data)
                self.progressed(view)
        elif isinstance(event, ToolCallEnded):
            view = self.call(event.call_id, event.name)
            view.ended = event.at
            if event.error is None:
                view.state, view.result = "ok", _one_line(event.output)
            else:
                view.state, view.result = "failed", _one_line(event.error)
                self.failed_calls += 1
            self.changed(view)
        elif isinstance(event, StepRetry):
            self.retried(event)
        elif isinstance(event, StepCompleted):
            self.step_done()
        elif isinstance(event, RunCompleted):
            self.step_done()
            self.end_line()
            seconds = time.monotonic() - self.started
            line = summary(
                event.run, seconds=seconds, failed_calls=self.failed_calls, rule=self.symbols.rule
            )
            self.write(self.paint(line, "2") + "\n")

    # -- what the views do differently ------------------------------------------------
    def text(self, text: str) -> None:
        raise NotImplementedError

    def changed(self, view: _Call) -> None:
        raise NotImplementedError

    def progressed(self, view: _Call) -> None:
        raise NotImplementedError

    def retried(self, event: StepRetry) -> None:
        self.end_line()
        note = f"  {self.symbols.retry} attempt {event.attempt} failed, retrying: {event.error}"
        self.write(self.paint(note, "33") + "\n")

    def step_done(self) -> None:
        self.calls = {}

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

    def changed(self, view: _Call) -> None:
        s = self.symbols
        if view.state == "running":
            self.end_line()
            self.write(f"  {s.arrow} {view.signature()}\n")
        elif view.done:
            self.end_line()
            mark = s.ok if view.state == "ok" else s.failed
            took = (view.ended or view.started) - view.started
            self.write(f"  {mark} {view.name} {s.arrow} {view.result} ({took:.1f} s)\n")

    def progressed(self, view: _Call) -> None:
        self.end_line()
        self.write(f"    {self.symbols.dot} {view.name}: {view.progress}\n")


class LiveView(View):
    """A live terminal view: the step's tool calls are a block of lines redrawn in place."""

    def __init__(self, out: TextIO, *, color: bool) -> None:
        super().__init__(out, color=color)
        self.block: list[_Call] = []  # the calls drawn, in call order
        self.drawn = 0  # how many lines the block takes on screen
        self.frame = 0
        self.held: list[str] = []  # text that arrived while calls were live

    def text(self, text: str) -> None:
        if self.block and not all(v.done for v in self.block):
            self.held.append(text)  # drawn under the block once its calls end
            return
        self.close_block()
        self.write(text)
        self.line_open = not text.endswith("\n")

    def changed(self, view: _Call) -> None:
        if view not in self.block:
            self.block.append(view)
        self.draw()
        if self.held and all(v.done for v in self.block):
            held, self.held = "".join(self.held), []
            self.close_block()
            self.text(held)

    def progressed(self, view: _Call) -> None:
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
        if any(not v.done for v in self.block):
            self.draw()

    def draw(self) -> None:
        if not self.block:
            return
        self.end_line()
        width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
        s = self.symbols
        now = time.time()
        lines: list[str] = []
        for view in self.block:
            if view.state == "ok":
                mark = self.paint(s.ok, "32")
            elif view.state == "failed":
                mark = self.paint(s.failed, "31")
            else:
                mark = self.paint(s.spinner[self.frame % len(s.spinner)], "36")
            took = (view.ended or now) - view.started
            head = _clip(f"{view.signature()}", width // 2)
            if view.done:
                tail = f"{s.arrow} {view.result}"
            elif view.state == "writing":
                tail = f"writing arguments{s.ellipsis}"
            else:
                tail = view.progress or f"running{s.ellipsis}"
            budget = max(8, width - len(head) - 14)
            line = f"  {mark} {head} {self.paint(_clip(tail, budget), '2')} "
            lines.append(line + self.paint(f"{took:.1f}s", "2"))
        # Move up to the block's first line, then rewrite every line of it.
        moves = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.write(moves + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.drawn = len(lines)

    def failed(self, error: BaseException) -> None:
        self.close_block()
        super().failed(error)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(1, limit - 3)] + "..."


def is_live(out: TextIO) -> bool:
    """Whether ``out`` is a terminal that understands cursor movement."""
    return out.isatty() and os.environ.get("TERM", "") != "dumb"


def wants_color(out: TextIO) -> bool:
    """Colour for a live terminal, unless ``NO_COLOR`` is set."""
    return is_live(out) and not os.environ.get("NO_COLOR")
