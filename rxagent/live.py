"""Live display of a run: text as it arrives, one row per tool call, usage so far.

``display(run)`` subscribes to a run (or any stream of run events) and shows it
updating in place while it streams::

    import rxagent as ra

    run = agent.run("Weather in Paris and Oslo?")
    shown = ra.display(run)     # returns at once; the kernel goes on serving
    view = await shown          # optional: wait for the end (the final RunView)

In Jupyter (an IPython kernel) the run is one output, updated through
IPython's display-update mechanism (``display(..., display_id=...)`` then
``update_display``); elsewhere it is written to ``sys.stdout`` as plain text:
the text as it arrives, a line when a tool call changes state, and a summary.
Updates are coalesced (at most one every ``interval`` seconds, on the event
loop the run lives on), so a 100k-token run publishes a few dozen updates,
not 100k; the final state is always published.

:class:`RunView` is the state the display shows (a fold of the events), for
anyone building a UI of their own. IPython is imported only when the notebook
display is used.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TextIO

from reactivex import Observable, abc

from rxagent.aio import running_loop
from rxagent.events import (
    AgentEvent,
    AgentRun,
    Paused,
    RunCompleted,
    RunFailed,
    StepCompleted,
    StepRetry,
    StepStarted,
    TextDelta,
    ToolArgsDelta,
    ToolCallEnded,
    ToolCallPending,
    ToolCallStarted,
    ToolProgress,
    UsageDelta,
)
from rxagent.messages import ToolCallStatus, Usage
from rxagent.policies import StopReason

__all__ = [
    "CallRow",
    "CallState",
    "NotebookPublisher",
    "Publisher",
    "RunDisplay",
    "RunStatus",
    "RunView",
    "TextPublisher",
    "display",
]

log = logging.getLogger("rxagent")

#: Longest argument / result preview in a row, in characters.
_PREVIEW = 60


class CallState(StrEnum):
    """Where a tool call is, as the display shows it."""

    #: The model is still writing its arguments, or it waits for a free slot.
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    #: Stopped before it ended (the run was cancelled, or another call failed fast).
    CANCELLED = "cancelled"
    #: Refused by an approval strategy or a human.
    REJECTED = "rejected"
    AWAITING_APPROVAL = "waiting for approval"
    #: Deferred to a later time.
    SCHEDULED = "scheduled"

    @property
    def is_final(self) -> bool:
        return self in (CallState.DONE, CallState.FAILED, CallState.CANCELLED, CallState.REJECTED)


class RunStatus(StrEnum):
    """Where the run is, as the display shows it."""

    #: Nothing has arrived yet.
    WAITING = "waiting"
    RUNNING = "running"
    COMPLETED = "completed"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    FAILED = "failed"
    #: The stream ended without a ``RunCompleted`` (a ``take_until`` cut it short, say).
    ENDED = "ended"


@dataclass
class CallRow:
    """One tool call: its name, arguments, state and timing (``time.time()`` values)."""

    call_id: str
    name: str
    step: int
    state: CallState = CallState.QUEUED
    #: The arguments, once complete and valid (``ToolCallStarted``).
    arguments: dict[str, Any] | None = None
    #: The JSON arguments text as the model streams it.
    arguments_text: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    output: Any = None
    error: str | None = None
    #: How many ``ToolProgress`` items a streaming tool has produced.
    progress: int = 0

    def elapsed(self, now: float | None = None) -> float | None:
        """Seconds the call ran (so far, while it runs); ``None`` if it never started."""
        if self.started_at is None:
            return None
        if self.ended_at is not None:
            return max(0.0, self.ended_at - self.started_at)
        if self.state is CallState.RUNNING:
            return max(0.0, (time.time() if now is None else now) - self.started_at)
        return None

    @property
    def arguments_preview(self) -> str:
        if self.arguments is not None:
            text = json.dumps(self.arguments, ensure_ascii=False, default=str)
        else:
            text = self.arguments_text
        return _shorten(text)

    @property
    def result_preview(self) -> str:
        if self.error is not None:
            return _shorten(self.error)
        if self.state is CallState.DONE:
            text = self.output if isinstance(self.output, str) else _json(self.output)
            return _shorten(text)
        if self.progress:
            return f"{self.progress} progress item{'s' if self.progress != 1 else ''}"
        return ""


class RunView:
    """What a run has shown so far: text per step, tool-call rows, usage and status.

    A fold of the run's events: feed it with :meth:`apply` (and :meth:`fail` /
    :meth:`end` when the stream ends); render it with :meth:`render_text`,
    :meth:`render_html` or :meth:`bundle`. Times are wall-clock
    (``time.time()``), as on the events.
    """

    def __init__(self) -> None:
        self.status = RunStatus.WAITING
        #: The step under way (or the last one).
        self.step = 0
        #: Steps completed.
        self.steps = 0
        # The text pieces of each step; joined only when the view is rendered, so a
        # long run costs O(1) per piece.
        self._pieces: dict[int, list[str]] = {}
        self.calls: dict[str, CallRow] = {}
        self.usage = Usage()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.stop: StopReason | None = None
        #: The error, as ``"ErrorType: message"``, when the run failed.
        self.error: str | None = None
        #: The final run, once ``RunCompleted`` arrived.
        self.result: AgentRun | None = None
        #: How many events were applied.
        self.events = 0

    # -- folding events ------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.status not in (RunStatus.WAITING, RunStatus.RUNNING)

    @property
    def texts(self) -> dict[int, str]:
        """The assistant text of each step so far (a retried step starts again)."""
        return {step: "".join(pieces) for step, pieces in sorted(self._pieces.items())}

    @property
    def text(self) -> str:
        """The text of every step, a line between steps."""
        return "\n".join(t for t in self.texts.values() if t)

    @property
    def rows(self) -> list[CallRow]:
        """The tool calls in the order they appeared."""
        return list(self.calls.values())

    def apply(self, event: AgentEvent) -> None:
        """Update the view with one event."""
        self.events += 1
        if self.status is RunStatus.WAITING:
            self.status = RunStatus.RUNNING
        self.step = max(self.step, event.step)
        if isinstance(event, TextDelta):
            self._pieces.setdefault(event.step, []).append(event.text)
        elif isinstance(event, ToolArgsDelta):
            self._row(event.call_id, event.name, event.step).arguments_text += event.delta
        elif isinstance(event, ToolCallStarted):
            row = self._row(event.call_id, event.name, event.step)
            row.state, row.arguments, row.started_at = CallState.RUNNING, event.arguments, event.at
        elif isinstance(event, ToolProgress):
            if event.call_id in self.calls:
                self.calls[event.call_id].progress += 1
        elif isinstance(event, ToolCallEnded):
            self._ended(event)
        elif isinstance(event, UsageDelta):
            self.usage = self.usage + Usage(
                prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens
            )
        elif isinstance(event, StepStarted):
            if self.started_at is None:
                self.started_at = event.at
        elif isinstance(event, StepRetry):
            # The provider starts the turn again: what it streamed so far is void.
            self._pieces.pop(event.step, None)
        elif isinstance(event, StepCompleted):
            self._step_completed(event)
        elif isinstance(event, Paused):
            self._paused(event)
        elif isinstance(event, RunCompleted):
            self._completed(event)
        elif isinstance(event, ToolCallPending):
            row = self._row(event.call_id, event.name, event.step)
            row.arguments = event.arguments
            row.state = _waiting(scheduled=event.awaiting == "schedule")
        elif isinstance(event, RunFailed):
            self._failed(f"{event.error_type}: {event.message}", event.at)

    def fail(self, error: BaseException) -> None:
        """The stream ended with ``error``."""
        message = getattr(error, "message", None) or str(error)
        self._failed(f"{type(error).__name__}: {message}", time.time())

    def end(self) -> None:
        """The stream completed (after ``RunCompleted``, or cut short without one)."""
        if not self.done:
            self.status = RunStatus.ENDED
            self.ended_at = time.time()
            self._stop_open_calls()

    def _row(self, call_id: str, name: str, step: int) -> CallRow:
        row = self.calls.get(call_id)
        if row is None:
            row = self.calls[call_id] = CallRow(call_id=call_id, name=name, step=step)
        return row

    def _ended(self, event: ToolCallEnded) -> None:
        row = self._row(event.call_id, event.name, event.step)
        row.ended_at, row.output, row.error = event.at, event.output, event.error
        if event.status is ToolCallStatus.REJECTED:
            row.state = CallState.REJECTED
        else:
            row.state = CallState.DONE if event.error is None else CallState.FAILED

    def _step_completed(self, event: StepCompleted) -> None:
        outcome = event.outcome
        self.steps += 1
        # The outcome knows how calls that never ended finished (cancelled, waiting).
        for call in outcome.tool_calls:
            row = self._row(call.id, call.name, event.step)
            if row.state.is_final:
                continue
            state = _STATE_OF_STATUS.get(call.status)
            if call.status == ToolCallStatus.PENDING:
                state = _waiting(scheduled=call.not_before is not None)
            if state is not None and state is not CallState.RUNNING:
                row.state = state
                if state is CallState.CANCELLED and row.started_at is not None:
                    row.ended_at = event.at

    def _paused(self, event: Paused) -> None:
        for call_id in event.reason.awaiting_approval:
            self._row(call_id, "?", event.step).state = CallState.AWAITING_APPROVAL
        for call_id in event.reason.scheduled:
            self._row(call_id, "?", event.step).state = CallState.SCHEDULED

    def _completed(self, event: RunCompleted) -> None:
        run = event.run
        self.result, self.stop, self.ended_at = run, run.stop, event.at
        # The run's own totals are authoritative (they count every step's usage).
        self.usage = run.usage
        self.status = {
            StopReason.PAUSED: RunStatus.PAUSED,
            StopReason.CANCELLED: RunStatus.CANCELLED,
        }.get(run.stop, RunStatus.COMPLETED)
        for call in run.pending:
            row = self._row(call.id, call.name, event.step)
            if not row.state.is_final:
                row.state = _waiting(scheduled=call.not_before is not None)
        self._stop_open_calls()

    def _failed(self, message: str, at: float) -> None:
        self.status, self.error, self.ended_at = RunStatus.FAILED, message, at
        self._stop_open_calls()

    def _stop_open_calls(self) -> None:
        # A call still queued or running when the run is over was stopped with it.
        for row in self.calls.values():
            if row.state in (CallState.QUEUED, CallState.RUNNING):
                row.state = CallState.CANCELLED
                if row.started_at is not None and row.ended_at is None:
                    row.ended_at = self.ended_at

    # -- rendering -----------------------------------------------------------------
    def elapsed(self, now: float | None = None) -> float | None:
        """Seconds since the run started (until it ended, once it has)."""
        if self.started_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else time.time() if now is None else now
        return max(0.0, end - self.started_at)

    def summary(self, now: float | None = None) -> str:
        """One line: status, steps, time, usage."""
        if self.status is RunStatus.RUNNING:
            head = f"step {self.step} · running"
        elif self.status is RunStatus.COMPLETED and self.stop is not None:
            head = f"completed ({self.stop.value})"
        elif self.status is RunStatus.FAILED:
            head = f"failed: {self.error}"
        elif self.status is RunStatus.PAUSED:
            waiting = sum(
                1
                for r in self.calls.values()
                if r.state in (CallState.AWAITING_APPROVAL, CallState.SCHEDULED)
            )
            head = f"paused: {waiting} call{'s' if waiting != 1 else ''} waiting"
        else:
            head = self.status.value
        parts = [head]
        if self.steps:
            parts.append(f"{self.steps} step{'s' if self.steps != 1 else ''}")
        elapsed = self.elapsed(now)
        if elapsed is not None:
            parts.append(f"{elapsed:.2f} s")
        parts.append(
            f"tokens {self.usage.prompt_tokens} prompt + {self.usage.completion_tokens} completion"
        )
        return " · ".join(parts)

    def render_text(self, now: float | None = None) -> str:
        """The whole view as plain text."""
        lines = [f"rxagent run · {self.summary(now)}"]
        if self.text:
            lines.append(self.text)
        if self.calls:
            table = [("step", "tool", "arguments", "state", "elapsed", "result")]
            for row in self.calls.values():
                elapsed = row.elapsed(now)
                table.append(
                    (
                        str(row.step),
                        row.name,
                        row.arguments_preview,
                        row.state.value,
                        "" if elapsed is None else f"{elapsed:.2f} s",
                        row.result_preview,
                    )
                )
            widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
            for r in table:
                cells = (c.ljust(w) for c, w in zip(r, widths, strict=True))
                lines.append(("  " + "  ".join(cells)).rstrip())
        return "\n".join(lines)

    def render_html(self, now: float | None = None) -> str:
        """The whole view as an HTML fragment (a summary line, the text, a table of calls)."""
        out = [
            '<div class="rxagent-run" style="font-family: var(--jp-code-font-family, monospace);'
            ' font-size: 12px; line-height: 1.4">',
            f'<div style="color: {_STATUS_COLOUR.get(self.status, "#555")}; font-weight: 600">'
            f"rxagent run · {html.escape(self.summary(now))}</div>",
        ]
        if self.text:
            out.append(
                '<pre style="white-space: pre-wrap; margin: 4px 0; font-size: 12px">'
                f"{html.escape(self.text)}</pre>"
            )
        if self.calls:
            cell = 'style="text-align: left; padding: 1px 8px 1px 0"'
            out.append('<table style="border-collapse: collapse; margin-top: 4px">')
            out.append(
                "<tr>"
                + "".join(
                    f"<th {cell}>{h}</th>"
                    for h in ("step", "tool", "arguments", "state", "elapsed", "result")
                )
                + "</tr>"
            )
            for row in self.calls.values():
                elapsed = row.elapsed(now)
                colour = _STATE_COLOUR[row.state]
                out.append(
                    f'<tr data-call-id="{html.escape(row.call_id)}">'
                    f"<td {cell}>{row.step}</td>"
                    f"<td {cell}>{html.escape(row.name)}</td>"
                    f"<td {cell}><code>{html.escape(row.arguments_preview)}</code></td>"
                    f'<td {cell}><span style="color: {colour}">{row.state.value}</span></td>'
                    f"<td {cell}>{'' if elapsed is None else f'{elapsed:.2f} s'}</td>"
                    f"<td {cell}>{html.escape(row.result_preview)}</td>"
                    "</tr>"
                )
            out.append("</table>")
        out.append("</div>")
        return "".join(out)

    def bundle(self, now: float | None = None) -> dict[str, str]:
        """The view as a MIME bundle (``text/plain`` and ``text/html``), as IPython shows it."""
        return {"text/plain": self.render_text(now), "text/html": self.render_html(now)}

    def __repr__(self) -> str:
        return f"RunView({self.summary()})"


_STATE_OF_STATUS: dict[ToolCallStatus, CallState] = {
    ToolCallStatus.COMPLETED: CallState.DONE,
    ToolCallStatus.FAILED: CallState.FAILED,
    ToolCallStatus.CANCELLED: CallState.CANCELLED,
    ToolCallStatus.REJECTED: CallState.REJECTED,
    ToolCallStatus.RUNNING: CallState.RUNNING,
}

_STATE_COLOUR: dict[CallState, str] = {
    CallState.QUEUED: "#777",
    CallState.RUNNING: "#1f6fb2",
    CallState.DONE: "#2b8a3e",
    CallState.FAILED: "#c92a2a",
    CallState.CANCELLED: "#777",
    CallState.REJECTED: "#c92a2a",
    CallState.AWAITING_APPROVAL: "#d9480f",
    CallState.SCHEDULED: "#d9480f",
}

_STATUS_COLOUR: dict[RunStatus, str] = {
    RunStatus.RUNNING: "#1f6fb2",
    RunStatus.COMPLETED: "#2b8a3e",
    RunStatus.FAILED: "#c92a2a",
    RunStatus.PAUSED: "#d9480f",
}


def _waiting(*, scheduled: bool) -> CallState:
    return CallState.SCHEDULED if scheduled else CallState.AWAITING_APPROVAL


def _json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:  # a circular structure
        return repr(value)


def _shorten(text: str, limit: int = _PREVIEW) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- where updates go ------------------------------------------------------------------
class Publisher(Protocol):
    """Shows a :class:`RunView`: called with each coalesced update, ``final`` for the last."""

    def publish(self, view: RunView, *, final: bool) -> None: ...


class NotebookPublisher:
    """One IPython output, updated in place: ``display`` first, then ``update_display``.

    ``display`` and ``update_display`` default to IPython's (imported on first
    use); pass your own to capture what would be published. Each call gets the
    view's MIME bundle with ``raw=True`` and this publisher's ``display_id``.
    """

    def __init__(
        self,
        display: Callable[..., Any] | None = None,
        update_display: Callable[..., Any] | None = None,
        *,
        display_id: str | None = None,
    ) -> None:
        if display is None or update_display is None:
            from IPython.display import display as ipython_display
            from IPython.display import update_display as ipython_update

            display = display or ipython_display
            update_display = update_display or ipython_update
        self._display: Callable[..., Any] = display
        self._update: Callable[..., Any] = update_display
        self.display_id = display_id or f"rxagent-{uuid.uuid4().hex}"
        self._shown = False

    def publish(self, view: RunView, *, final: bool) -> None:
        bundle = view.bundle()
        if not self._shown:
            self._shown = True
            self._display(bundle, raw=True, display_id=self.display_id)
        else:
            self._update(bundle, raw=True, display_id=self.display_id)


class TextPublisher:
    """Plain text for a terminal or a log: what is new since the last update, appended.

    The text as it arrives, a line when a tool call starts or ends, and a
    summary line at the end; nothing is redrawn, so it works on any stream.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._written: dict[int, str] = {}
        self._states: dict[str, CallState] = {}
        self._mid_line = False

    @property
    def stream(self) -> TextIO:
        # Looked up at each write, so pytest's capsys and redirect_stdout see it.
        return self._stream if self._stream is not None else sys.stdout

    def publish(self, view: RunView, *, final: bool) -> None:
        out: list[str] = []
        texts = view.texts
        for step in [s for s in self._written if s not in texts]:
            # The provider retried the step: what was written of it is void.
            self._line(out, f"(step {step} retried)")
            del self._written[step]
        # Step by step, so a step's tool lines come before the next step's text.
        steps = sorted({*texts, *(row.step for row in view.calls.values())})
        for step in steps:
            self._text(out, step, texts.get(step, ""))
            for row in view.calls.values():
                if row.step == step:
                    self._row(out, row)
        if final:
            self._line(out, f"-- {view.summary()}")
        if out:
            self.stream.write("".join(out))
            self.stream.flush()

    def _text(self, out: list[str], step: int, text: str) -> None:
        written = self._written.get(step, "")
        if not text.startswith(written):
            self._line(out, f"(step {step} retried)")
            written = ""
        if len(text) > len(written):
            out.append(text[len(written) :])
            self._mid_line = not text.endswith("\n")
        if text:
            self._written[step] = text

    def _row(self, out: list[str], row: CallRow) -> None:
        # One line per change of state; "queued" is too brief to be worth a line.
        if self._states.get(row.call_id) is row.state or row.state is CallState.QUEUED:
            return
        self._states[row.call_id] = row.state
        elapsed = row.elapsed()
        timing = f" ({elapsed:.2f} s)" if elapsed is not None and row.state.is_final else ""
        detail = f": {row.result_preview}" if row.error is not None else ""
        self._line(
            out, f"[tool] {row.name}({row.arguments_preview}) {row.state.value}{timing}{detail}"
        )

    def _line(self, out: list[str], line: str) -> None:
        if self._mid_line:
            out.append("\n")
        out.append(line + "\n")
        self._mid_line = False


