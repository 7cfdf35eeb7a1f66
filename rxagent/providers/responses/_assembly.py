"""Assembly: the Responses API's stream events (parsed JSON) into provider chunks."""

from __future__ import annotations

import logging
from typing import Any

from rxagent._text import clip
from rxagent.events import ReasoningDelta, TextDelta, ToolArgsDelta, UsageDelta
from rxagent.providers.base import Finish, ProviderChunk, ToolCallReady
from rxagent.providers.openai._assembly import Assembly
from rxagent.providers.openai._errors import MalformedStream, StreamInterrupted, stream_error

__all__ = ["DATA_KEY", "ResponsesAssembler"]

log = logging.getLogger("rxagent.providers.responses")

#: The key of the Responses API's data in ``AssistantMessage.provider_data``.
DATA_KEY = "openai.responses"

#: ``incomplete_details.reason`` as a chat-completions finish reason.
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


class _Call:
    __slots__ = ("call_id", "item_id", "name", "parts")

    def __init__(self, call_id: str, item_id: str, name: str) -> None:
        self.call_id = call_id
        self.item_id = item_id
        self.name = name
        self.parts: list[str] = []


class ResponsesAssembler(Assembly):
    """The state of one streamed response: calls being assembled, reasoning items, the end.

    Text (``response.output_text.delta``, and a refusal's) is text; reasoning
    summaries and raw reasoning text are reasoning; a function call's arguments
    stream as ``ToolArgsDelta`` and it is ready (``ToolCallReady``) when its
    output item is done, so its tool may start while later items stream.
    ``response.completed`` (or ``.incomplete``) ends the answer with its usage
    and a ``Finish`` whose ``data`` holds what the next turn must send back: the
    response's id and its reasoning items (with their encrypted content, when
    asked for).
    """

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.response_id: str | None = None
        #: Calls by output item id (and by output index, for servers that omit the id).
        self.calls: dict[Any, _Call] = {}
        self.made = 0
        #: The reasoning items, whole, in output order.
        self.reasoning: list[dict[str, Any]] = []
        #: Items whose text (or reasoning) streamed as deltas.
        self.streamed: set[Any] = set()

    def feed(self, payload: str, event: str = "") -> list[ProviderChunk]:
        """The chunks one event of the stream turns into."""
        self.events += 1
        if not payload:
            return []
        if payload == "[DONE]":  # some servers (OpenRouter) end the stream as chat does
            self.done = True
            return []
        obj = self._parse(payload)
        if type(obj) is not dict:
            raise MalformedStream(
                f"the server sent an event that is not an object: {clip(payload)!r}"
            )
        try:
            out = self._event(obj.get("type") or event, obj)
        except (AttributeError, TypeError, KeyError, ValueError) as error:
            raise MalformedStream(
                f"the server sent an event of the wrong shape ({error}): {clip(payload)!r}"
            ) from None
        if out:
            self.began = True
        return out

    def _event(self, kind: str, obj: dict[str, Any]) -> list[ProviderChunk]:
        step = self.step
        # The most frequent first: these come once a token.
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            self.streamed.add(obj.get("item_id"))
            delta = obj.get("delta")
            return [TextDelta(step=step, text=delta)] if delta else []
        if kind == "response.function_call_arguments.delta":
            call = self._call(obj)
            delta = obj.get("delta")
            if not delta:
                return []
            call.parts.append(delta)
            return [ToolArgsDelta(step=step, call_id=call.call_id, name=call.name, delta=delta)]
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            self.streamed.add(obj.get("item_id"))
            delta = obj.get("delta")
            return [ReasoningDelta(step=step, text=delta)] if delta else []
        if kind == "response.reasoning_summary_part.added":
            if obj.get("summary_index") and obj.get("item_id") in self.streamed:
                return [ReasoningDelta(step=step, text="\n\n")]  # between summary parts
            return []
        if kind == "response.output_item.added":
            return self._added(obj["item"], obj.get("output_index"))
        if kind == "response.function_call_arguments.done":
            call = self._call(obj)
            arguments = obj.get("arguments")
            if call.parts or not arguments:
                return []
            call.parts.append(arguments)  # a server that streamed no deltas
            return [ToolArgsDelta(step=step, call_id=call.call_id, name=call.name, delta=arguments)]
        if kind == "response.output_item.done":
            return self._item_done(obj["item"], obj.get("output_index"))
        if kind in ("response.created", "response.in_progress", "response.queued"):
            self.response_id = obj["response"].get("id") or self.response_id
            return []
        if kind == "response.completed" or kind == "response.incomplete":
            return self._completed(obj["response"], kind == "response.incomplete")
        if kind == "response.failed":
            response = obj.get("response") or {}
            raise stream_error({"error": response.get("error") or {"message": "response failed"}})
        if kind == "error":
            if isinstance(obj.get("error"), dict):
                raise stream_error(obj)
            raise stream_error({"error": {k: v for k, v in obj.items() if k != "type"}})
        return []  # the rest (content parts, annotations, ...) carries nothing new

    def _call(self, obj: dict[str, Any]) -> _Call:
        call = self.calls.get(obj.get("item_id")) or self.calls.get(
            ("index", obj.get("output_index"))
        )
        if call is None:
            raise MalformedStream(
                "the server sent arguments for a function call it did not start: "
                f"{clip(str(obj))!r}"
            )
        return call

    def _added(self, item: dict[str, Any], index: Any) -> list[ProviderChunk]:
        if item.get("type") != "function_call":
            return []
        self.made += 1
        name = item.get("name") or ""
        call = _Call(
            item.get("call_id") or f"call_{self.step}_{self.made}", item.get("id") or "", name
        )
        self.calls[("index", index)] = call
        if call.item_id:
            self.calls[call.item_id] = call
        arguments = item.get("arguments")
        if not arguments:
            return []
        call.parts.append(arguments)  # a call that came whole
        return [ToolArgsDelta(step=self.step, call_id=call.call_id, name=name, delta=arguments)]

    def _item_done(self, item: dict[str, Any], index: Any) -> list[ProviderChunk]:
        kind = item.get("type")
        out: list[ProviderChunk] = []
        if kind == "function_call":
            call = self.calls.get(item.get("id")) or self.calls.get(("index", index))
            if call is None:  # done without added: the call came whole here
                out.extend(self._added(item, index))
                call = self.calls[("index", index)]
            arguments = item.get("arguments") or "".join(call.parts)
            if not call.parts and arguments:
                out.append(
                    ToolArgsDelta(
                        step=self.step, call_id=call.call_id, name=call.name, delta=arguments
                    )
                )
            self.ready_sent = True
            out.append(ToolCallReady(call.call_id, call.name or item.get("name") or "", arguments))
        elif kind == "reasoning":
            self.reasoning.append(item)
            if item.get("id") not in self.streamed:  # nothing streamed: say it now
                text = "\n\n".join(
                    part.get("text") or ""
                    for part in (item.get("summary") or []) + (item.get("content") or [])
                    if isinstance(part, dict)
                )
                if text:
                    out.append(ReasoningDelta(step=self.step, text=text))
        elif kind == "message":
            if item.get("id") not in self.streamed:
                for part in item.get("content") or ():
                    text = part.get("text") or part.get("refusal")
                    if text:
                        out.append(TextDelta(step=self.step, text=text))
        else:
            log.debug("skipping an output item of type %r", kind)
        return out

    def _completed(self, response: dict[str, Any], incomplete: bool) -> list[ProviderChunk]:
        self.done = self.finished = True
        self.response_id = response.get("id") or self.response_id
        out: list[ProviderChunk] = []
        usage = response.get("usage")
        if usage:
            prompt = int(usage.get("input_tokens") or 0)
            completion = int(usage.get("output_tokens") or 0)
            if prompt or completion:
                out.append(
                    UsageDelta(step=self.step, prompt_tokens=prompt, completion_tokens=completion)
                )
        if incomplete:
            details = response.get("incomplete_details") or {}
            reason = str(details.get("reason") or "incomplete")
            reason = _INCOMPLETE.get(reason, reason)
        else:
            reason = "tool_calls" if self.made else "stop"
        out.append(Finish(reason, self._data()))
        return out

    def _data(self) -> dict[str, Any] | None:
        if self.response_id is None and not self.reasoning:
            return None
        data: dict[str, Any] = {"response_id": self.response_id}
        if self.reasoning:
            data["reasoning"] = self.reasoning
        return {DATA_KEY: data}

    def end(self, url: str) -> list[ProviderChunk]:
        """The body ended: fine after ``response.completed``, else the stream broke off."""
        if not self.finished:
            raise StreamInterrupted(
                f"the stream from {url} ended before response.completed "
                f"(after {self.events} event(s))",
                retryable=True,
            )
        return []

    def whole(self, body: bytes, content_type: str, status: int) -> list[ProviderChunk]:
        """The chunks of a response that came as one JSON object, not a stream."""
        obj = self._parse_whole(body, content_type, status)
        try:
            out: list[ProviderChunk] = []
            self.response_id = obj.get("id")
            for index, item in enumerate(obj["output"]):
                out.extend(self._item_done(item, index))
            out.extend(self._completed(obj, obj.get("status") == "incomplete"))
        except (AttributeError, TypeError, KeyError, ValueError) as error:
            raise MalformedStream(
                f"the server answered with JSON that is not a response ({error}): {clip(body)!r}"
            ) from None
        self.began = self.ready_sent = True
        return out
