"""A run's timeline: when each step streamed and each tool call ran, as a matplotlib figure.

``timeline(events)`` draws a finished run (``run.events``, or events read back
from JSON lines) along time: one band per step, the provider's streaming span
per step, one lane per tool call from its start to its end, failures marked.
How much a step's fan-out overlapped shows at a glance, and the title says it
in numbers (peak concurrency, busy tool time over wall time)::

    fig = ra.viz.timeline(run.events)
    fig.savefig("run.png")

matplotlib is an optional extra (``pip install "rxagent[viz]"``), imported
only when a figure is drawn; :func:`timeline_data` computes the same spans
without it.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rxagent._text import clip
from rxagent.events import AgentEvent
from rxagent.messages import ToolCallStatus
from rxagent.state import RunState, RunStatus, StepPhase, fold

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["CallSpan", "HasEvents", "StepSpan", "Timeline", "timeline", "timeline_data"]


@runtime_checkable
class HasEvents(Protocol):
    """Anything with the events of a run, as ``ra.Run`` has (``run.events``)."""

    @property
    def events(self) -> Sequence[AgentEvent]: ...


@dataclass(frozen=True)
class StepSpan:
    """One step, in seconds from the start of the run.

    ``streamed`` is when the provider's stream ended (``None`` when the step
    failed before it said so); ``end`` is when the step ended.
    """

    step: int
    start: float
    end: float
    streamed: float | None = None
    cancelled: bool = False


@dataclass(frozen=True)
class CallSpan:
    """One tool call, in seconds from the start of the run.

    ``start`` is ``None`` for a call that never ran (an unknown tool, bad
    arguments, a refusal, a call waiting for a human); ``end`` is when it
    ended, or, for a call stopped before it ended, when it was stopped.
    """

    call_id: str
    name: str
    step: int
    #: How the call ended: ``completed``, ``failed``, ``rejected``, ``cancelled``
    #: (stopped before it ended), or ``pending`` (waiting for a decision).
    outcome: ToolCallStatus
    start: float | None
    end: float
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def duration(self) -> float:
        return 0.0 if self.start is None else max(0.0, self.end - self.start)

    @property
    def label(self) -> str:
        args = ", ".join(f"{k}={_short(v)}" for k, v in self.arguments.items())
        return clip(f"{self.name}({args})", 48, ellipsis="…")


@dataclass(frozen=True)
class Timeline:
    """The spans of a run: steps and tool calls, times in seconds from ``t0``."""

    #: When the run started (``time.time()``).
    t0: float
    #: Seconds from the start to the end of the run.
    duration: float
    steps: tuple[StepSpan, ...]
    calls: tuple[CallSpan, ...]
    #: How the run ended (``failed`` when its events end in ``RunFailed`` or without
    #: ``RunCompleted``).
    status: RunStatus = RunStatus.COMPLETED

    @property
    def peak_concurrency(self) -> int:
        """The most tool calls running at the same moment."""
        edges = sorted(
            [(c.start, 1) for c in self.calls if c.start is not None and c.end > c.start]
            + [(c.end, -1) for c in self.calls if c.start is not None and c.end > c.start]
        )
        peak = current = 0
        for _, change in edges:  # at a tie the end sorts first: touching spans don't overlap
            current += change
            peak = max(peak, current)
        return peak

    @property
    def tool_time(self) -> float:
        """Seconds of tool time, summed over the calls."""
        return sum(c.duration for c in self.calls)

    @property
    def busy_time(self) -> float:
        """Seconds during which at least one tool call ran."""
        spans = sorted((c.start, c.end) for c in self.calls if c.start is not None)
        total, reach = 0.0, float("-inf")
        for start, end in spans:
            if end > reach:
                total += end - max(start, reach)
                reach = end
        return total

    @property
    def overlap(self) -> float | None:
        """Tool time over busy time: 1.0 for calls one after another, k for k at once."""
        busy = self.busy_time
        return self.tool_time / busy if busy > 0 else None

    def summary(self) -> str:
        parts = [
            f"{len(self.steps)} step{'s' if len(self.steps) != 1 else ''}",
            f"{len(self.calls)} tool call{'s' if len(self.calls) != 1 else ''}",
        ]
        if self.calls:
            parts.append(f"peak {self.peak_concurrency} at once")
        overlap = self.overlap
        if overlap is not None:
            parts.append(
                f"tool time {self.tool_time:.2f} s in {self.busy_time:.2f} s ({overlap:.1f}x)"
            )
        failed = sum(1 for c in self.calls if c.outcome is ToolCallStatus.FAILED)
        if failed:
            parts.append(f"{failed} failed")
        parts.append(
            f"run {self.duration:.2f} s" + (" (failed)" if self.status is RunStatus.FAILED else "")
        )
        return " · ".join(parts)


def timeline_data(events: Iterable[AgentEvent] | HasEvents | RunState) -> Timeline:
    """The spans of a finished run (its events: ``run.events``, or read from JSON lines).

    A view over the run's :class:`~rxagent.state.RunState` (pass one, or the
    events to fold). Times come from the events' ``at`` stamps and each
    ``StepCompleted`` outcome (``started_at``, ``streamed_at``, ``ended_at``), so a
    call that ended early but was emitted late (ends are re-joined in call order)
    is placed when it really ended.
    """
    if isinstance(events, RunState):
        state = events
    else:
        state = fold(events.events if isinstance(events, HasEvents) else events)
    if not state.records and state.step_started_at is None:
        raise ValueError("no timed events: timeline() needs the events of a run")
    starts = [r.started_at for r in state.records if r.started_at is not None]
    if state.step_started_at is not None:
        starts.append(state.step_started_at)
    t0 = min(starts)
    stamps = [t0, *(r.ended_at for r in state.records)]
    for call in state.calls.values():
        stamps += [t for t in (call.started_at, call.ended_at) if t is not None]
    if state.ended_at is not None:
        stamps.append(state.ended_at)
    end = max(stamps)
    status = state.status if state.status.is_final else RunStatus.FAILED
    if status is RunStatus.ENDED:
        status = RunStatus.FAILED  # the events end without RunCompleted

    steps = [
        StepSpan(
            step=r.step,
            start=(r.started_at or t0) - t0,
            end=r.ended_at - t0,
            streamed=None if r.streamed_at is None else r.streamed_at - t0,
            cancelled=r.phase is StepPhase.CANCELLED,
        )
        for r in state.records
    ]
    recorded = {r.step for r in state.records}
    if state.step not in recorded and state.step_started_at is not None:
        # The run failed in this step: it lasted until the last thing we know of.
        steps.append(StepSpan(step=state.step, start=state.step_started_at - t0, end=end - t0))
    step_end = {span.step: span.end for span in steps}

    calls: list[CallSpan] = []
    for call in state.calls.values():
        outcome = call.status
        if not outcome.is_final and outcome is not ToolCallStatus.PENDING:
            outcome = ToolCallStatus.CANCELLED  # it never ended: stopped with its step or run
        if call.ended_at is not None and outcome is not ToolCallStatus.PENDING:
            stop_at = call.ended_at - t0
        else:
            stop_at = step_end.get(call.step, end - t0)
        calls.append(
            CallSpan(
                call_id=call.call_id,
                name=call.name,
                step=call.step,
                outcome=outcome,
                start=None if call.started_at is None else call.started_at - t0,
                end=stop_at,
                arguments=dict(call.arguments or {}) if call.started_at is not None else {},
                error=call.error,
            )
        )
    return Timeline(t0=t0, duration=end - t0, steps=tuple(steps), calls=tuple(calls), status=status)


# Colours: a light band per step, the model's streaming in blue, tools by outcome.
_STEP_BANDS = ("#edf2f7", "#f8f9fa")
_STREAM = "#4c8fd6"
_FAILED_EDGE = "#8f1d1d"
_EDGE = {ToolCallStatus.FAILED: _FAILED_EDGE, ToolCallStatus.CANCELLED: "#495057"}
_OUTCOME_COLOUR: dict[ToolCallStatus, str] = {
    ToolCallStatus.COMPLETED: "#40a060",
    ToolCallStatus.FAILED: "#d64545",
    ToolCallStatus.REJECTED: "#e8890c",
    ToolCallStatus.CANCELLED: "#adb5bd",
    ToolCallStatus.PENDING: "#e8890c",
}
_MARKED = {ToolCallStatus.FAILED: "x", ToolCallStatus.REJECTED: "x", ToolCallStatus.PENDING: "P"}


def timeline(
    events: Iterable[AgentEvent] | HasEvents,
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Draw a finished run's timeline; returns the matplotlib ``Figure``.

    Time runs left to right in seconds from the start of the run. Each step
    is a shaded band with a lane for the model (its streaming span, from the
    request to the end of the stream; faint when the step failed before its
    stream said it ended) followed by one lane per tool call (a bar from its
    start to its end, labelled with its duration). Failed calls are red,
    hatched and marked with an ``x`` at their end; calls stopped before they
    ended are grey and dashed; calls that never ran are a marker at the time
    they were settled. The title sums it up: steps, calls, peak concurrency,
    tool time over busy time (how much the fan-out overlapped), run time.

    Pass ``ax`` to draw into axes of your own (several runs side by side);
    otherwise a new figure is made (it shows itself in Jupyter as an image,
    and saves with ``fig.savefig(path)``). Artists carry a ``gid``:
    ``"step:N"`` (the band), ``"stream:N"``, ``"call:<call id>"`` and
    ``"failed:<call id>"`` (the marker), for tests and restyling.
    """
    data = timeline_data(events)
    # Lanes top to bottom: each step's model lane, then that step's calls in call order.
    lanes: list[StepSpan | CallSpan] = []
    for step_span in data.steps:
        lanes.append(step_span)
        lanes += [c for c in data.calls if c.step == step_span.step]
    known = {s.step for s in data.steps}
    lanes += [c for c in data.calls if c.step not in known]  # calls of a partial stream

    from matplotlib.patches import Patch

    own_figure = ax is None
    if ax is None:
        figure: Figure = _figure_class()(figsize=(9.0, 1.4 + 0.32 * max(len(lanes), 2)))
        ax = figure.add_subplot()
    else:
        root = ax.get_figure(root=True)
        if root is None:
            raise ValueError("ax must belong to a figure")
        figure = root

    for i, step_span in enumerate(data.steps):
        band = ax.axvspan(step_span.start, step_span.end, color=_STEP_BANDS[i % 2], zorder=0)
        band.set_gid(f"step:{step_span.step}")
        ax.axvline(step_span.start, color="#adb5bd", linewidth=0.8, linestyle=":", zorder=0)
    height = 0.6
    visible = data.duration * 0.004  # the narrowest bar drawn: an instant call stays visible
    for y, lane in enumerate(lanes):
        if isinstance(lane, StepSpan):
            # A step that failed never said when its stream ended: it ended by the
            # step's end at the latest, which a faint bar shows.
            (bar,) = ax.barh(
                y,
                max((lane.end if lane.streamed is None else lane.streamed) - lane.start, visible),
                left=lane.start,
                height=height,
                color=_STREAM,
                alpha=0.3 if lane.streamed is None else 1.0,
            )
            bar.set_gid(f"stream:{lane.step}")
            continue
        colour = _OUTCOME_COLOUR[lane.outcome]
        if lane.start is not None:
            (bar,) = ax.barh(
                y,
                max(lane.duration, visible),
                left=lane.start,
                height=height,
                color=colour,
                linestyle="--" if lane.outcome is ToolCallStatus.CANCELLED else "-",
                edgecolor=_EDGE.get(lane.outcome, colour),
                hatch="//" if lane.outcome is ToolCallStatus.FAILED else None,
            )
            bar.set_gid(f"call:{lane.call_id}")
            marked = lane.outcome in (ToolCallStatus.FAILED, ToolCallStatus.REJECTED)
            ax.text(
                lane.end + data.duration * (0.03 if marked else 0.008),
                y,
                f"{lane.duration:.2f} s",
                va="center",
                fontsize=7,
                color="#495057",
            )
        if lane.outcome in _MARKED or lane.start is None:
            marker = _MARKED.get(lane.outcome, "o")
            (point,) = ax.plot(
                [lane.end], [y], marker=marker, markersize=9, mew=2.5, color=colour, linestyle=""
            )
            point.set_gid(f"{lane.outcome.value}:{lane.call_id}")

    labels = [
        f"step {lane.step} · model" if isinstance(lane, StepSpan) else f"  {lane.label}"
        for lane in lanes
    ]
    ax.set_yticks(range(len(lanes)), labels, fontsize=8)
    ax.set_ylim(len(lanes) - 0.4, -0.6)  # the first lane on top
    ax.set_xlim(0, data.duration * 1.08 or 1.0)
    ax.set_xlabel("seconds since the run started")
    ax.grid(axis="x", color="#dee2e6", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_title(title if title is not None else data.summary(), fontsize=9)
    ax.legend(
        handles=[
            Patch(color=_STREAM, label="model streaming"),
            Patch(color=_OUTCOME_COLOUR[ToolCallStatus.COMPLETED], label="tool call"),
            Patch(
                facecolor=_OUTCOME_COLOUR[ToolCallStatus.FAILED],
                edgecolor=_FAILED_EDGE,
                hatch="//",
                label="failed (x)",
            ),
            Patch(
                facecolor=_OUTCOME_COLOUR[ToolCallStatus.CANCELLED],
                edgecolor="#495057",
                linestyle="--",
                label="cancelled",
            ),
        ],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=7,
        frameon=False,
    )
    if own_figure:
        figure.tight_layout()
    return figure


@functools.cache
def _figure_class() -> type[Figure]:
    """A ``Figure`` that shows itself as a PNG in Jupyter, whatever the matplotlib backend."""
    from matplotlib.figure import Figure

    class TimelineFigure(Figure):
        # IPython shows a bare Figure as text unless the inline backend registered a
        # formatter for it (``%matplotlib inline``); this one renders itself.
        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=100)
            return buffer.getvalue()

    return TimelineFigure


def _short(value: Any) -> str:
    return clip(value if isinstance(value, str) else repr(value), 16, ellipsis="…")
