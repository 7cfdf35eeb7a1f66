"""A run as AG-UI events (built with the ``ag-ui-protocol`` package's types), and
AG-UI's ``RunAgentInput`` as a conversation and decisions.

A run's events map onto AG-UI events so::

    RunStarted        RUN_STARTED (each resumed segment: a new AG-UI run)
    StepStarted       STEP_STARTED ("step-<n>")
    TextDelta         TEXT_MESSAGE_START / TEXT_MESSAGE_CONTENT ... TEXT_MESSAGE_END
    ReasoningDelta    REASONING_START, REASONING_MESSAGE_START / _CONTENT ... _END, REASONING_END
    ToolArgsDelta     TOOL_CALL_START / TOOL_CALL_ARGS
    ToolCallStarted   TOOL_CALL_END (the arguments are complete)
    ToolCallEnded     TOOL_CALL_RESULT (an error or a refusal as its content)
    ToolProgress      CUSTOM "rxagent.tool_progress";  Structured: CUSTOM "rxagent.structured"
    StepCompleted     STEP_FINISHED
    RunCompleted      RUN_FINISHED: outcome success, cancelled, or interrupt (paused)
    RunFailed         RUN_ERROR

A pause is AG-UI's interrupt: ``RUN_FINISHED`` with an ``interrupt`` outcome, one
``Interrupt`` per waiting call, whose ``id`` is ``"<run id>:<call id>"`` and whose
``responseSchema`` says what to answer. The next ``RunAgentInput`` answers with
``resume`` entries (:func:`resume_decisions`): ``status: "resolved"`` with payload
``{"approved": true, "arguments": {...}}`` approves (optionally with edited
arguments), ``{"approved": false, "reason": "..."}`` or ``status: "cancelled"``
rejects.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ag_ui import core as agui
from reactivex import Observable

from rxagent import events as ev
from rxagent.events import AgentEvent
from rxagent.messages import (
    AssistantMessage,
    Conversation,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from rxagent.policies import StopReason
from rxagent.tools import jsonable, output_text
from rxagent.web._encoding import Encoder, encoder_operator, resumed_calls
from rxagent.web.ai_sdk import approval_id, parse_approval_id
from rxagent.web.hub import CallDecision

__all__ = [
    "DECISION_SCHEMA",
    "AGUIEncoder",
    "agui_events",
    "conversation_from_agui",
    "encode",
    "resume_decisions",
    "wire",
]

#: What an interrupt of rxagent expects as the payload of its resume entry.
DECISION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "approved": {"type": "boolean"},
        "arguments": {"type": "object", "description": "edited arguments (approve only)"},
        "reason": {"type": "string", "description": "why (reject only)"},
    },
    "required": ["approved"],
}


def wire(event: agui.BaseEvent) -> str:
    """An AG-UI event as the JSON it goes over the wire as (camelCase, no nulls)."""
    return event.model_dump_json(by_alias=True)


class AGUIEncoder(Encoder[agui.BaseEvent]):
    """Turns a run's events into AG-UI events (``feed``), then ``close``.

    ``thread_id`` and ``run_id`` go into ``RUN_STARTED``/``RUN_FINISHED`` (a resumed
    segment of the same log gets ``"<run_id>.<n>"``); ``rxagent_run_id`` (default:
    ``run_id``) names the hub's run in interrupt ids. ``start`` is the index of the
    first event fed. Like :class:`~rxagent.web.ai_sdk.UIMessageEncoder`, feeding a
    log's first events and dropping their output, then the rest, gives the rest of
    the output of the whole log.
    """

    def __init__(
        self,
        *,
        thread_id: str,
        run_id: str,
        rxagent_run_id: str | None = None,
        start: int = 0,
    ) -> None:
        super().__init__(start)
        self.thread_id = thread_id
        self.run_id = run_id
        self.rxagent_run_id = rxagent_run_id or run_id
        self._segments = 0
        self._open = False
        self._resumed: set[str] = set()
        self._text: str | None = None
        self._reasoning: str | None = None
        self._step: str | None = None
        self._calls: dict[str, str] = {}  # call id -> "started" | "ended"
        self._input_tokens = 0
        self._output_tokens = 0

    @property
    def segment_run_id(self) -> str:
        """The AG-UI run id of the segment under way."""
        return self.run_id if self._segments <= 1 else f"{self.run_id}.{self._segments - 1}"

    def close(self) -> list[agui.BaseEvent]:
        """What ends the stream: nothing after a run's end, else ``RUN_ERROR``."""
        if not self._open:
            return []
        out: list[agui.BaseEvent] = []
        self._close_parts(out)
        self._open = False
        out.append(agui.RunErrorEvent(message="the run's events ended before the run did"))
        return out

    # -- parts -------------------------------------------------------------------------
    def _close_text(self, out: list[agui.BaseEvent]) -> None:
        if self._text is not None:
            out.append(agui.TextMessageEndEvent(message_id=self._text))
            self._text = None

    def _close_reasoning(self, out: list[agui.BaseEvent]) -> None:
        if self._reasoning is not None:
            out.append(agui.ReasoningMessageEndEvent(message_id=self._reasoning))
            out.append(agui.ReasoningEndEvent(message_id=self._reasoning))
            self._reasoning = None

    def _close_parts(self, out: list[agui.BaseEvent]) -> None:
        self._close_reasoning(out)
        self._close_text(out)

    def _start_call(self, call_id: str, name: str, out: list[agui.BaseEvent]) -> bool:
        """TOOL_CALL_START unless the call was started (or the client has it); whether sent."""
        if call_id in self._calls or call_id in self._resumed:
            return False
        self._close_parts(out)
        self._calls[call_id] = "started"
        out.append(agui.ToolCallStartEvent(tool_call_id=call_id, tool_call_name=name))
        return True

    def _end_call(self, call_id: str, out: list[agui.BaseEvent]) -> None:
        if self._calls.get(call_id) == "started":
            self._calls[call_id] = "ended"
            out.append(agui.ToolCallEndEvent(tool_call_id=call_id))

    def _whole_call(
        self, call_id: str, name: str, arguments: Any, out: list[agui.BaseEvent]
    ) -> None:
        if self._start_call(call_id, name, out):
            delta = json.dumps(jsonable(arguments))
            out.append(agui.ToolCallArgsEvent(tool_call_id=call_id, delta=delta))
        self._end_call(call_id, out)

    def _custom(self, name: str, value: Any, out: list[agui.BaseEvent]) -> None:
        out.append(agui.CustomEvent(name=f"rxagent.{name}", value=jsonable(value)))

    # -- event handlers ----------------------------------------------------------------
    def _on_run_started(self, event: ev.RunStarted, out: list[agui.BaseEvent]) -> None:
        self._segments += 1
        self._open = True
        self._calls = {}
        self._resumed = set(resumed_calls(event))
        out.append(agui.RunStartedEvent(thread_id=self.thread_id, run_id=self.segment_run_id))

    def _on_step_started(self, event: ev.StepStarted, out: list[agui.BaseEvent]) -> None:
        self._step = f"step-{event.step}"
        out.append(agui.StepStartedEvent(step_name=self._step))

    def _on_text_delta(self, event: ev.TextDelta, out: list[agui.BaseEvent]) -> None:
        if not event.text:
            return
        self._close_reasoning(out)
        if self._text is None:
            self._text = f"msg-{self.rxagent_run_id}-{self._index}"
            out.append(agui.TextMessageStartEvent(message_id=self._text, role="assistant"))
        out.append(agui.TextMessageContentEvent(message_id=self._text, delta=event.text))

    def _on_reasoning_delta(self, event: ev.ReasoningDelta, out: list[agui.BaseEvent]) -> None:
        if not event.text:
            return
        self._close_text(out)
        if self._reasoning is None:
            self._reasoning = f"reasoning-{self.rxagent_run_id}-{self._index}"
            out.append(agui.ReasoningStartEvent(message_id=self._reasoning))
            out.append(agui.ReasoningMessageStartEvent(message_id=self._reasoning))
        out.append(agui.ReasoningMessageContentEvent(message_id=self._reasoning, delta=event.text))

    def _on_tool_args_delta(self, event: ev.ToolArgsDelta, out: list[agui.BaseEvent]) -> None:
        self._start_call(event.call_id, event.name, out)
        if event.delta and self._calls.get(event.call_id) == "started":
            out.append(agui.ToolCallArgsEvent(tool_call_id=event.call_id, delta=event.delta))

    def _on_tool_call_started(self, event: ev.ToolCallStarted, out: list[agui.BaseEvent]) -> None:
        self._whole_call(event.call_id, event.name, event.arguments, out)

    def _on_tool_call_pending(self, event: ev.ToolCallPending, out: list[agui.BaseEvent]) -> None:
        self._whole_call(event.call_id, event.name, event.arguments, out)

    def _on_tool_progress(self, event: ev.ToolProgress, out: list[agui.BaseEvent]) -> None:
        self._custom("tool_progress", {"toolCallId": event.call_id, "data": event.data}, out)

    def _on_tool_call_ended(self, event: ev.ToolCallEnded, out: list[agui.BaseEvent]) -> None:
        if self._start_call(event.call_id, event.name, out):
            out.append(agui.ToolCallArgsEvent(tool_call_id=event.call_id, delta="{}"))
        self._end_call(event.call_id, out)
        content = output_text(event.output) if event.error is None else event.error
        out.append(
            agui.ToolCallResultEvent(
                message_id=f"result-{event.call_id}",
                tool_call_id=event.call_id,
                content=content,
                role="tool",
            )
        )

    def _on_usage_delta(self, event: ev.UsageDelta, out: list[agui.BaseEvent]) -> None:
        self._input_tokens += event.prompt_tokens
        self._output_tokens += event.completion_tokens

    def _on_structured(self, event: ev.Structured, out: list[agui.BaseEvent]) -> None:
        self._custom("structured", {"value": event.value, "partial": event.partial}, out)

    def _on_step_retry(self, event: ev.StepRetry, out: list[agui.BaseEvent]) -> None:
        self._close_parts(out)
        self._custom("step_retry", {"attempt": event.attempt, "error": event.error}, out)

    def _on_run_resumed(self, event: ev.RunResumed, out: list[agui.BaseEvent]) -> None:
        # Another worker goes on after a crash (rxagent.redis): the step under way is void.
        self._close_parts(out)
        self._custom("run_resumed", {"step": event.step, "worker": event.worker}, out)

    def _on_output_retry(self, event: ev.OutputRetry, out: list[agui.BaseEvent]) -> None:
        self._close_parts(out)
        self._custom("output_retry", {"attempt": event.attempt, "errors": event.errors}, out)

    def _on_step_completed(self, event: ev.StepCompleted, out: list[agui.BaseEvent]) -> None:
        self._close_parts(out)
        out.append(agui.StepFinishedEvent(step_name=f"step-{event.step}"))

    def _usage_list(self) -> list[agui.TokenUsage]:
        return [
            agui.TokenUsage(
                input_tokens=self._input_tokens,
                output_tokens=self._output_tokens,
                total_tokens=self._input_tokens + self._output_tokens,
            )
        ]

    def _on_run_completed(self, event: ev.RunCompleted, out: list[agui.BaseEvent]) -> None:
        self._close_parts(out)
        self._open = False
        run = event.run
        outcome: agui.RunFinishedOutcome
        if run.stop is StopReason.PAUSED and run.pending:
            outcome = agui.RunFinishedInterruptOutcome(
                interrupts=[
                    agui.Interrupt(
                        id=approval_id(self.rxagent_run_id, call.id),
                        reason="tool_approval" if call.not_before is None else "tool_schedule",
                        message=call.reason,
                        tool_call_id=call.id,
                        response_schema=DECISION_SCHEMA,
                    )
                    for call in run.pending
                ]
            )
        elif run.stop is StopReason.CANCELLED:
            outcome = agui.RunFinishedCancelledOutcome()
        else:
            outcome = agui.RunFinishedSuccessOutcome()
        out.append(
            agui.RunFinishedEvent(
                thread_id=self.thread_id,
                run_id=self.segment_run_id,
                outcome=outcome,
                result={"text": run.text, "stop": run.stop.value, "output": jsonable(run.output)},
                usage=self._usage_list(),
            )
        )

    def _on_run_failed(self, event: ev.RunFailed, out: list[agui.BaseEvent]) -> None:
        self._close_parts(out)
        self._open = False
        out.append(
            agui.RunErrorEvent(
                message=event.message, code=event.error_type, usage=self._usage_list()
            )
        )


