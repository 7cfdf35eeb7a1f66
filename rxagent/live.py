"""Live display of a run: text as it arrives, one row per tool call, usage so far.

``display(run)`` subscribes to a run (or any stream of run events) and shows it
updating in place while it streams::

    import rxagent as ra

    run = agent.run("Weather in Paris and Oslo?")
    shown = ra.display(run)     # returns at once; the kernel goes on serving
    state = await shown         # optional: wait for the end (the final RunState)

In Jupyter (an IPython kernel) the run is one output, updated through
IPython's display-update mechanism (``display(..., display_id=...)`` then
``update_display``); elsewhere it is written to ``sys.stdout`` as plain text:
the text as it arrives, a line when a tool call changes state, and a summary.
Updates are coalesced (Rx ``sample``: at most one every ``interval`` seconds),
so a 100k-token run publishes a few dozen updates, not 100k; the final state
is always published.

The display is a thin view over :class:`~rxagent.state.RunState`, the fold of
the run's events that every view shares; :func:`render_text`,
:func:`render_html` and :func:`summary` render one, for anyone building a UI
of their own. IPython is imported only when the notebook display is used.
"""

from __future__ import annotations

import asyncio
import html
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Generator
from typing import Any, Protocol, TextIO

import reactivex as rx
from reactivex import Observable, abc
from reactivex import operators as rx_ops
from reactivex.disposable import CompositeDisposable
from reactivex.scheduler.eventloop import AsyncIOThreadSafeScheduler
from reactivex.subject import Subject

from rxagent._text import one_line, preview
from rxagent.aio import current_loop
from rxagent.events import AgentEvent
from rxagent.messages import ToolCallStatus
from rxagent.state import RunState, RunStatus, ToolCallState

__all__ = [
    "NotebookPublisher",
    "Publisher",
    "RunDisplay",
    "RunStatus",
    "TextPublisher",
    "bundle",
    "display",
    "render_html",
    "render_text",
    "summary",
]

log = logging.getLogger("rxagent")

#: Longest argument / result preview in a row, in characters.
_PREVIEW = 60


# -- rendering a RunState ------------------------------------------------------------
def label(call: ToolCallState) -> str:
    """What a call's state column shows: its status, or what a pending call waits for."""
    if call.status is ToolCallStatus.PENDING:
        return "scheduled" if call.awaiting == "schedule" else "waiting for approval"
    return call.status.value


def arguments_preview(call: ToolCallState) -> str:
    text = preview(call.arguments) if call.arguments is not None else call.arguments_text
    return one_line(text, _PREVIEW, ellipsis="…")


def result_preview(call: ToolCallState) -> str:
    if call.error is not None:
        return one_line(call.error, _PREVIEW, ellipsis="…")
    if call.status is ToolCallStatus.COMPLETED:
        return one_line(call.output, _PREVIEW, ellipsis="…")
    if call.progress:
        return f"{call.progress} progress item{'s' if call.progress != 1 else ''}"
    return ""


def summary(state: RunState, now: float | None = None) -> str:
    """One line: status, steps, time, usage."""
    now = time.time() if now is None else now
    if state.status is RunStatus.RUNNING:
        head = f"step {state.step} · running"
    elif state.status is RunStatus.COMPLETED and state.stop is not None:
        head = f"completed ({state.stop.value})"
    elif state.status is RunStatus.FAILED:
        head = f"failed: {state.error}"
    elif state.status is RunStatus.PAUSED:
        waiting = sum(1 for c in state.calls.values() if c.status is ToolCallStatus.PENDING)
        head = f"paused: {waiting} call{'s' if waiting != 1 else ''} waiting"
    else:
        head = state.status.value
    parts = [head]
    if state.steps:
        parts.append(f"{state.steps} step{'s' if state.steps != 1 else ''}")
    elapsed = state.elapsed(now)
    if elapsed is not None:
        parts.append(f"{elapsed:.2f} s")
    usage = state.usage
    parts.append(f"tokens {usage.prompt_tokens} prompt + {usage.completion_tokens} completion")
    return " · ".join(parts)


_COLUMNS = ("step", "tool", "arguments", "state", "elapsed", "result")


