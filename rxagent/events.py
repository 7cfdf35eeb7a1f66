"""The event vocabulary of a run.

Every event is a frozen pydantic model with a ``type`` tag and the ``step`` it
belongs to (1-based); :data:`AgentEvent` is their discriminated union, so a run
serializes to JSON lines and back (:func:`dumps`, :func:`loads`,
:func:`to_jsonl`, :func:`from_jsonl`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from rxagent.messages import (
    AssistantMessage,
    Conversation,
    ConversationRecord,
    ToolCall,
    ToolCallStatus,
    Usage,
)
from rxagent.policies import PauseReason, StepOutcome, StopReason

__all__ = [
    "AgentEvent",
    "AgentRun",
    "Handoff",
    "Paused",
    "ReasoningDelta",
    "RunCompleted",
    "RunFailed",
    "RunResumed",
    "RunStarted",
    "StepCompleted",
    "StepRetry",
    "StepStarted",
    "Structured",
    "TextDelta",
    "ToolArgsDelta",
    "OutputRetry",
    "ToolCallEnded",
    "ToolCallPending",
    "ToolCallStarted",
    "ToolProgress",
    "UsageDelta",
    "dumps",
    "from_jsonl",
    "loads",
    "to_jsonl",
]


def _now() -> float:
    return time.time()


class AgentRun(BaseModel):
    """The result of a run: its conversation, steps, stop reason, usage, output.

    A run's record (as ``RunCompleted.run``, or a failure's ``partial``) never
    changes: its ``messages`` is a read-only conversation. ``ra.collect_final``,
    ``run.result()`` and ``agent.run_sync()`` give you :meth:`editable` copies, whose
    ``messages`` are yours to approve, reject and extend.
    """

    model_config = ConfigDict(frozen=True)

    messages: ConversationRecord = Field(default_factory=Conversation, validate_default=True)
    steps: int = 0
    stop: StopReason = StopReason.NO_TOOL_CALLS
    usage: Usage = Usage()
    #: The validated structured output, where the agent has an ``output_type``.
    output: Any = None
    #: Tool calls waiting for a decision (approval, a schedule) when the run paused.
    pending: tuple[ToolCall, ...] = ()
    #: Tool calls made over the whole run.
    tool_calls: int = 0

    @property
    def text(self) -> str:
        """The text of the last assistant message ('' when there is none)."""
        last = self.messages.last_assistant
        return (last.content or "") if last is not None else ""

    @property
    def last_message(self) -> AssistantMessage | None:
        return self.messages.last_assistant

    def editable(self) -> AgentRun:
        """This run with a writable copy of its conversation (``messages.copy()``); the
        run it came from stays as it was recorded."""
        return self.model_copy(update={"messages": self.messages.copy()})


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    step: int


class RunStarted(_Event):
    """The first event of a run: the conversation it starts from (``step`` is 1).

    With it, a run's events tell the whole run: folding them
    (:class:`~rxagent.state.RunState`) gives its ``AgentRun``.
    """

    type: Literal["run_started"] = "run_started"
    input: ConversationRecord = Field(default_factory=Conversation, validate_default=True)
    #: The name of the agent running (``Agent(name=...)``), where it has one.
    agent: str | None = None
    at: float = Field(default_factory=_now)


class Handoff(_Event):
    """The run goes on with another agent (its provider, tools and instructions), the
    model having called a handoff tool (``ra.handoff(agent)``); the run's policy and
    budgets go on counting across agents."""

    type: Literal["handoff"] = "handoff"
    from_agent: str | None
    to_agent: str
    call_id: str
    at: float = Field(default_factory=_now)


class RunResumed(_Event):
    """The run goes on in another process: the one running it was lost (``rxagent.redis``).

    ``step`` is the step that runs (again) next: a step of that number already under
    way is void, so drop its partial text and reasoning, and the calls that ``input``
    does not carry on. ``input`` is the conversation the run goes on from: as of its
    last completed step, and, when the void step had started tool calls, its assistant
    turn with those calls approved, so that they run again with the same call ids
    (at-least-once; the call id is a tool's idempotency key). The events go on with the
    next index, in the same stream; a fold (:class:`~rxagent.state.RunState`) takes the
    run's conversation from ``input``. ``worker`` names the process that goes on.
    """

    type: Literal["run_resumed"] = "run_resumed"
    input: Conversation = Field(default_factory=Conversation)
    worker: str | None = None
    at: float = Field(default_factory=_now)


class StepStarted(_Event):
    """A provider turn begins."""

    type: Literal["step_started"] = "step_started"
    at: float = Field(default_factory=_now)


class TextDelta(_Event):
    """A piece of assistant text."""

    type: Literal["text_delta"] = "text_delta"
    text: str


class ReasoningDelta(_Event):
    """A piece of reasoning text, where the provider streams it."""

    type: Literal["reasoning_delta"] = "reasoning_delta"
    text: str


class ToolArgsDelta(_Event):
    """A fragment of a tool call's JSON arguments, as the model writes them."""

    type: Literal["tool_args_delta"] = "tool_args_delta"
    call_id: str
    name: str
    delta: str


class ToolCallStarted(_Event):
    """A call's arguments are complete and valid; the tool starts now."""

    type: Literal["tool_call_started"] = "tool_call_started"
    call_id: str
    name: str
    arguments: dict[str, Any]
    at: float = Field(default_factory=_now)


class ToolProgress(_Event):
    """An item a streaming tool produced before its result.

    For a tool that is an agent (``agent.as_tool()``), each event of the sub-agent's
    run arrives as it happens in ``event`` (``data`` is then ``None``), and ``depth``
    says how deep the innermost event is: 1 for the sub-agent's own events, 2 for
    its sub-agent's, ... (0 for a plain tool's progress).
    """

    type: Literal["tool_progress"] = "tool_progress"
    call_id: str
    data: Any = None
    event: AgentEvent | None = None
    depth: int = 0

    @property
    def innermost(self) -> AgentEvent | None:
        """The sub-agent event this progress carries, unwrapped from every level."""
        event = self.event
        while isinstance(event, ToolProgress) and event.event is not None:
            event = event.event
        return event


class ToolCallPending(_Event):
    """A call waits: for a human's approval (``awaiting="approval"``) or for its time
    (``awaiting="schedule"``, from ``not_before``). The run pauses at the step's end."""

    type: Literal["tool_call_pending"] = "tool_call_pending"
    call_id: str
    name: str
    arguments: dict[str, Any]
    awaiting: Literal["approval", "schedule"]
    reason: str | None = None
    not_before: float | None = None


class ToolCallEnded(_Event):
    """A call ended: ``output`` on success, ``error`` (a message) on failure.

    ``status`` is ``completed``, ``failed``, or ``rejected`` (refused by an approval
    strategy or a human; ``error`` then holds the refusal the model reads).
    ``error_type`` names the class of a failed call's error (``ToolExecutionError``,
    ``ToolTimeoutError``, ``UnknownToolError``, ``ToolArgumentsError``, ...).
    """

    type: Literal["tool_call_ended"] = "tool_call_ended"
    call_id: str
    name: str
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    status: ToolCallStatus = ToolCallStatus.COMPLETED
    at: float = Field(default_factory=_now)

    @property
    def ok(self) -> bool:
        return self.error is None


class UsageDelta(_Event):
    """The provider reported token usage."""

    type: Literal["usage_delta"] = "usage_delta"
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Structured(_Event):
    """A structured (JSON) value; ``partial`` while it is still streaming."""

    type: Literal["structured"] = "structured"
    value: Any
    partial: bool = False


class StepRetry(_Event):
    """The provider turn failed transiently and starts again: drop this step's text."""

    type: Literal["step_retry"] = "step_retry"
    attempt: int
    error: str


class OutputRetry(_Event):
    """The model's structured output did not fit; it is asked again (``attempt`` from 1)."""

    type: Literal["output_retry"] = "output_retry"
    attempt: int
    errors: str


class StepCompleted(_Event):
    """A step ended; ``outcome`` holds the messages it added, its usage and tools."""

    type: Literal["step_completed"] = "step_completed"
    outcome: StepOutcome
    at: float = Field(default_factory=_now)


class Paused(_Event):
    """Tools wait for a decision; the run ends after this with ``stop="paused"``."""

    type: Literal["paused"] = "paused"
    reason: PauseReason


class RunCompleted(_Event):
    """The last event of every run that did not fail."""

    type: Literal["run_completed"] = "run_completed"
    run: AgentRun
    at: float = Field(default_factory=_now)


class RunFailed(_Event):
    """A failed run, as data: what ``ops.materialize()`` turns ``on_error`` into."""

    type: Literal["run_failed"] = "run_failed"
    error_type: str
    message: str
    #: The run so far, where the error carried it.
    partial: AgentRun | None = None
    at: float = Field(default_factory=_now)


AgentEvent: TypeAlias = Annotated[
    RunStarted
    | RunResumed
    | StepStarted
    | Handoff
    | TextDelta
    | ReasoningDelta
    | ToolArgsDelta
    | ToolCallStarted
    | ToolCallPending
    | ToolProgress
    | ToolCallEnded
    | UsageDelta
    | Structured
    | StepRetry
    | OutputRetry
    | StepCompleted
    | Paused
    | RunCompleted
    | RunFailed,
    Field(discriminator="type"),
]

ToolProgress.model_rebuild()

_adapter: TypeAdapter[AgentEvent] = TypeAdapter(AgentEvent)


def dumps(event: AgentEvent) -> str:
    """One event as a line of JSON (no trailing newline)."""
    return event.model_dump_json()


def loads(line: str | bytes) -> AgentEvent:
    """The event a line of JSON describes."""
    return _adapter.validate_json(line)


def to_jsonl(events: Iterable[AgentEvent]) -> str:
    """Events as JSON lines, one event a line."""
    return "".join(dumps(e) + "\n" for e in events)


def from_jsonl(text: str) -> list[AgentEvent]:
    """The events of JSON lines (blank lines are skipped)."""
    return [loads(line) for line in text.splitlines() if line.strip()]


def validate_event(data: Any) -> AgentEvent:
    """An event from plain data (a dict as ``model_dump`` gives)."""
    return _adapter.validate_python(data)
