"""Going on with a run in another process: the conversation to resume from, the policy's
budget so far, and the resumed run's events renumbered into the run's one stream."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

from rxagent.agent import Agent
from rxagent.events import (
    AgentEvent,
    AgentRun,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunStarted,
    StepCompleted,
)
from rxagent.messages import AssistantMessage, Conversation, ToolCall, ToolCallStatus
from rxagent.policies import LoopState, Policy, StepOutcome, StopReason
from rxagent.state import RunState

__all__ = ["continued", "recovery_conversation", "resumed_agent"]


def recovery_conversation(state: RunState) -> Conversation:
    """The conversation a run goes on from after its worker was lost, given the fold of
    the events it wrote.

    That is the conversation as of its last completed step (``state.messages``), and,
    when the interrupted step had started tool calls, its assistant turn rebuilt with
    those calls approved, so that they run again with the same call ids (at-least-once:
    the call id is their idempotency key) before the model goes on. Text the
    interrupted step streamed is dropped (observers drop it at ``RunResumed``); calls
    whose arguments were still streaming are dropped with it (the model asks again).
    A conversation that already ends in a turn waiting on decisions (the interrupted
    step was resuming it) is resumed as it is.
    """
    conversation = state.conversation
    if conversation.open_turn() is not None:
        return conversation
    calls = [
        call
        for call in state.calls.values()
        if call.step > state.steps and call.arguments is not None
    ]
    if not calls:
        return conversation  # nothing of the step had started: the step is redone
    turn: list[ToolCall] = []
    for call in calls:
        kept: ToolCallStatus = call.status
        if kept not in (ToolCallStatus.PENDING, ToolCallStatus.REJECTED):
            kept = ToolCallStatus.APPROVED  # started (and perhaps ended): it runs again
        turn.append(
            ToolCall(
                id=call.call_id,
                name=call.name,
                arguments=json.dumps(dict(call.arguments or {})),
                status=kept,
                reason=call.reason if kept is not ToolCallStatus.APPROVED else None,
                not_before=call.not_before if kept is ToolCallStatus.PENDING else None,
            )
        )
    conversation.append(AssistantMessage(tool_calls=tuple(turn)))
    return conversation


def resumed_agent(agent: Agent, prior: LoopState) -> Agent:
    """``agent``, its policy counting ``prior`` (the steps, tokens, calls and time the
    run had used before it was resumed) as already spent."""
    if prior.steps == 0 and prior.elapsed == 0:
        return agent
    resumed = copy.copy(agent)
    resumed.policy = _continued(agent.policy, prior)
    return resumed


def _continued(policy: Policy, prior: LoopState) -> Policy:
    def decide(state: LoopState, outcome: StepOutcome) -> StopReason | None:
        return policy(
            LoopState(
                steps=prior.steps + state.steps,
                usage=prior.usage + state.usage,
                tool_calls=prior.tool_calls + state.tool_calls,
                tools_invoked=prior.tools_invoked + state.tools_invoked,
                elapsed=prior.elapsed + state.elapsed,
            ),
            outcome,
        )

    limit = policy.time_limit
    return Policy(
        decide,
        f"{policy!r} after {prior.steps} step(s)",
        time_limit=None if limit is None else max(0.001, limit - prior.elapsed),
    )


def continued(prior: RunState, resumed: RunResumed) -> Callable[[AgentEvent], AgentEvent]:
    """The events of a run resumed after ``prior`` (the fold of the run's log, with
    ``resumed`` applied) as events of the whole run: its ``RunStarted`` becomes
    ``resumed``, steps are numbered on from ``prior``'s, and the final run
    (``RunCompleted.run``, ``RunFailed.partial``) counts every step, token and call of
    the run, those before the resume included."""
    offset = prior.steps
    totals = prior.loop_state()

    def joined(run: AgentRun) -> AgentRun:
        return run.model_copy(
            update={
                "steps": run.steps + offset,
                "usage": totals.usage + run.usage,
                "tool_calls": totals.tool_calls + run.tool_calls,
                "output": run.output if run.output is not None else prior.output,
            }
        )

    def shift(event: AgentEvent) -> AgentEvent:
        kind = type(event)
        if kind is RunStarted:
            return resumed
        if kind is StepCompleted:
            outcome = event.outcome  # type: ignore[union-attr]
            return event.model_copy(
                update={
                    "step": event.step + offset,
                    "outcome": outcome.model_copy(update={"step": outcome.step + offset}),
                }
            )
        if kind is RunCompleted:
            run = joined(event.run)  # type: ignore[union-attr]
            return event.model_copy(update={"step": event.step + offset, "run": run})
        if isinstance(event, RunFailed) and event.partial is not None:
            partial = joined(event.partial)
            return event.model_copy(update={"step": event.step + offset, "partial": partial})
        return event.model_copy(update={"step": event.step + offset}) if offset else event

    return shift
