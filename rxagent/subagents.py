"""Agents as tools (``agent.as_tool()``) and handoffs (``ra.handoff(agent)``).

A sub-agent is a tool whose call is a run of another agent. Its events stream
through the parent's run as they happen, each one a ``ToolProgress`` carrying the
nested event (``progress.event``, typed; ``progress.depth`` says how deep); its
final text (or structured output) is the tool's output; its tokens count in the
parent's usage and budgets. Cancelling the parent cancels the sub-run (its
subscription is disposed), and a sub-run that ends cancelled cancels the parent
step. A sub-agent that pauses for approval is refused (see :func:`agent_tool`).

A handoff is a tool that hands the rest of the run to another agent: once the
model calls it, the next steps run on that agent's provider, tools, instructions
and output type, announced by a ``Handoff`` event; the run's policy and budgets
(the first agent's) go on counting across agents.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field
from reactivex import Observable, abc

from rxagent.errors import AgentError, ToolCancelled, ToolExecutionError
from rxagent.events import AgentEvent, RunCompleted
from rxagent.policies import StopReason
from rxagent.tools import Tool

if TYPE_CHECKING:
    from rxagent.agent import Agent

__all__ = ["HandoffTool", "agent_tool", "handoff"]


def _tool_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64]
    return cleaned or "agent"


def agent_tool(
    agent: Agent, *, name: str | None = None, description: str | None = None
) -> Tool[..., Any]:
    """``agent`` as a tool taking ``input`` (what to ask it); see ``Agent.as_tool``.

    Approvals inside a sub-agent are refused: a sub-run that pauses ends the call
    with a ``ToolExecutionError`` naming the calls that wait (reported to the
    parent's model under ``REPORT_TO_MODEL``). Resuming both would need the
    sub-run's paused conversation kept inside the parent's, where a tool call
    has one answer; rather than a half-sound nesting of pauses, give the
    sub-agent tools that need no approval, or hand off (:func:`handoff`) to an
    agent whose approvals then pause the run itself.
    """
    label = name or agent.name
    if label is None:
        raise ValueError("agent.as_tool() needs a name: Agent(name=...) or as_tool(name=...)")
    tool_name = _tool_name(label)
    summary = description or (
        f"Ask the {label} agent to do a task; give it everything it needs in `input`."
        + (f" It is instructed: {agent.instructions}" if agent.instructions else "")
    )

    def ask(
        input: Annotated[str, Field(description="The task or question for the agent.")],
    ) -> Observable[Any]:
        def subscribe(
            observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            run = agent.run(input)
            final: list[RunCompleted] = []

            def on_next(event: AgentEvent) -> None:
                if type(event) is RunCompleted:
                    final.append(event)
                observer.on_next(event)  # a nested event: progress of the parent's call

            def on_error(error: Exception) -> None:
                detail = error.message if isinstance(error, AgentError) else str(error)
                failure = ToolExecutionError(
                    f"the {label} agent failed: {type(error).__name__}: {detail}",
                    tool_name=tool_name,
                )
                failure.__cause__ = error
                observer.on_error(failure)

            def on_completed() -> None:
                if not final:
                    observer.on_error(
                        ToolExecutionError(f"the {label} agent ended without an answer")
                    )
                    return
                result = final[-1].run
                if result.stop is StopReason.CANCELLED:
                    observer.on_error(ToolCancelled(f"the {label} agent's run was cancelled"))
                elif result.stop is StopReason.PAUSED:
                    waiting = ", ".join(f"{c.name} ({c.id})" for c in result.pending)
                    observer.on_error(
                        ToolExecutionError(
                            f"the {label} agent paused for approval of {waiting}; approvals "
                            "inside a sub-agent are not supported (hand off to that agent "
                            "instead, so that its approvals pause this run)"
                        )
                    )
                else:
                    output = result.output if agent.output is not None else result.text
                    observer.on_next(output)
                    observer.on_completed()

            # Disposing this (the parent's step cancelled, the call timed out) leaves
            # the sub-run without its only observer, which cancels it.
            return run.subscribe(on_next, on_error, on_completed)

        return Observable(subscribe)

    ask.__doc__ = summary
    return Tool(ask, name=tool_name, description=summary, _namespace=_NAMESPACE)


class HandoffTool(Tool[..., str]):
    """A tool that hands the rest of the run to ``handoff_agent`` when called."""

    handoff_agent: Agent


def handoff(
    agent: Agent, *, name: str | None = None, description: str | None = None
) -> HandoffTool:
    """A tool that hands the conversation to ``agent`` for the rest of the run.

    Give it to an agent's tools: when its model calls it, the call is answered
    ("Transferred to ..."), a ``Handoff`` event follows the step, and the next
    steps run on ``agent`` (its provider, tools, instructions, output type), with
    the conversation so far. The first agent's stop policy and budgets go on
    counting across agents. ``agent`` needs a name (``Agent(name=...)``).
    """
    if agent.name is None:
        raise ValueError("a handoff needs a named agent: Agent(name=...)")
    target = agent.name
    summary = description or (
        f"Hand the conversation over to the {target} agent, for the rest of it."
        + (f" That agent is instructed: {agent.instructions}" if agent.instructions else "")
    )

    def transfer() -> str:
        return f"Transferred to the {target} agent."

    transfer.__doc__ = summary
    tool = HandoffTool(
        transfer,
        name=_tool_name(name or f"transfer_to_{target}"),
        description=summary,
        _namespace=_NAMESPACE,
    )
    tool.handoff_agent = agent
    return tool


_NAMESPACE: dict[str, Any] = {
    "Annotated": Annotated,
    "Field": Field,
    "Observable": Observable,
    "Any": Any,
}
