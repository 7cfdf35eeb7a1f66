"""Loop policies: when an agent loop stops.

A :class:`Policy` is a pure function of the :class:`LoopState` (steps so far,
usage, tool calls, elapsed time) and the last step's :class:`StepOutcome`; it
returns a :class:`StopReason` to stop or ``None`` to go on. No counter lives in
a policy, so one policy serves any number of runs at once.

``a | b`` stops when either stops (the first one's reason wins when both do);
``a & b`` stops only when both do (with ``a``'s reason).

The loop asks the policy after each step, so budgets of tokens and tool calls
are checked at step boundaries: a step that is under way is finished first. A
budget of time (``max_time``) also cuts the step under way short at its
deadline. Use ``run.cancel()`` or an Rx ``take_until`` to cut a run short
mid-step yourself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rxagent.messages import Conversation, Message, ToolCall, Usage

__all__ = [
    "LoopState",
    "PauseReason",
    "Policy",
    "StepOutcome",
    "StopReason",
    "max_steps",
    "max_time",
    "max_tokens",
    "max_tool_calls",
    "policy",
    "until_no_tool_calls",
    "until_tool_called",
]


class StopReason(StrEnum):
    """Why a run ended."""

    NO_TOOL_CALLS = "no_tool_calls"
    MAX_STEPS = "max_steps"
    TOOL_CALLED = "tool_called"
    TOKEN_BUDGET = "token_budget"
    TOOL_BUDGET = "tool_budget"
    TIME_BUDGET = "time_budget"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    #: Only on the ``partial`` run of a failed run.
    ERROR = "error"


class PauseReason(BaseModel):
    """Why a run paused: calls waiting for approval, calls scheduled for later."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["awaiting_approval", "scheduled", "mixed"]
    awaiting_approval: tuple[str, ...] = ()
    #: call id -> the time (``time.time()``) from which it may run.
    scheduled: dict[str, float] = Field(default_factory=dict)


class StepOutcome(BaseModel):
    """What one step did: the messages it added, its usage, its tool calls."""

    model_config = ConfigDict(frozen=True)

    step: int
    #: The messages this step added: the assistant message, then its tool messages.
    #: A step that resumed a paused turn starts with that turn, rewritten (see ``replaces``).
    messages: tuple[Message, ...] = ()
    #: How many messages at the end of the step's input conversation the first of
    #: ``messages`` replace: a resumed turn's assistant message (with its calls' new
    #: status) and its tool messages, put back in call order. Use :meth:`apply`.
    replaces: int = 0
    usage: Usage = Usage()
    #: The calls the model made this step, with their final status.
    tool_calls: tuple[ToolCall, ...] = ()
    #: Names of the tools that actually ran this step, in call order.
    invoked_tools: tuple[str, ...] = ()
    finish_reason: str | None = None
    #: The step was cut short by a cancellation (or by a failure: see ``error``).
    cancelled: bool = False
    #: The step failed with this error (``"ErrorType: message"``); the run fails with
    #: it right after this step's ``StepCompleted``, whose outcome is the partial step.
    error: str | None = None
    #: Set when calls wait for a human or a schedule: the run pauses after this step.
    pause: PauseReason | None = None
    #: The validated structured output, when the agent has an ``output_type`` and this
    #: step gave the final answer.
    output: Any = None
    #: The answer did not fit ``output_type`` and the model is asked again.
    output_retry: bool = False
    #: The model called a handoff tool: the run goes on with this agent (by name).
    handoff: str | None = None
    #: The id of the handoff call, where there was one.
    handoff_call: str | None = None
    #: Wall-clock times (``time.time()``): the step began, the provider's stream ended
    #: (0 when it never did: a step cancelled or failed mid-stream, or a resumed turn
    #: that paused again), the step ended.
    started_at: float = 0.0
    streamed_at: float = 0.0
    ended_at: float = 0.0

    @property
    def has_tool_calls(self) -> bool:
        return bool(self.tool_calls)

    def apply(self, conversation: Conversation) -> None:
        """Bring ``conversation`` (the step's input) up to date with this step, in place."""
        if self.replaces:
            del conversation.root[-self.replaces :]
        conversation.extend(self.messages)


@dataclass(frozen=True)
class LoopState:
    """What the loop has done so far, as the policy sees it after a step."""

    steps: int = 0
    usage: Usage = field(default_factory=Usage)
    tool_calls: int = 0
    tools_invoked: tuple[str, ...] = ()
    elapsed: float = 0.0

    def after(self, outcome: StepOutcome, elapsed: float) -> LoopState:
        """The state once ``outcome`` is counted, at ``elapsed`` seconds into the run."""
        return LoopState(
            steps=self.steps + 1,
            usage=self.usage + outcome.usage,
            tool_calls=self.tool_calls + len(outcome.tool_calls),
            tools_invoked=self.tools_invoked + outcome.invoked_tools,
            elapsed=elapsed,
        )


