"""rxagent's own web encoding: events as server-sent events, a run's state as JSON.

Each event is one SSE message: ``id:`` its index in the run's log, ``event:`` its
type, ``data:`` its JSON (as :func:`rxagent.events.dumps` writes it, so
:func:`rxagent.events.loads` reads it back)::

    id: 3
    event: text_delta
    data: {"step":1,"type":"text_delta","text":"Hel"}

A client that reconnects sends the last id it saw (``Last-Event-ID``) and gets
the events after it: no gap, no duplicate. :func:`sse_events` is the operator,
:func:`frame` one message; :func:`state_json` a run's state (a
:class:`~rxagent.state.RunState`) as the JSON a UI needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reactivex import Observable
from reactivex import operators as rx_ops

from rxagent.events import AgentEvent, dumps
from rxagent.state import RunState, ToolCallState
from rxagent.tools import jsonable

__all__ = ["HEARTBEAT", "MEDIA_TYPE", "comment", "data_frame", "frame", "sse_events", "state_json"]

MEDIA_TYPE = "text/event-stream"
#: A comment line: keeps proxies from closing a stream that is idle.
HEARTBEAT = ": keep-alive\n\n"


def frame(index: int, event_type: str, data: str) -> str:
    """One SSE message: ``id:`` the index, ``event:`` the type, ``data:`` one line of JSON."""
    return f"id: {index}\nevent: {event_type}\ndata: {data}\n\n"


def data_frame(data: str, index: int | None = None) -> str:
    """An SSE message of ``data`` alone (the AI SDK and AG-UI streams), with an ``id:``
    when ``index`` is given."""
    if index is None:
        return f"data: {data}\n\n"
    return f"id: {index}\ndata: {data}\n\n"


def comment(text: str) -> str:
    """An SSE comment (clients ignore it)."""
    return "".join(f": {line}\n" for line in text.splitlines() or [""]) + "\n"


def sse_events(start: int = 0) -> Callable[[Observable[AgentEvent]], Observable[str]]:
    """Events as SSE messages, numbered from ``start``::

    source: --RunStarted--StepStarted--TextDelta("Hi")--...--|
    result: --"id: 0\\nevent: run_started\\n..."--"id: 1\\n..."--"id: 2\\n..."--...--|
    """

    def encode(indexed: tuple[int, AgentEvent]) -> str:
        index, event = indexed
        return frame(index, event.type, dumps(event))

    def operator(source: Observable[AgentEvent]) -> Observable[str]:
        return source.pipe(
            rx_ops.map_indexed(lambda event, i: (start + i, event)),
            rx_ops.map(encode),
        )

    return operator


def state_json(state: RunState) -> dict[str, Any]:
    """What a UI needs of a run's state, as JSON data.

    Status, the agent running, step and phase, usage, the text and reasoning of the step under way,
    every tool call (status, arguments, progress, result or error, and a sub-agent's
    run, nested, for a call to one), the calls that
    wait for a decision, the error of a failed run, and ``result``: the final
    :class:`~rxagent.events.AgentRun` once the run has ended (or paused).
    """
    usage = state.usage
    return {
        "status": state.status.value,
        "current_agent": state.agent,  # the running agent's name (a handoff changes it)
        "step": state.step,
        "phase": state.phase.value if state.phase is not None else None,
        "steps": state.steps,
        "events": state.events,
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
        "text": state.text,
        "reasoning": state.reasoning,
        "calls": [_call_json(call) for call in state.calls.values()],
        "pending": [call.model_dump(mode="json") for call in state.pending],
        "stop": state.stop.value if state.stop is not None else None,
        "error": state.error,
        "error_type": state.error_type,
        "started_at": state.started_at,
        "ended_at": state.ended_at,
        "result": state.result.model_dump(mode="json") if state.result is not None else None,
    }


def _call_json(call: ToolCallState) -> dict[str, Any]:
    return {
        "call_id": call.call_id,
        "name": call.name,
        "step": call.step,
        "status": call.status.value,
        "arguments_text": call.arguments_text,
        "arguments": jsonable(call.arguments) if call.arguments is not None else None,
        "awaiting": call.awaiting,
        "reason": call.reason,
        "not_before": call.not_before,
        "started_at": call.started_at,
        "ended_at": call.ended_at,
        "output": jsonable(call.output),
        "error": call.error,
        "progress": call.progress,
        "last_progress": jsonable(call.last_progress),
        # A sub-agent's run (agent.as_tool()), folded from its nested events.
        "nested": state_json(call.nested) if call.nested is not None else None,
    }
