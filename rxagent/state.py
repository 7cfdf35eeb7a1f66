"""RunState: a run's state as a fold of its events.

Everything a run does is an event, so its state at any moment is a fold of the
events so far::

    state = RunState()
    for event in events:
        state = state.apply(event)

or, in Rx, ``run.pipe(ops.scan(RunState.apply, RunState()))``. The fold is pure:
``apply`` returns a new state and never changes the one it is called on, so a
state can be kept, compared and handed to another thread. The same fold runs
wherever the events go: the agent loop uses it to decide when to stop and to
build ``RunCompleted.run``; the live display, the terminal view and the
timeline draw it; a browser or another process rebuilds a run from its events
(as JSON) with it. ``RunState.apply`` over a run's events gives the same
``AgentRun`` as its ``RunCompleted`` event, and a failed run's ``partial``.

One vocabulary: a run's status is a :class:`RunStatus`, a step's phase a
:class:`StepPhase`, a tool call's status a :class:`~rxagent.messages.ToolCallStatus`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, Literal

from rxagent.errors import ApprovalError
from rxagent.events import (
    AgentEvent,
    AgentRun,
    Handoff,
    Paused,
    ReasoningDelta,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunStarted,
    StepCompleted,
    StepRetry,
    StepStarted,
    Structured,
    TextDelta,
    ToolArgsDelta,
    ToolCallEnded,
    ToolCallPending,
    ToolCallStarted,
    ToolProgress,
    UsageDelta,
)
from rxagent.messages import (
    AssistantMessage,
    Conversation,
    ConversationInput,
    Message,
    ToolCall,
    ToolCallStatus,
    Usage,
)
from rxagent.policies import LoopState, StepOutcome, StopReason

__all__ = ["RunState", "RunStatus", "StepPhase", "StepRecord", "ToolCallState", "fold"]


class RunStatus(StrEnum):
    """Where a run is.

    ``queued`` until its first event, then ``running``; it ends ``completed``,
    ``paused`` (calls wait for a decision; resume it with its conversation),
    ``cancelled`` or ``failed``, or ``ended`` when its stream completed without
    a ``RunCompleted`` (an Rx ``take_until`` cut it short).
    """

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    ENDED = "ended"

    @property
    def is_final(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


class StepPhase(StrEnum):
    """Where a step is. The transitions::

        resuming ──> streaming ──> finishing ──> completed
            │            │             │
            └────────────┴─────────────┴──────> cancelled | failed

    A step on a conversation whose last turn waits on approvals starts
    ``resuming`` (its approved calls run, its rejections are answered); others
    start ``streaming``: the provider turn streams and calls whose arguments are
    complete run alongside. ``finishing``: the stream has ended and the turn's
    calls are still running. A step ends ``completed`` (possibly paused: see
    ``StepOutcome.pause``), ``cancelled`` or ``failed``. A fold of events sees
    ``resuming``, ``streaming`` and the ends; ``finishing`` is known only to the
    step itself (no event marks the end of the provider's stream).
    """

    RESUMING = "resuming"
    STREAMING = "streaming"
    FINISHING = "finishing"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (StepPhase.COMPLETED, StepPhase.CANCELLED, StepPhase.FAILED)


@dataclasses.dataclass(frozen=True)
class ToolCallState:
    """One tool call as the events tell it: status, arguments, timing, result.

    Times are wall-clock (``time.time()``), as on the events. ``progress`` counts
    the ``ToolProgress`` items of a streaming tool; ``last_progress`` is the latest.
    """

    call_id: str
    name: str
    step: int
    status: ToolCallStatus = ToolCallStatus.REQUESTED
    #: The JSON arguments text as the model streams it.
    arguments_text: str = ""
    #: The arguments, once complete and valid (``ToolCallStarted``, ``ToolCallPending``).
    arguments: Mapping[str, Any] | None = None
    #: For a pending call: what it waits for.
    awaiting: Literal["approval", "schedule"] | None = None
    #: Why it waits, or why it was rejected.
    reason: str | None = None
    not_before: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    output: Any = None
    error: str | None = None
    progress: int = 0
    last_progress: Any = None
    #: For a call to a sub-agent (``agent.as_tool()``): its run, folded from the nested
    #: events as they arrive (its own calls carry their sub-agents' runs, and so on).
    nested: RunState | None = None

    def evolve(self, **changes: Any) -> ToolCallState:
        """A copy with ``changes`` (as ``dataclasses.replace``, several times faster)."""
        new = object.__new__(ToolCallState)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    def elapsed(self, now: float) -> float | None:
        """Seconds the call ran (up to ``now`` while it runs); ``None`` if it never started."""
        if self.started_at is None:
            return None
        if self.ended_at is not None:
            return max(0.0, self.ended_at - self.started_at)
        if self.status is ToolCallStatus.RUNNING:
            return max(0.0, now - self.started_at)
        return None


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """A step that ended, as its events tell it (times are ``time.time()`` values)."""

    step: int
    #: How it ended: ``completed``, ``cancelled`` or ``failed``.
    phase: StepPhase
    started_at: float | None
    #: When the provider's stream ended (``None`` when it never did).
    streamed_at: float | None
    ended_at: float
    #: The assistant text the step streamed.
    text: str
    finish_reason: str | None = None


class _Pieces:
    """An append-only list of text pieces shared by successive states.

    A state holds the list and how many pieces are its own; appending to the
    newest state appends in place (O(1)), appending to an older one copies
    first, so no state ever sees another's pieces.
    """

    __slots__ = ("items",)

    def __init__(self, items: list[str]) -> None:
        self.items = items


_NO_PIECES = _Pieces([])


class RunState:
    """A run's state after some of its events; :meth:`apply` gives the next one.

    ``RunState()`` is the state before anything happened; ``RunState.of(conversation)``
    the state of a run on ``conversation`` that has not started (``RunStarted``
    carries the input too, so a fold from ``RunState()`` over a whole run's events
    ends in the same state).
    """

    #: Where the run is.
    status: RunStatus
    #: The agent running (its name, where it has one; a handoff changes it).
    agent: str | None
    #: The step under way, or the last one (0 before the first).
    step: int
    #: The phase of that step (``None`` before the first step).
    phase: StepPhase | None
    #: Steps completed.
    steps: int
    #: The run's input conversation.
    input: tuple[Message, ...]
    #: The conversation as of the last completed step (input, then every step's messages).
    messages: tuple[Message, ...]
    #: Every tool call of the run so far, in the order they appeared, by call id.
    calls: Mapping[str, ToolCallState]
    #: Tool calls the model made, over the completed steps.
    tool_calls: int
    #: Names of the tools that ran, in order, over the completed steps.
    tools_invoked: tuple[str, ...]
    #: The validated structured output, once a step gave it.
    output: Any
    #: The latest structured value of the step under way (partial while it streams).
    structured: Any
    #: Calls waiting for a decision, once the run paused.
    pending: tuple[ToolCall, ...]
    stop: StopReason | None
    #: The error, as ``"ErrorType: message"``, once the run failed.
    error: str | None
    error_type: str | None
    started_at: float | None
    ended_at: float | None
    #: How many events were applied: the index the next event gets.
    events: int
    #: The final run, once ``RunCompleted`` arrived.
    result: AgentRun | None

    _committed: Usage
    _step_usage: Usage
    _pieces: _Pieces
    _pieces_n: int
    _reasoning: _Pieces
    _reasoning_n: int
    #: The steps that ended, in order.
    records: tuple[StepRecord, ...]
    #: When the step under way (or the last one) started.
    step_started_at: float | None

    def __init__(self, input: ConversationInput = ()) -> None:
        messages = tuple(Conversation.of(input)) if input else ()
        self.status = RunStatus.QUEUED
        self.agent = None
        self.step = 0
        self.phase = None
        self.steps = 0
        self.input = messages
        self.messages = messages
        self.calls = {}
        self.tool_calls = 0
        self.tools_invoked = ()
        self.output = None
        self.structured = None
        self.pending = ()
        self.stop = None
        self.error = None
        self.error_type = None
        self.started_at = None
        self.ended_at = None
        self.events = 0
        self.result = None
        self._committed = _ZERO
        self._step_usage = _ZERO
        self._pieces = _NO_PIECES
        self._pieces_n = 0
        self._reasoning = _NO_PIECES
        self._reasoning_n = 0
        self.records = ()
        self.step_started_at = None

    @classmethod
    def of(cls, input: ConversationInput) -> RunState:
        """The state of a run on ``input`` before its first event."""
        return cls(input)

    # -- reading ------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.status.is_final

    @property
    def usage(self) -> Usage:
        """Tokens used so far, the step under way included."""
        if self._step_usage is _ZERO:
            return self._committed
        return self._committed + self._step_usage

    @property
    def text(self) -> str:
        """The assistant text of every step so far, a line between steps."""
        return "\n".join(t for t in self.texts.values() if t)

    @property
    def step_text(self) -> str:
        """The assistant text of the step under way (or the last step) so far."""
        return "".join(self._pieces.items[: self._pieces_n])

    @property
    def reasoning(self) -> str:
        """The reasoning text of the step under way (or the last step) so far."""
        return "".join(self._reasoning.items[: self._reasoning_n])

    @property
    def texts(self) -> dict[int, str]:
        """The assistant text each step streamed (a retried step starts again)."""
        out = {record.step: record.text for record in self.records}
        if self.step not in out and self._pieces_n:
            out[self.step] = self.step_text  # the step under way (or one that failed)
        return {step: text for step, text in sorted(out.items())}

    @property
    def conversation(self) -> Conversation:
        """The conversation as of the last completed step (a new, writable copy)."""
        return Conversation.of_messages(self.messages)

    @property
    def rows(self) -> list[ToolCallState]:
        """The tool calls in the order they appeared."""
        return list(self.calls.values())

    def loop_state(self, elapsed: float = 0.0) -> LoopState:
        """What a stop policy sees: steps, usage, tool calls, ``elapsed`` seconds."""
        return LoopState(
            steps=self.steps,
            usage=self._committed,
            tool_calls=self.tool_calls,
            tools_invoked=self.tools_invoked,
            elapsed=elapsed,
        )

    def to_run(self, stop: StopReason) -> AgentRun:
        """The ``AgentRun`` this state stands for, ended for ``stop``."""
        conversation = Conversation.of_messages(self.messages)
        return AgentRun(
            messages=conversation,
            steps=self.steps,
            stop=stop,
            usage=self._committed,
            output=self.output,
            pending=tuple(conversation.pending) if stop is StopReason.PAUSED else (),
            tool_calls=self.tool_calls,
        )

    def elapsed(self, now: float) -> float | None:
        """Seconds since the run started (until it ended, once it has)."""
        if self.started_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else now
        return max(0.0, end - self.started_at)

    def __repr__(self) -> str:
        return (
            f"RunState(status={self.status.value}, step={self.step}, "
            f"phase={self.phase and self.phase.value}, steps={self.steps}, "
            f"calls={len(self.calls)}, events={self.events})"
        )

    # -- folding ------------------------------------------------------------------------
    def apply(self, event: AgentEvent) -> RunState:
        """The state after ``event``; this state does not change."""
        new = self._copy()
        new.events += 1
        kind = type(event)
        if kind is TextDelta:
            new._pieces, new._pieces_n = _append(self._pieces, self._pieces_n, event.text)  # type: ignore[union-attr]
            if new.phase is StepPhase.RESUMING:
                new.phase = StepPhase.STREAMING
            return new
        if new.status is RunStatus.QUEUED:
            new.status = RunStatus.RUNNING
        if event.step > new.step and kind is not RunStarted:
            new.step = event.step
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(new, event)
        return new

    def fail(self, error: BaseException, at: float | None = None) -> RunState:
        """The state once the run's stream failed with ``error`` (``on_error``)."""
        partial = getattr(error, "partial", None)
        message = getattr(error, "message", None) or str(error)
        new = self._copy()
        new._failed(type(error).__name__, message, at, partial)
        return new

    def end(self, at: float | None = None) -> RunState:
        """The state once the run's stream completed (``on_completed``)."""
        if self.done:
            return self
        new = self._copy()
        new.status = RunStatus.ENDED
        new.ended_at = at
        new._stop_open_calls(ToolCallStatus.CANCELLED, at)
        return new

    def _copy(self) -> RunState:
        # A dict copy: a fraction of a microsecond, where dataclasses.replace() costs
        # several (this runs for every event of every run).
        new = object.__new__(RunState)
        new.__dict__ = self.__dict__.copy()
        return new

    # Each handler changes ``self``, a fresh copy nobody else holds yet.
    def _run_started(self, event: RunStarted) -> None:
        if self.status.is_final:
            # A log that goes on after its run ended: a paused run resumed under the same
            # id (rxagent.web's run hub). The new segment runs; its steps count from 1.
            self.status = RunStatus.RUNNING
            self.step = 0
            self.result = self.stop = self.error = self.error_type = self.ended_at = None
            self.pending = ()
        self.input = self.messages = tuple(event.input)
        self.agent = event.agent
        if self.started_at is None:
            self.started_at = event.at

    def _handoff(self, event: Handoff) -> None:
        self.agent = event.to_agent

    def _step_started(self, event: StepStarted) -> None:
        if self.started_at is None:
            self.started_at = event.at
        self.step_started_at = event.at
        self.phase = StepPhase.RESUMING if _has_open_turn(self.messages) else StepPhase.STREAMING
        self._pieces, self._pieces_n = _NO_PIECES, 0
        self._reasoning, self._reasoning_n = _NO_PIECES, 0
        self._step_usage = _ZERO
        self.structured = None

    def _provider_output(self) -> None:
        if self.phase is StepPhase.RESUMING:
            self.phase = StepPhase.STREAMING

    def _reasoning_delta(self, event: ReasoningDelta) -> None:
        self._provider_output()
        self._reasoning, self._reasoning_n = _append(self._reasoning, self._reasoning_n, event.text)

    def _args_delta(self, event: ToolArgsDelta) -> None:
        self._provider_output()
        call = self._call_of(event)
        self._set_call(
            call.evolve(
                name=call.name or event.name,
                arguments_text=call.arguments_text + event.delta,
            )
        )

    def _call_started(self, event: ToolCallStarted) -> None:
        call = self._call_of(event)
        self._set_call(
            call.evolve(
                status=ToolCallStatus.RUNNING,
                arguments=event.arguments,
                started_at=event.at,
                awaiting=None,
            )
        )

    def _call_pending(self, event: ToolCallPending) -> None:
        call = self._call_of(event)
        self._set_call(
            call.evolve(
                status=ToolCallStatus.PENDING,
                arguments=event.arguments,
                awaiting=event.awaiting,
                reason=event.reason,
                not_before=event.not_before,
            )
        )

    def _progress(self, event: ToolProgress) -> None:
        inner = event.innermost
        if isinstance(inner, UsageDelta):  # a sub-agent's tokens roll up into this run's
            self._usage_delta(inner)
        call = self.calls.get(event.call_id)
        if call is None:
            return
        if event.event is not None:
            nested = (call.nested or RunState()).apply(event.event)
            self._set_call(call.evolve(progress=call.progress + 1, nested=nested))
        else:
            self._set_call(call.evolve(progress=call.progress + 1, last_progress=event.data))

    def _call_ended(self, event: ToolCallEnded) -> None:
        call = self._call_of(event)
        reason = call.reason
        if event.status is ToolCallStatus.REJECTED and event.error:
            reason = event.error.removeprefix("Rejected: ")
        self._set_call(
            call.evolve(
                status=event.status,
                ended_at=event.at,
                output=event.output,
                error=event.error,
                awaiting=None,
                reason=reason,
            )
        )

    def _usage_delta(self, event: UsageDelta) -> None:
        self._step_usage = self._step_usage + Usage(
            prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens
        )

    def _structured(self, event: Structured) -> None:
        self._provider_output()
        self.structured = event.value

    def _step_retry(self, event: StepRetry) -> None:
        # The provider starts the turn again: what it streamed so far is void.
        self._drop_partial()

    def _drop_partial(self) -> None:
        self._pieces, self._pieces_n = _NO_PIECES, 0
        self._reasoning, self._reasoning_n = _NO_PIECES, 0
        self.structured = None

    def _run_resumed(self, event: RunResumed) -> None:
        # The run goes on from the event's conversation: the step under way is void, but
        # for the calls the conversation carries on (they run again); calls it does not
        # have are gone with the step.
        known = _call_ids(self.messages)
        self.messages = tuple(event.input)
        self.phase = None
        self._step_usage = _ZERO
        self._drop_partial()
        carried = {call.id: call for call in _waiting_calls(self.messages)}
        kept = _call_ids(self.messages)
        calls: dict[str, ToolCallState] = {}
        for call_id, call in self.calls.items():
            if call_id in carried:
                calls[call_id] = call.evolve(status=carried[call_id].status)
                if call_id not in known:
                    self.tool_calls += 1  # the model made it in the void step: it counts
            elif call_id in kept:
                calls[call_id] = call
        self.calls = calls

    def _step_completed(self, event: StepCompleted) -> None:
        outcome = event.outcome
        self.messages = _applied(self.messages, outcome)
        self.steps += 1
        self._committed = self._committed + outcome.usage
        self._step_usage = _ZERO
        self.tool_calls += len(outcome.tool_calls)
        self.tools_invoked += outcome.invoked_tools
        if outcome.output is not None:
            self.output = outcome.output
        if outcome.error is not None:
            self.phase = StepPhase.FAILED
        elif outcome.cancelled:
            self.phase = StepPhase.CANCELLED
        else:
            self.phase = StepPhase.COMPLETED
        record = StepRecord(
            step=event.step,
            phase=self.phase,
            started_at=outcome.started_at or self.step_started_at,
            streamed_at=outcome.streamed_at or None,
            ended_at=outcome.ended_at or event.at,
            text=self.step_text,
            finish_reason=outcome.finish_reason,
        )
        self.records += (record,)
        # The outcome knows how the calls that never ended finished (cancelled,
        # still waiting), and a resumed turn's calls their new status.
        for message in outcome.messages:
            if isinstance(message, AssistantMessage):
                for call in message.tool_calls:
                    self._settle(call, event.at)

    def _settle(self, call: ToolCall, at: float) -> None:
        known = self.calls.get(call.id)
        if known is None:
            known = ToolCallState(
                call_id=call.id, name=call.name, step=self.step, arguments_text=call.arguments
            )
        elif known.status.is_final:
            return
        status = call.status
        if status is known.status or status is ToolCallStatus.RUNNING:
            if known is not self.calls.get(call.id):
                self._set_call(known)
            return
        update: dict[str, Any] = {"status": status}
        if status is ToolCallStatus.PENDING:
            update["awaiting"] = "approval" if call.not_before is None else "schedule"
            update["reason"] = call.reason
            update["not_before"] = call.not_before
        elif status is ToolCallStatus.CANCELLED and known.started_at is not None:
            update["ended_at"] = at
        elif status is ToolCallStatus.REJECTED:
            update["reason"] = call.reason
        self._set_call(known.evolve(**update))

    def _paused(self, event: Paused) -> None:
        self.pending = tuple(Conversation.of_messages(self.messages).pending)
        reason = event.reason
        waiting: list[tuple[str, Literal["approval", "schedule"], float | None]] = [
            (i, "approval", None) for i in reason.awaiting_approval
        ]
        waiting += [(i, "schedule", t) for i, t in reason.scheduled.items()]
        for call_id, awaiting, not_before in waiting:
            call = self.calls.get(call_id)
            if call is None:
                call = ToolCallState(call_id=call_id, name="?", step=event.step)
            if call.status is not ToolCallStatus.PENDING:
                self._set_call(
                    call.evolve(
                        status=ToolCallStatus.PENDING, awaiting=awaiting, not_before=not_before
                    )
                )

    def _run_completed(self, event: RunCompleted) -> None:
        run = event.run
        self.result = run
        self.stop = run.stop
        self.ended_at = event.at
        self.messages = tuple(run.messages)
        self.pending = run.pending
        self.output = run.output
        self.status = _STATUS_OF_STOP.get(run.stop, RunStatus.COMPLETED)
        for call in run.pending:
            self._settle(call, event.at)
        self._stop_open_calls(ToolCallStatus.CANCELLED, event.at)

    def _run_failed(self, event: RunFailed) -> None:
        self._failed(event.error_type, event.message, event.at, event.partial)

    def _failed(
        self, error_type: str, message: str, at: float | None, partial: AgentRun | None
    ) -> None:
        self.status = RunStatus.FAILED
        self.error_type = error_type
        self.error = f"{error_type}: {message}"
        self.stop = StopReason.ERROR
        self.ended_at = at
        if self.phase is not None and not self.phase.is_final:
            self.phase = StepPhase.FAILED
        if partial is not None:
            self.messages = tuple(partial.messages)
        self._stop_open_calls(ToolCallStatus.CANCELLED, at)

    def _stop_open_calls(self, status: ToolCallStatus, at: float | None) -> None:
        # A call still requested or running when the run is over was stopped with it.
        for call in list(self.calls.values()):
            if call.status in (ToolCallStatus.REQUESTED, ToolCallStatus.RUNNING):
                ended = call.ended_at
                if call.started_at is not None and ended is None:
                    ended = at
                self._set_call(call.evolve(status=status, ended_at=ended))

    def _call_of(
        self, event: ToolArgsDelta | ToolCallStarted | ToolCallPending | ToolCallEnded
    ) -> ToolCallState:
        """The call ``event`` is about, as known so far (new if it is not known yet)."""
        call = self.calls.get(event.call_id)
        if call is None:
            call = ToolCallState(call_id=event.call_id, name=event.name, step=event.step)
        return call

    def _set_call(self, call: ToolCallState) -> None:
        calls = dict(self.calls)
        calls[call.call_id] = call
        self.calls = calls


def fold(events: Iterable[AgentEvent], state: RunState | None = None) -> RunState:
    """The state after ``events``, from ``state`` (default: nothing happened yet)."""
    state = state if state is not None else RunState()
    for event in events:
        state = state.apply(event)
    return state


_ZERO = Usage()

_STATUS_OF_STOP = {
    StopReason.PAUSED: RunStatus.PAUSED,
    StopReason.CANCELLED: RunStatus.CANCELLED,
    StopReason.ERROR: RunStatus.FAILED,
}

_HANDLERS: dict[type[Any], Any] = {
    RunStarted: RunState._run_started,
    RunResumed: RunState._run_resumed,
    Handoff: RunState._handoff,
    StepStarted: RunState._step_started,
    ReasoningDelta: RunState._reasoning_delta,
    ToolArgsDelta: RunState._args_delta,
    ToolCallStarted: RunState._call_started,
    ToolCallPending: RunState._call_pending,
    ToolProgress: RunState._progress,
    ToolCallEnded: RunState._call_ended,
    UsageDelta: RunState._usage_delta,
    Structured: RunState._structured,
    StepRetry: RunState._step_retry,
    StepCompleted: RunState._step_completed,
    Paused: RunState._paused,
    RunCompleted: RunState._run_completed,
    RunFailed: RunState._run_failed,
}


def _append(pieces: _Pieces, n: int, text: str) -> tuple[_Pieces, int]:
    items = pieces.items
    if len(items) != n or pieces is _NO_PIECES:
        pieces = _Pieces(items[:n])
        items = pieces.items
    items.append(text)
    return pieces, n + 1


def _applied(messages: tuple[Message, ...], outcome: StepOutcome) -> tuple[Message, ...]:
    if outcome.replaces:
        messages = messages[: len(messages) - outcome.replaces]
    return messages + outcome.messages


def _call_ids(messages: tuple[Message, ...]) -> set[str]:
    return {c.id for m in messages if isinstance(m, AssistantMessage) for c in m.tool_calls}


def _waiting_calls(messages: tuple[Message, ...]) -> list[ToolCall]:
    """The calls of the last assistant turn that have no answer yet."""
    try:
        turn = Conversation(list(messages)).open_turn()
    except ApprovalError:
        return []
    return list(turn.unanswered) if turn is not None else []


def _has_open_turn(messages: tuple[Message, ...]) -> bool:
    """Whether the last assistant turn waits on decisions (a step on it resumes it)."""
    try:
        return Conversation.of_messages(messages).open_turn() is not None
    except ApprovalError:
        return False  # the step fails on it at once