def _cells(call: ToolCallState, now: float) -> tuple[str, ...]:
    elapsed = call.elapsed(now)
    return (
        str(call.step),
        call.name,
        arguments_preview(call),
        label(call),
        "" if elapsed is None else f"{elapsed:.2f} s",
        result_preview(call),
    )


def render_text(state: RunState, now: float | None = None) -> str:
    """The whole state as plain text: a summary line, the text, a table of calls.

    A call to a sub-agent shows that agent's run under its row, indented: its text
    and its own calls (and theirs, deeper)."""
    now = time.time() if now is None else now
    lines = [f"rxagent run · {summary(state, now)}"]
    if state.text:
        lines.append(state.text)
    if state.calls:
        calls = list(state.calls.values())
        table = [_COLUMNS, *(_cells(call, now) for call in calls)]
        widths = [max(len(r[i]) for r in table) for i in range(len(_COLUMNS))]
        for i, r in enumerate(table):
            cells = (c.ljust(w) for c, w in zip(r, widths, strict=True))
            lines.append(("  " + "  ".join(cells)).rstrip())
            if i and calls[i - 1].nested is not None:
                lines += _nested_lines(calls[i - 1], now, "      ")
    return "\n".join(lines)


def _nested_lines(call: ToolCallState, now: float, indent: str) -> list[str]:
    """A sub-agent's run under its call's row: its text, then its calls, indented."""
    nested = call.nested
    if nested is None:
        return []
    out = []
    text = one_line(nested.text, 100, ellipsis="…") if nested.text else ""
    out.append(f"{indent}↳ {call.name} · {nested.status.value}" + (f": {text}" if text else ""))
    for inner in nested.calls.values():
        elapsed = inner.elapsed(now)
        timing = "" if elapsed is None else f" {elapsed:.2f} s"
        result = result_preview(inner)
        out.append(
            f"{indent}  {inner.name}({arguments_preview(inner)}) {label(inner)}{timing}"
            + (f" {result}" if result else "")
        )
        out += _nested_lines(inner, now, indent + "    ")
    return out


def render_html(state: RunState, now: float | None = None) -> str:
    """The whole state as an HTML fragment (a summary line, the text, a table of calls)."""
    now = time.time() if now is None else now
    out = [
        '<div class="rxagent-run" style="font-family: var(--jp-code-font-family, monospace);'
        ' font-size: 12px; line-height: 1.4">',
        f'<div style="color: {_STATUS_COLOUR.get(state.status, "#555")}; font-weight: 600">'
        f"rxagent run · {html.escape(summary(state, now))}</div>",
    ]
    if state.text:
        out.append(
            '<pre style="white-space: pre-wrap; margin: 4px 0; font-size: 12px">'
            f"{html.escape(state.text)}</pre>"
        )
    if state.calls:
        cell = 'style="text-align: left; padding: 1px 8px 1px 0"'
        out.append('<table style="border-collapse: collapse; margin-top: 4px">')
        out.append("<tr>" + "".join(f"<th {cell}>{h}</th>" for h in _COLUMNS) + "</tr>")
        for call in state.calls.values():
            step, name, arguments, shown, elapsed, result = _cells(call, now)
            colour = _STATUS_OF_CALL_COLOUR[call.status]
            out.append(
                f'<tr data-call-id="{html.escape(call.call_id)}">'
                f"<td {cell}>{step}</td>"
                f"<td {cell}>{html.escape(name)}</td>"
                f"<td {cell}><code>{html.escape(arguments)}</code></td>"
                f'<td {cell}><span style="color: {colour}">{shown}</span></td>'
                f"<td {cell}>{elapsed}</td>"
                f"<td {cell}>{html.escape(result)}</td>"
                "</tr>"
            )
            if call.nested is not None:
                # The sub-agent's run, nested under its call's row.
                out.append(
                    f'<tr data-nested-for="{html.escape(call.call_id)}"><td></td>'
                    '<td colspan="5" style="border-left: 2px solid #ccc; padding-left: 8px">'
                    f"{render_html(call.nested, now)}</td></tr>"
                )
        out.append("</table>")
    out.append("</div>")
    return "".join(out)