def in_notebook() -> bool:
    """Whether this runs in an IPython kernel (Jupyter, VS Code, Colab), which can update outputs.

    IPython is not imported to find out: if nothing imported it, this is no notebook.
    """
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


# -- the display ---------------------------------------------------------------------
class RunDisplay:
    """A live display attached to a run; made by :func:`display`.

    ``view`` is the state shown, ``updates`` how many times it was published.
    ``await`` it to wait for the end of the run (it gives the final
    :class:`RunView` and never raises: a failure is shown, not thrown; use
    ``ra.collect_final(run)`` for the ``AgentRun`` or the error). ``dispose()``
    stops updating (and, as for any subscription, cancels the run if the
    display was its only observer).
    """

    def __init__(
        self,
        source: Observable[AgentEvent],
        publisher: Publisher,
        *,
        interval: float,
        refresh: float | None,
    ) -> None:
        if interval < 0:
            raise ValueError(f"interval must be at least 0, got {interval!r}")
        if refresh is not None and refresh <= 0:
            raise ValueError(f"refresh must be positive or None, got {refresh!r}")
        self.view = RunView()
        self.updates = 0
        self._publisher = publisher
        self._interval = interval
        self._refresh = refresh
        self._lock = threading.Lock()
        self._finished = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[RunView]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = float("-inf")  # time.monotonic() of the last publish
        self._dirty = False
        # Shown at once, where display() was called (the calling cell's output area).
        self._publish(final=False)
        self._subscription: abc.DisposableBase = source.subscribe(
            self._on_next, self._on_error, self._on_completed
        )

    @property
    def done(self) -> bool:
        """The final state was published (or the display was disposed)."""
        return self._finished

    def dispose(self) -> None:
        """Stop updating the display."""
        self._subscription.dispose()
        self._finish(publish=False)

    def __await__(self) -> Generator[Any, None, RunView]:
        return self._wait().__await__()

    async def _wait(self) -> RunView:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RunView] = loop.create_future()
        with self._lock:
            if self._finished:
                return self.view
            self._waiters.append((loop, future))
        return await future

    # -- the observer ---------------------------------------------------------------
    def _on_next(self, event: AgentEvent) -> None:
        if self._finished:
            return
        self.view.apply(event)
        self._dirty = True
        self._request()

    def _on_error(self, error: Exception) -> None:
        if not self._finished:
            self.view.fail(error)
            self._finish(publish=True)

    def _on_completed(self) -> None:
        if not self._finished:
            self.view.end()
            self._finish(publish=True)

    # -- coalescing -----------------------------------------------------------------
    def _request(self) -> None:
        """Publish now, or arrange to publish within ``interval`` seconds."""
        wait = self._last + self._interval - time.monotonic()
        if wait <= 0:
            self._publish(final=False)
            return
        loop = running_loop()
        if loop is None:
            # Events delivered off any event loop (a plain iterable source, say): no timer
            # to coalesce with; the final state is still published at the end.
            return
        self._schedule(loop, wait)

    def _schedule(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        when = loop.time() + delay
        if self._timer is not None:
            if self._timer.when() <= when:
                return  # an earlier flush is due anyway
            self._timer.cancel()
        self._loop = loop
        self._timer = loop.call_at(when, self._flush)

    def _flush(self) -> None:
        self._timer = None
        if self._finished:
            return
        if self._dirty or self._ticking():
            self._publish(final=False)

    def _ticking(self) -> bool:
        return self._refresh is not None and any(
            r.state is CallState.RUNNING for r in self.view.calls.values()
        )

    def _publish(self, *, final: bool) -> None:
        self._dirty = False
        self._last = time.monotonic()
        self.updates += 1
        try:
            self._publisher.publish(self.view, final=final)
        except Exception:
            # A broken display must not break the run it shows (nor its other observers).
            log.exception("publishing a run display failed")
        if not final and self._refresh is not None and self._ticking():
            # Running calls' elapsed times move even when no event arrives.
            loop = running_loop()
            if loop is not None:
                self._schedule(loop, self._refresh)

    def _finish(self, *, publish: bool) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
            waiters, self._waiters = self._waiters, []
        timer, self._timer = self._timer, None
        if timer is not None:
            if self._loop is not None and running_loop() is not self._loop:
                self._loop.call_soon_threadsafe(timer.cancel)
            else:
                timer.cancel()
        if publish:
            self._publish(final=True)
        for loop, future in waiters:
            if not loop.is_closed():  # its awaiter is gone with it
                loop.call_soon_threadsafe(_settle, future, self.view)

    def __repr__(self) -> str:
        return f"<RunDisplay {self.view.summary()}>"

    def _ipython_display_(self) -> None:
        # The live output is already on screen; echoing the handle as a cell's value
        # would only add a second, stale copy.
        return None


def _settle(future: asyncio.Future[RunView], view: RunView) -> None:
    if not future.done():
        future.set_result(view)


def display(
    run: Observable[AgentEvent],
    *,
    interval: float = 0.1,
    refresh: float | None = 1.0,
    publisher: Publisher | None = None,
) -> RunDisplay:
    """Show ``run`` updating in place while it streams; returns at once.

    In a notebook the display is one output updated through IPython's
    display-update mechanism; elsewhere it is plain text on ``sys.stdout``
    (pass ``publisher=TextPublisher(stream)`` or your own :class:`Publisher`
    to choose). The display is an observer of the run, so it never blocks
    the event loop: a notebook cell may ``await`` it, or go on and let it
    update while other cells run.

    Updates are coalesced: after one is published, the next waits until
    ``interval`` seconds have passed (``0`` publishes every event); the final
    state is always published. While tool calls run, the display is refreshed
    at least every ``refresh`` seconds so their elapsed times move (``None``:
    only when events arrive).
    """
    if publisher is None:
        publisher = NotebookPublisher() if in_notebook() else TextPublisher()
    return RunDisplay(run, publisher, interval=interval, refresh=refresh)