def encode(events: Iterable[AgentEvent], *, thread_id: str, run_id: str) -> list[agui.BaseEvent]:
    """Every AG-UI event of a stream of ``events``."""
    encoder = AGUIEncoder(thread_id=thread_id, run_id=run_id)
    out = [item for event in events for item in encoder.feed(event)]
    return out + encoder.close()


def agui_events(
    *, thread_id: str, run_id: str
) -> Callable[[Observable[AgentEvent]], Observable[agui.BaseEvent]]:
    """A run's events as AG-UI events::

        source: --RunStarted--StepStarted--TextDelta("Hi")--StepCompleted--RunCompleted--|
        result: --RUN_STARTED--STEP_STARTED--TEXT_MESSAGE_START,_CONTENT--..--RUN_FINISHED--|

    Send each with :func:`wire` as an SSE ``data:`` line.
    """
    return encoder_operator(lambda: AGUIEncoder(thread_id=thread_id, run_id=run_id))


# -- RunAgentInput -----------------------------------------------------------------------
def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(str(getattr(p, "text", "") or "") for p in content)
    return "" if content is None else str(content)


def conversation_from_agui(messages: Sequence[agui.Message]) -> Conversation:
    """The conversation AG-UI messages stand for (reasoning and activity messages are
    left out; developer messages count as system messages)."""
    out: list[Message] = []
    for message in messages:
        root = getattr(message, "root", message)
        if isinstance(root, agui.SystemMessage | agui.DeveloperMessage):
            out.append(SystemMessage(content=_content_text(root.content)))
        elif isinstance(root, agui.UserMessage):
            out.append(UserMessage(content=_content_text(root.content)))
        elif isinstance(root, agui.AssistantMessage):
            calls = tuple(
                ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments or "{}")
                for c in root.tool_calls or ()
            )
            text = _content_text(root.content)
            out.append(AssistantMessage(content=text or None, tool_calls=calls))
        elif isinstance(root, agui.ToolMessage):
            text = _content_text(root.content)
            error = root.error
            out.append(
                ToolMessage(
                    tool_call_id=root.tool_call_id,
                    content=f"Error: {error}" if error and not text else text,
                    is_error=bool(error),
                )
            )
    return Conversation(out)