def bundle(state: RunState, now: float | None = None) -> dict[str, str]:
    """The state as a MIME bundle (``text/plain`` and ``text/html``), as IPython shows it."""
    now = time.time() if now is None else now
    return {"text/plain": render_text(state, now), "text/html": render_html(state, now)}


_STATUS_OF_CALL_COLOUR: dict[ToolCallStatus, str] = {
    ToolCallStatus.REQUESTED: "#777",
    ToolCallStatus.PENDING: "#d9480f",
    ToolCallStatus.APPROVED: "#777",
    ToolCallStatus.RUNNING: "#1f6fb2",
    ToolCallStatus.COMPLETED: "#2b8a3e",
    ToolCallStatus.FAILED: "#c92a2a",
    ToolCallStatus.CANCELLED: "#777",
    ToolCallStatus.REJECTED: "#c92a2a",
}

_STATUS_COLOUR: dict[RunStatus, str] = {
    RunStatus.RUNNING: "#1f6fb2",
    RunStatus.COMPLETED: "#2b8a3e",
    RunStatus.FAILED: "#c92a2a",
    RunStatus.PAUSED: "#d9480f",
}


# -- where updates go ------------------------------------------------------------------
class Publisher(Protocol):
    """Shows a :class:`~rxagent.state.RunState`: called with each coalesced update,
    ``final`` for the last."""

    def publish(self, state: RunState, *, final: bool) -> None: ...


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

    def publish(self, state: RunState, *, final: bool) -> None:
        shown = bundle(state)
        if not self._shown:
            self._shown = True
            self._display(shown, raw=True, display_id=self.display_id)
        else:
            self._update(shown, raw=True, display_id=self.display_id)