Decide = Callable[[LoopState, StepOutcome], StopReason | None]


class Policy:
    """A stop rule; call it with ``(state, outcome)``; combine with ``|`` and ``&``."""

    __slots__ = ("_decide", "_name", "time_limit")

    def __init__(
        self, decide: Decide, name: str | None = None, *, time_limit: float | None = None
    ) -> None:
        self._decide = decide
        self._name = name or getattr(decide, "__name__", "policy")
        #: Seconds after which this policy stops the run whatever happens: the loop
        #: then cuts the step under way short at that time (``max_time``).
        self.time_limit = time_limit

    def __call__(self, state: LoopState, outcome: StepOutcome) -> StopReason | None:
        return self._decide(state, outcome)

    def __or__(self, other: Policy) -> Policy:
        def either(state: LoopState, outcome: StepOutcome) -> StopReason | None:
            return self(state, outcome) or other(state, outcome)

        limits = [t for t in (self.time_limit, other.time_limit) if t is not None]
        return Policy(
            either, f"({self._name} | {other._name})", time_limit=min(limits, default=None)
        )

    def __and__(self, other: Policy) -> Policy:
        def both(state: LoopState, outcome: StepOutcome) -> StopReason | None:
            first = self(state, outcome)
            return first if first is not None and other(state, outcome) is not None else None

        # Both must stop: a deadline holds only when both have one, at the later.
        limit = (
            max(self.time_limit, other.time_limit)
            if self.time_limit is not None and other.time_limit is not None
            else None
        )
        return Policy(both, f"({self._name} & {other._name})", time_limit=limit)

    def __repr__(self) -> str:
        return f"Policy({self._name})"


def policy(decide: Decide) -> Policy:
    """Make a :class:`Policy` of a function ``(state, outcome) -> StopReason | None``."""
    return Policy(decide)


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


def until_no_tool_calls() -> Policy:
    """Stop after a step in which the model called no tool (its final answer).

    A structured answer that did not fit and is being retried is not final.
    """

    def decide(state: LoopState, outcome: StepOutcome) -> StopReason | None:
        if outcome.tool_calls or outcome.output_retry:
            return None
        return StopReason.NO_TOOL_CALLS

    return Policy(decide, "until_no_tool_calls()")


def max_steps(n: int) -> Policy:
    """Stop once ``n`` steps have run."""
    _positive("max_steps", n)

    def decide(state: LoopState, outcome: StepOutcome) -> StopReason | None:
        return StopReason.MAX_STEPS if state.steps >= n else None

    return Policy(decide, f"max_steps({n})")


def until_tool_called(name: str) -> Policy:
    """Stop after a step in which the tool ``name`` ran."""

    def decide(state: LoopState, outcome: StepOutcome) -> StopReason | None:
        return StopReason.TOOL_CALLED if name in outcome.invoked_tools else None

    return Policy(decide, f"until_tool_called({name!r})")


def max_tokens(n: int) -> Policy:
    """Stop once the run has used ``n`` tokens or more (prompt and completion)."""
    _positive("max_tokens", n)

    def decide(state: LoopState, outcome: StepOutcome) -> StopReason | None:
        return StopReason.TOKEN_BUDGET if state.usage.total_tokens >= n else None

    return Policy(decide, f"max_tokens({n})")


def max_tool_calls(n: int) -> Policy:
    """Stop once the model has made ``n`` tool calls or more."""
    _positive("max_tool_calls", n)

    def decide(state: LoopState, outcome: StepOutcome) -> StopReason | None:
        return StopReason.TOOL_BUDGET if state.tool_calls >= n else None

    return Policy(decide, f"max_tool_calls({n})")


def max_time(seconds: float) -> Policy:
    """Stop the run ``seconds`` into it.

    An agent's run (and ``ops.loop`` given ``interrupt``) cuts the step under way
    short at the deadline: its provider stream and running tools are cancelled,
    the conversation keeps what they did and still validates, and the run stops
    with ``time_budget``. Elsewhere it stops after the first step that ends
    ``seconds`` or more into the run.
    """
    _positive("max_time", seconds)

    def decide(state: LoopState, outcome: StepOutcome) -> StopReason | None:
        return StopReason.TIME_BUDGET if state.elapsed >= seconds else None

    return Policy(decide, f"max_time({seconds})", time_limit=seconds)