def resume_decisions(
    entries: Sequence[agui.ResumeEntry],
) -> tuple[str | None, list[CallDecision]]:
    """The run id and the decisions that AG-UI resume entries give (see the module doc)."""
    run_ids: set[str | None] = set()
    decisions: list[CallDecision] = []
    for entry in entries:
        run_id, call_id = parse_approval_id(entry.interrupt_id)
        run_ids.add(run_id)
        payload = entry.payload
        if entry.status == "cancelled":
            decisions.append(
                CallDecision(call_id, "reject", reason="The user cancelled this call.")
            )
            continue
        if isinstance(payload, bool):
            payload = {"approved": payload}
        if not isinstance(payload, dict) or not isinstance(payload.get("approved"), bool):
            raise ValueError(
                f"the resume entry for {entry.interrupt_id!r} needs a payload "
                '{"approved": true|false, "arguments"?: {...}, "reason"?: "..."}'
            )
        if payload["approved"]:
            arguments = payload.get("arguments")
            if arguments is not None and not isinstance(arguments, dict):
                raise ValueError(f"the edited arguments for {call_id!r} must be an object")
            decisions.append(CallDecision(call_id, "approve", arguments=arguments))
        else:
            decisions.append(CallDecision(call_id, "reject", reason=payload.get("reason")))
    if len(run_ids) != 1:
        raise ValueError("the resume entries must answer the interrupts of one run")
    return run_ids.pop(), decisions