class TextPublisher:
    """Plain text for a terminal or a log: what is new since the last update, appended.

    The text as it arrives, a line when a tool call starts or ends, and a
    summary line at the end; nothing is redrawn, so it works on any stream.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._written: dict[int, str] = {}
        self._labels: dict[str, str] = {}
        self._mid_line = False

    @property
    def stream(self) -> TextIO:
        # Looked up at each write, so pytest's capsys and redirect_stdout see it.
        return self._stream if self._stream is not None else sys.stdout

    def publish(self, state: RunState, *, final: bool) -> None:
        out: list[str] = []
        texts = state.texts
        for step in [s for s in self._written if s not in texts]:
            # The provider retried the step: what was written of it is void.
            self._line(out, f"(step {step} retried)")
            del self._written[step]
        # Step by step, so a step's tool lines come before the next step's text.
        steps = sorted({*texts, *(call.step for call in state.calls.values())})
        now = time.time()
        for step in steps:
            self._text(out, step, texts.get(step, ""))
            for call in state.calls.values():
                if call.step == step:
                    self._row(out, call, now)
        if final:
            self._line(out, f"-- {summary(state)}")
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

    def _row(self, out: list[str], call: ToolCallState, now: float) -> None:
        # One line per change of state; "requested" is too brief to be worth a line.
        shown = label(call)
        if self._labels.get(call.call_id) == shown or call.status is ToolCallStatus.REQUESTED:
            return
        self._labels[call.call_id] = shown
        elapsed = call.elapsed(now)
        timing = f" ({elapsed:.2f} s)" if elapsed is not None and call.status.is_final else ""
        detail = f": {result_preview(call)}" if call.error is not None else ""
        self._line(out, f"[tool] {call.name}({arguments_preview(call)}) {shown}{timing}{detail}")

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

    ``state`` is the :class:`~rxagent.state.RunState` shown (a fold of the
    events), ``updates`` how many times it was published. ``await`` it to wait
    for the end of the run (it gives the final state and never raises: a failure
    is shown, not thrown; use ``ra.collect_final(run)`` for the ``AgentRun`` or
    the error). ``dispose()`` stops updating (and, as for any subscription,
    cancels the run if the display was its only observer).

    Coalescing is Rx: each event marks the state changed, and
    ``sample(interval)`` publishes the latest state at most once per interval;
    while calls run, ``interval(refresh)`` ticks republish it so their elapsed
    times move. Both run on ``scheduler`` (default: the event loop's).
    """

    def __init__(
        self,
        source: Observable[AgentEvent],
        publisher: Publisher,
        *,
        interval: float,
        refresh: float | None,
        scheduler: abc.SchedulerBase | None = None,
    ) -> None:
        if interval < 0:
            raise ValueError(f"interval must be at least 0, got {interval!r}")
        if refresh is not None and refresh <= 0:
            raise ValueError(f"refresh must be positive or None, got {refresh!r}")
        self.state = RunState()
        self.updates = 0
        self._publisher = publisher
        self._lock = threading.Lock()
        self._finished = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[RunState]]] = []
        clock = scheduler or AsyncIOThreadSafeScheduler(current_loop())
        changed: Subject[None] = Subject()
        self._changed = changed
        publishing: list[Observable[Any]] = [
            changed.pipe(rx_ops.sample(interval, scheduler=clock)) if interval > 0 else changed
        ]
        if refresh is not None:
            # Running calls' elapsed times move even when no event arrives.
            publishing.append(
                rx.interval(refresh, scheduler=clock).pipe(rx_ops.filter(lambda _: self._ticking()))
            )
        self._subscription = CompositeDisposable(
            rx.merge(*publishing).subscribe(lambda _: self._publish(final=False))
        )
        # Shown at once, where display() was called (the calling cell's output area).
        self._publish(final=False)
        self._subscription.add(source.subscribe(self._on_next, self._on_error, self._on_completed))

    @property
    def view(self) -> RunState:
        """The state shown (the name of the 0.1 API, where it was a ``RunView``)."""
        return self.state

    @property
    def done(self) -> bool:
        """The final state was published (or the display was disposed)."""
        return self._finished

    def dispose(self) -> None:
        """Stop updating the display."""
        self._subscription.dispose()
        self._finish(publish=False)

    def __await__(self) -> Generator[Any, None, RunState]:
        return self._wait().__await__()

    async def _wait(self) -> RunState:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RunState] = loop.create_future()
        with self._lock:
            if self._finished:
                return self.state
            self._waiters.append((loop, future))
        return await future

    # -- the observer ---------------------------------------------------------------
    def _on_next(self, event: AgentEvent) -> None:
        if self._finished:
            return
        self.state = self.state.apply(event)
        self._changed.on_next(None)

    def _on_error(self, error: Exception) -> None:
        if not self._finished:
            self.state = self.state.fail(error, time.time())
            self._finish(publish=True)

    def _on_completed(self) -> None:
        if not self._finished:
            self.state = self.state.end(time.time())
            self._finish(publish=True)

    def _ticking(self) -> bool:
        return not self._finished and any(
            c.status is ToolCallStatus.RUNNING for c in self.state.calls.values()
        )

    def _publish(self, *, final: bool) -> None:
        if self._finished and not final:
            return
        self.updates += 1
        try:
            self._publisher.publish(self.state, final=final)
        except Exception:
            # A broken display must not break the run it shows (nor its other observers).
            log.exception("publishing a run display failed")

    def _finish(self, *, publish: bool) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
            waiters, self._waiters = self._waiters, []
        self._subscription.dispose()
        if publish:
            self._publish(final=True)
        for loop, future in waiters:
            if not loop.is_closed():  # its awaiter is gone with it
                loop.call_soon_threadsafe(_settle, future, self.state)

    def __repr__(self) -> str:
        return f"<RunDisplay {summary(self.state)}>"

    def _ipython_display_(self) -> None:
        # The live output is already on screen; echoing the handle as a cell's value
        # would only add a second, stale copy.
        return None


def _settle(future: asyncio.Future[RunState], state: RunState) -> None:
    if not future.done():
        future.set_result(state)


def display(
    run: Observable[AgentEvent],
    *,
    interval: float = 0.1,
    refresh: float | None = 1.0,
    publisher: Publisher | None = None,
    scheduler: abc.SchedulerBase | None = None,
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
    only when events arrive). The timers run on ``scheduler`` (default: the
    event loop's; a ``reactivex.testing.TestScheduler`` drives them in virtual
    time). ``await`` the display for the final :class:`~rxagent.state.RunState`.
    """
    if publisher is None:
        publisher = NotebookPublisher() if in_notebook() else TextPublisher()
    return RunDisplay(run, publisher, interval=interval, refresh=refresh, scheduler=scheduler)
