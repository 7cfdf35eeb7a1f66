"""A run as the AI SDK's UI message stream (what the ``ai`` npm package's ``useChat``
and ``readUIMessageStream`` read), and ``useChat``'s messages as a conversation.

The stream is server-sent events, each ``data:`` one JSON chunk, ended by
``data: [DONE]``, with the header ``x-vercel-ai-ui-message-stream: v1``
(:data:`HEADERS`). A run's events map onto chunks so::

    RunStarted            start (messageMetadata.runId)
    StepStarted           start-step    (a resumed step: when its model turn begins)
    TextDelta             text-start / text-delta ... text-end
    ReasoningDelta        reasoning-start / reasoning-delta ... reasoning-end
    ToolArgsDelta         tool-input-start / tool-input-delta
    ToolCallStarted       tool-input-available
    ToolCallPending       tool-input-available, tool-approval-request (AI SDK 6+)
    ToolProgress          data-tool-progress (id: the call id, so it updates in place)
    ToolCallEnded         tool-output-available | tool-output-error | tool-output-denied
    Structured            data-structured;  StepRetry: data-step-retry
    RunResumed            data-run-resumed (a crashed worker's run goes on elsewhere)
    StepCompleted         finish-step
    RunCompleted          (cancelled: abort); at the end of the stream: finish
    RunFailed             error; at the end of the stream: finish (finishReason "error")

A pause ends the stream's turn: calls waiting for approval carry a
``tool-approval-request`` whose ``approvalId`` is ``"<run id>:<call id>"``, so a
stock ``useChat`` approval UI (``addToolApprovalResponse``) answers rxagent's
calls; :func:`approval_decisions` reads the answers from the messages ``useChat``
posts next. A call the user rejected ends ``tool-output-denied``; one an approval
strategy refused ends ``tool-output-error``. Pass ``approvals=False`` for AI SDK 5,
which has no approval chunks: a waiting call then comes as ``data-tool-approval``.

:class:`UIMessageEncoder` turns events into chunks one at a time (stateful: a
stream's chunks depend on what came before), :func:`ui_message_chunks` is the
operator, :func:`encode` the function over a whole list.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reactivex import Observable

from rxagent import events as ev
from rxagent.events import AgentEvent
from rxagent.messages import (
    AssistantMessage,
    Conversation,
    Message,
    SystemMessage,
    ToolCall,
    ToolCallStatus,
    ToolMessage,
    UserMessage,
)
from rxagent.policies import StopReason
from rxagent.tools import jsonable, output_text
from rxagent.web._encoding import Encoder, encoder_operator, resumed_calls
from rxagent.web.hub import CallDecision

__all__ = [
    "DONE",
    "HEADERS",
    "UIMessageEncoder",
    "approval_decisions",
    "approval_id",
    "conversation_from_ui_messages",
    "encode",
    "parse_approval_id",
    "ui_message_chunks",
]

#: The response headers of a UI message stream.
HEADERS = {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    "x-vercel-ai-ui-message-stream": "v1",
    "x-accel-buffering": "no",
}
#: The last message of a UI message stream.
DONE = "data: [DONE]\n\n"

Chunk = dict[str, Any]

_FINISH_REASONS = {
    StopReason.NO_TOOL_CALLS: "stop",
    StopReason.PAUSED: "tool-calls",
    StopReason.TOKEN_BUDGET: "length",
    StopReason.ERROR: "error",
}


def approval_id(run_id: str | None, call_id: str) -> str:
    """The AI SDK approval id of a call of a run: ``"<run id>:<call id>"``."""
    return f"{run_id}:{call_id}" if run_id else call_id


def parse_approval_id(value: str) -> tuple[str | None, str]:
    """``(run id, call id)`` of an approval id (``(None, id)`` when it names no run)."""
    run_id, sep, call_id = value.partition(":")
    return (run_id, call_id) if sep else (None, value)


@dataclass
class _Call:
    name: str
    args: str = ""
    announced: bool = False  # tool-input-start sent
    input_sent: bool = False  # tool-input-available (or tool-input-error) sent
    asked: bool = False  # tool-approval-request sent
    decided: ToolCallStatus | None = None  # a human's decision, read from RunStarted


@dataclass
class _Segment:
    """What the encoder knows of the segment under way (a run, or a resume of it)."""

    #: The calls of the open turn the segment resumes, by id: the client has them.
    resumed: dict[str, ToolCall] = field(default_factory=dict)
    #: The first step of a resumed segment opens its UI step only with its model turn.
    deferred: bool = False


class UIMessageEncoder(Encoder[Chunk]):
    """Turns a run's events into UI message stream chunks (``feed``), then ``close``.

    ``run_id`` goes into the message metadata and the approval ids. ``start`` is
    the index of the first event fed (chunk ids are made from event indices).
    Feeding the first events of a log and dropping their chunks, then feeding the
    rest, gives exactly the rest of the chunks the whole log gives: that is how a
    stream resumes after an index.
    """

    def __init__(
        self, *, run_id: str | None = None, approvals: bool = True, start: int = 0
    ) -> None:
        super().__init__(start)
        self.run_id = run_id
        self.approvals = approvals
        self._started = False
        self._step_open = False
        self._segment = _Segment()
        self._text: str | None = None
        self._reasoning: str | None = None
        self._calls: dict[str, _Call] = {}
        self._input_tokens = 0
        self._output_tokens = 0
        self._stop: StopReason | None = None
        self._failed = False

    def _before(self, event: AgentEvent, out: list[Chunk]) -> None:
        if not self._started:
            self._started = True
            start: Chunk = {"type": "start"}
            if self.run_id is not None:
                start["messageMetadata"] = {"runId": self.run_id}
            out.append(start)

    def close(self) -> list[Chunk]:
        """The chunks that end the stream (``finish``); ``DONE`` follows them on the wire."""
        out: list[Chunk] = []
        if not self._started:
            self._started = True
            out.append({"type": "start"})
        self._close_parts(out)
        self._end_step(out)
        reason = "error" if self._failed else _FINISH_REASONS.get(self._stop, "other")  # type: ignore[arg-type]
        metadata: dict[str, Any] = {
            "usage": {
                "inputTokens": self._input_tokens,
                "outputTokens": self._output_tokens,
                "totalTokens": self._input_tokens + self._output_tokens,
            },
            "stop": self._stop.value if self._stop is not None else None,
        }
        if self.run_id is not None:
            metadata["runId"] = self.run_id
        out.append({"type": "finish", "finishReason": reason, "messageMetadata": metadata})
        return out

    # -- parts -------------------------------------------------------------------------
    def _open_step(self, out: list[Chunk]) -> None:
        if self._segment.deferred:
            self._segment.deferred = False
            self._step_open = True
            out.append({"type": "start-step"})

    def _end_step(self, out: list[Chunk]) -> None:
        self._segment.deferred = False
        if self._step_open:
            self._step_open = False
            out.append({"type": "finish-step"})

    def _close_text(self, out: list[Chunk]) -> None:
        if self._text is not None:
            out.append({"type": "text-end", "id": self._text})
            self._text = None

    def _close_reasoning(self, out: list[Chunk]) -> None:
        if self._reasoning is not None:
            out.append({"type": "reasoning-end", "id": self._reasoning})
            self._reasoning = None

    def _close_parts(self, out: list[Chunk]) -> None:
        self._close_reasoning(out)
        self._close_text(out)

    def _call(self, call_id: str, name: str) -> _Call:
        call = self._calls.get(call_id)
        if call is None:
            call = self._calls[call_id] = _Call(name)
        return call

    def _announce(self, call_id: str, call: _Call, out: list[Chunk]) -> None:
        if not call.announced:
            call.announced = True
            out.append({"type": "tool-input-start", "toolCallId": call_id, "toolName": call.name})

    def _input(self, call_id: str, call: _Call, arguments: Any, out: list[Chunk]) -> None:
        """``tool-input-available`` once per call (the client has a resumed call already)."""
        if call.input_sent or call_id in self._segment.resumed:
            return
        self._open_step(out)
        self._close_parts(out)
        self._announce(call_id, call, out)
        call.input_sent = True
        out.append(
            {
                "type": "tool-input-available",
                "toolCallId": call_id,
                "toolName": call.name,
                "input": jsonable(arguments),
            }
        )

    # -- event handlers ----------------------------------------------------------------
    def _on_run_started(self, event: ev.RunStarted, out: list[Chunk]) -> None:
        self._segment = _Segment(resumed_calls(event))
        for call in self._segment.resumed.values():
            self._call(call.id, call.name).decided = call.status

    def _on_step_started(self, event: ev.StepStarted, out: list[Chunk]) -> None:
        self._close_parts(out)
        self._end_step(out)
        if self._segment.resumed and event.step == 1:
            self._segment.deferred = True  # the approved calls' outputs join their step
        else:
            self._step_open = True
            out.append({"type": "start-step"})

    def _on_text_delta(self, event: ev.TextDelta, out: list[Chunk]) -> None:
        if not event.text:
            return
        self._open_step(out)
        self._close_reasoning(out)
        if self._text is None:
            self._text = f"text-{self._index}"
            out.append({"type": "text-start", "id": self._text})
        out.append({"type": "text-delta", "id": self._text, "delta": event.text})

    def _on_reasoning_delta(self, event: ev.ReasoningDelta, out: list[Chunk]) -> None:
        if not event.text:
            return
        self._open_step(out)
        self._close_text(out)
        if self._reasoning is None:
            self._reasoning = f"reasoning-{self._index}"
            out.append({"type": "reasoning-start", "id": self._reasoning})
        out.append({"type": "reasoning-delta", "id": self._reasoning, "delta": event.text})

    def _on_tool_args_delta(self, event: ev.ToolArgsDelta, out: list[Chunk]) -> None:
        self._open_step(out)
        self._close_parts(out)
        call = self._call(event.call_id, event.name)
        call.args += event.delta
        self._announce(event.call_id, call, out)
        if event.delta:
            out.append(
                {
                    "type": "tool-input-delta",
                    "toolCallId": event.call_id,
                    "inputTextDelta": event.delta,
                }
            )

    def _on_tool_call_started(self, event: ev.ToolCallStarted, out: list[Chunk]) -> None:
        self._input(event.call_id, self._call(event.call_id, event.name), event.arguments, out)

    def _on_tool_call_pending(self, event: ev.ToolCallPending, out: list[Chunk]) -> None:
        call = self._call(event.call_id, event.name)
        self._input(event.call_id, call, event.arguments, out)
        if event.awaiting != "approval":
            return
        call.asked = True
        ident = approval_id(self.run_id, event.call_id)
        if self.approvals:
            out.append(
                {"type": "tool-approval-request", "approvalId": ident, "toolCallId": event.call_id}
            )
        else:
            out.append(
                {
                    "type": "data-tool-approval",
                    "id": event.call_id,
                    "data": {
                        "toolCallId": event.call_id,
                        "approvalId": ident,
                        "reason": event.reason,
                    },
                }
            )

    def _on_tool_progress(self, event: ev.ToolProgress, out: list[Chunk]) -> None:
        out.append(
            {
                "type": "data-tool-progress",
                "id": event.call_id,
                "data": {"toolCallId": event.call_id, "data": jsonable(event.data)},
            }
        )

    def _on_tool_call_ended(self, event: ev.ToolCallEnded, out: list[Chunk]) -> None:
        call = self._call(event.call_id, event.name)
        if not call.input_sent and event.call_id not in self._segment.resumed:
            try:
                arguments = json.loads(call.args) if call.args.strip() else {}
            except ValueError:
                arguments = None
            if not isinstance(arguments, dict):
                # Arguments that never parsed: the call fails at its input.
                self._open_step(out)
                self._announce(event.call_id, call, out)
                call.input_sent = True
                out.append(
                    {
                        "type": "tool-input-error",
                        "toolCallId": event.call_id,
                        "toolName": call.name,
                        "input": call.args,
                        "errorText": event.error or "the arguments are not a JSON object",
                    }
                )
                return
            self._input(event.call_id, call, arguments, out)
        if event.status is ToolCallStatus.COMPLETED:
            out.append(
                {
                    "type": "tool-output-available",
                    "toolCallId": event.call_id,
                    "output": jsonable(event.output),
                }
            )
        elif (
            event.status is ToolCallStatus.REJECTED
            and self.approvals
            and (call.asked or call.decided is ToolCallStatus.REJECTED)
        ):
            out.append({"type": "tool-output-denied", "toolCallId": event.call_id})
        else:
            text = event.error or f"the call was {event.status.value}"
            out.append(
                {"type": "tool-output-error", "toolCallId": event.call_id, "errorText": text}
            )

    def _on_usage_delta(self, event: ev.UsageDelta, out: list[Chunk]) -> None:
        self._input_tokens += event.prompt_tokens
        self._output_tokens += event.completion_tokens

    def _on_structured(self, event: ev.Structured, out: list[Chunk]) -> None:
        self._open_step(out)
        out.append(
            {
                "type": "data-structured",
                "id": f"structured-{event.step}",
                "data": {"value": jsonable(event.value), "partial": event.partial},
            }
        )

    def _on_step_retry(self, event: ev.StepRetry, out: list[Chunk]) -> None:
        self._close_parts(out)
        out.append(
            {"type": "data-step-retry", "data": {"attempt": event.attempt, "error": event.error}}
        )

    def _on_run_resumed(self, event: ev.RunResumed, out: list[Chunk]) -> None:
        # Another worker goes on after a crash (rxagent.redis): as for a retried step, the
        # step under way is void; a UI drops its partial text.
        self._close_parts(out)
        out.append(
            {"type": "data-run-resumed", "data": {"step": event.step, "worker": event.worker}}
        )

    def _on_output_retry(self, event: ev.OutputRetry, out: list[Chunk]) -> None:
        self._close_parts(out)
        out.append(
            {
                "type": "data-output-retry",
                "data": {"attempt": event.attempt, "errors": event.errors},
            }
        )

    def _on_step_completed(self, event: ev.StepCompleted, out: list[Chunk]) -> None:
        self._close_parts(out)
        self._end_step(out)

    def _on_run_completed(self, event: ev.RunCompleted, out: list[Chunk]) -> None:
        self._close_parts(out)
        self._end_step(out)
        self._stop = event.run.stop
        self._failed = False
        if event.run.stop is StopReason.CANCELLED:
            out.append({"type": "abort"})

    def _on_run_failed(self, event: ev.RunFailed, out: list[Chunk]) -> None:
        self._close_parts(out)
        self._end_step(out)
        self._failed = True
        self._stop = StopReason.ERROR
        out.append({"type": "error", "errorText": f"{event.error_type}: {event.message}"})


def encode(
    events: Iterable[AgentEvent], *, run_id: str | None = None, approvals: bool = True
) -> list[Chunk]:
    """Every chunk of a stream of ``events``, ``finish`` included (not ``[DONE]``)."""
    encoder = UIMessageEncoder(run_id=run_id, approvals=approvals)
    out = [chunk for event in events for chunk in encoder.feed(event)]
    return out + encoder.close()


def ui_message_chunks(
    *, run_id: str | None = None, approvals: bool = True
) -> Callable[[Observable[AgentEvent]], Observable[Chunk]]:
    """A run's events as UI message stream chunks::

        source: --RunStarted--StepStarted--TextDelta("Hi")--StepCompleted--RunCompleted--|
        result: --start--start-step--text-start,text-delta--text-end,finish-step----finish--|

    Serialize each chunk with ``json.dumps`` into ``data:`` lines and end with
    :data:`DONE`.
    """
    return encoder_operator(lambda: UIMessageEncoder(run_id=run_id, approvals=approvals))


# -- useChat's messages ----------------------------------------------------------------
def _is_tool_part(part: Mapping[str, Any]) -> bool:
    kind = str(part.get("type", ""))
    return kind == "dynamic-tool" or kind.startswith("tool-")


def _tool_name(part: Mapping[str, Any]) -> str:
    kind = str(part.get("type", ""))
    return str(part.get("toolName", "")) if kind == "dynamic-tool" else kind[len("tool-") :]


def _text(parts: Iterable[Mapping[str, Any]]) -> str:
    return "".join(str(p.get("text", "")) for p in parts if p.get("type") == "text")


def _steps(parts: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    steps: list[list[Mapping[str, Any]]] = [[]]
    for part in parts:
        if part.get("type") == "step-start":
            if steps[-1]:
                steps.append([])
        else:
            steps[-1].append(part)
    return [s for s in steps if s]


def conversation_from_ui_messages(messages: Sequence[Mapping[str, Any]]) -> Conversation:
    """The conversation ``useChat``'s messages (UIMessage objects) stand for.

    System and user messages keep their text parts (files are left out). Each step
    of an assistant message (parts between ``step-start`` parts) becomes an
    assistant message with its text and tool calls, then one tool message per call:
    the output, the error, or the refusal. A call that never ended (no output,
    awaiting a decision) is answered as cancelled, so the conversation stays valid.
    Reasoning and data parts are not sent back to the model.
    """
    out: list[Message] = []
    for ui in messages:
        role = ui.get("role")
        parts = [p for p in ui.get("parts") or () if isinstance(p, Mapping)]
        if role == "system":
            out.append(SystemMessage(content=_text(parts)))
        elif role == "user":
            out.append(UserMessage(content=_text(parts)))
        elif role == "assistant":
            for step in _steps(parts):
                out.extend(_assistant_step(step))
        else:
            raise ValueError(f"unsupported UIMessage role {role!r}")
    return Conversation(out)


def _assistant_step(parts: Sequence[Mapping[str, Any]]) -> list[Message]:
    calls: list[ToolCall] = []
    answers: list[ToolMessage] = []
    for part in parts:
        if not _is_tool_part(part):
            continue
        call_id = str(part.get("toolCallId", ""))
        state = part.get("state")
        arguments = json.dumps(jsonable(part.get("input") or {}))
        approval = part.get("approval") or {}
        if state == "output-available":
            status = ToolCallStatus.COMPLETED
            answer = ToolMessage(tool_call_id=call_id, content=output_text(part.get("output")))
        elif state == "output-error":
            status = ToolCallStatus.FAILED
            content = f"Error: {part.get('errorText', '')}"
            answer = ToolMessage(tool_call_id=call_id, content=content, is_error=True)
        elif state == "output-denied":
            status = ToolCallStatus.REJECTED
            reason = approval.get("reason") or "the call was not approved."
            answer = ToolMessage(tool_call_id=call_id, content=f"Rejected: {reason}", is_error=True)
        else:
            status = ToolCallStatus.CANCELLED
            answer = ToolMessage(
                tool_call_id=call_id,
                content="Cancelled: the call was stopped before it finished.",
                is_error=True,
            )
        calls.append(
            ToolCall(id=call_id, name=_tool_name(part), arguments=arguments, status=status)
        )
        answers.append(answer)
    text = _text(parts)
    if not text and not calls:
        return []
    return [AssistantMessage(content=text or None, tool_calls=tuple(calls)), *answers]


def approval_decisions(
    messages: Sequence[Mapping[str, Any]],
) -> tuple[str | None, list[CallDecision]] | None:
    """The run id and the decisions in ``useChat``'s last message, when it answers
    approval requests (parts in state ``approval-responded``); ``None`` when it does not.
    """
    if not messages or messages[-1].get("role") != "assistant":
        return None
    parts = [p for p in messages[-1].get("parts") or () if isinstance(p, Mapping)]
    steps = _steps(parts)
    run_ids: set[str | None] = set()
    decisions: list[CallDecision] = []
    for part in steps[-1] if steps else ():
        if not _is_tool_part(part) or part.get("state") != "approval-responded":
            continue
        approval = part.get("approval") or {}
        run_id, call_id = parse_approval_id(str(approval.get("id", "")))
        run_ids.add(run_id)
        call_id = str(part.get("toolCallId") or call_id)
        if approval.get("approved"):
            decisions.append(CallDecision(call_id, "approve"))
        else:
            decisions.append(CallDecision(call_id, "reject", reason=approval.get("reason")))
    if not decisions:
        return None
    if len(run_ids) != 1:
        raise ValueError("the approval responses belong to different runs")
    return run_ids.pop(), decisions
