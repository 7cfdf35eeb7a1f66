"""Chunk assembly: chat-completion chunks (parsed JSON) into provider chunks."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from pydantic_core import from_json

from rxagent._text import clip
from rxagent.events import ReasoningDelta, TextDelta, ToolArgsDelta, UsageDelta
from rxagent.providers.base import Finish, ProviderChunk, ToolCallReady
from rxagent.providers.openai._errors import MalformedStream, StreamInterrupted, stream_error

__all__ = ["Assembly", "ChunkAssembler", "content_parts", "whole_json"]

log = logging.getLogger("rxagent.providers.openai")


class _OpenCall:
    __slots__ = ("call_id", "given_id", "index", "name", "parts")

    def __init__(self, index: int, call_id: str, given_id: bool, name: str) -> None:
        self.index = index
        self.call_id = call_id
        self.given_id = given_id
        self.name = name
        self.parts: list[str] = []


class Assembly:
    """What every assembler of an answer keeps, and how it reads JSON.

    The attributes are those :class:`~rxagent.providers.openai._provider.StreamingProvider`
    reads to know where the answer is (see its ``Assembler`` protocol).
    """

    def __init__(self, step: int) -> None:
        self.step = step
        #: Whether any output (text, reasoning, arguments, usage) was emitted.
        self.began = False
        #: Whether a ToolCallReady was emitted (then the turn must never be retried).
        self.ready_sent = False
        self.events = 0
        #: Whether the stream's end marker came: nothing after it is read.
        self.done = False
        #: Whether the answer is complete.
        self.finished = False

    @staticmethod
    def _parse(payload: str) -> Any:
        """An event's data, parsed (an error that shows it when it is not JSON)."""
        try:
            return from_json(payload)
        except ValueError as error:
            raise MalformedStream(
                f"the server sent a data line that is not JSON ({error}): {clip(payload)!r}"
            ) from None

    @staticmethod
    def _parse_whole(body: bytes, content_type: str, status: int) -> Any:
        """A whole (not streamed) answer, parsed; one that is an error object raises it."""
        try:
            obj = from_json(body)
        except ValueError:
            raise MalformedStream(
                f"the server answered {status} with {content_type or 'no content type'} "
                f"instead of an event stream: {clip(body)!r}"
            ) from None
        if type(obj) is dict and obj.get("error"):
            raise stream_error(obj)
        return obj


class ChunkAssembler(Assembly):
    """The state of one streamed answer: the tool call being assembled, usage seen, the end.

    Tool calls arrive as fragments in many shapes. OpenAI numbers them
    (``index``) and names a call and gives its id in its first fragment only;
    Gemini sends whole calls with empty ids and no index, several in one
    delta; Ollama and SGLang send whole calls that all have ``index`` 0 and
    ids of their own. So a fragment starts a new call when it has a new id,
    another index, or a function name of its own (unless it only repeats the
    name of the call still streaming, whose arguments are not yet whole);
    anything else continues the current call.
    """

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.current: _OpenCall | None = None
        #: The id of each index's completed call.
        self.completed: dict[int, str] = {}
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def feed(self, payload: str, event: str = "") -> list[ProviderChunk]:
        """The chunks one SSE event (its data) turns into."""
        self.events += 1
        if not payload:
            return []  # an event with no data: nothing to dispatch (as in the SSE spec)
        if payload == "[DONE]":
            self.done = True
            out: list[ProviderChunk] = []
            self._complete_call(out)
            return out
        obj = self._parse(payload)
        if event == "error" or (type(obj) is dict and obj.get("error")):
            raise stream_error(obj)
        if type(obj) is not dict:
            raise MalformedStream(
                f"the server sent a chunk that is not an object: {clip(payload)!r}"
            )
        try:
            out = self._chunk(obj)
        except (AttributeError, TypeError, KeyError, ValueError) as error:
            raise MalformedStream(
                f"the server sent a chunk of the wrong shape ({error}): {clip(payload)!r}"
            ) from None
        if out:
            self.began = True
        return out

    def _chunk(self, obj: dict[str, Any]) -> list[ProviderChunk]:
        out: list[ProviderChunk] = []
        step = self.step
        choices = obj.get("choices")
        if choices:
            if type(choices) is not list:
                raise TypeError("choices is not a list")
            for choice in choices:
                if choice.get("index", 0):
                    continue  # n > 1: the first choice is the answer
                delta = choice.get("delta")
                if delta:
                    content = delta.get("content")
                    if content:
                        if type(content) is str:
                            out.append(TextDelta(step=step, text=content))
                        else:
                            content_parts(content, step, out)
                    if not content or len(delta) > 1:  # most deltas are text and nothing else
                        thinking = delta.get("reasoning_content") or delta.get("reasoning")
                        if thinking and type(thinking) is str:
                            out.append(ReasoningDelta(step=step, text=thinking))
                        refusal = delta.get("refusal")
                        if refusal and type(refusal) is str:
                            out.append(TextDelta(step=step, text=refusal))
                        fragments = delta.get("tool_calls")
                        if fragments:
                            self._fragments(fragments, out)
                reason = choice.get("finish_reason")
                if reason:
                    self._complete_call(out)
                    self.finished = True
                    out.append(Finish(str(reason)))
        usage = obj.get("usage")
        if usage:
            self._usage(usage, out)
        return out

    def _fragments(self, fragments: list[dict[str, Any]], out: list[ProviderChunk]) -> None:
        if type(fragments) is not list:
            raise TypeError("delta.tool_calls is not a list")
        for fragment in fragments:
            index = fragment.get("index")
            given = fragment.get("id") or None
            function = fragment.get("function") or {}
            name = function.get("name") or None
            if name is not None and type(name) is not str:
                raise TypeError("function.name is not a string")
            arguments = function.get("arguments")
            call = self.current
            if call is None or self._starts_a_call(call, index, given, name):
                if (
                    index is not None
                    and index in self.completed
                    and name is None
                    and (given is None or given == self.completed[index])
                ):
                    raise MalformedStream(
                        f"tool call {index} got more arguments after it was complete"
                    )
                self._complete_call(out)
                self.calls += 1
                call = _OpenCall(
                    index if index is not None else -self.calls,
                    given or f"call_{self.step}_{self.calls}",
                    given is not None,
                    name or "",
                )
                self.current = call
            elif name and not call.name:
                call.name = name
            if arguments:
                if type(arguments) is not str:
                    # A few servers send the arguments as an object, not JSON text.
                    arguments = json.dumps(arguments)
                call.parts.append(arguments)
                out.append(
                    ToolArgsDelta(
                        step=self.step, call_id=call.call_id, name=call.name, delta=arguments
                    )
                )

    @staticmethod
    def _starts_a_call(call: _OpenCall, index: Any, given: str | None, name: str | None) -> bool:
        """Whether a fragment with this index, id and name is not part of ``call``."""
        if given is not None and call.given_id:
            return given != call.call_id  # a new id is a new call, even at a used index
        if index is not None and index != call.index:
            return True
        if name is not None and call.name:
            # Its own function name: a new call, unless it repeats the name of a call
            # whose arguments are still coming (some servers name every fragment).
            return name != call.name or whole_json(call.parts)
        return False

    def _complete_call(self, out: list[ProviderChunk]) -> None:
        call = self.current
        if call is None:
            return
        self.current = None
        self.completed[call.index] = call.call_id
        self.ready_sent = True
        out.append(ToolCallReady(call.call_id, call.name, "".join(call.parts)))

    def _usage(self, usage: Mapping[str, Any], out: list[ProviderChunk]) -> None:
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        # Some servers (vLLM's continuous usage stats) report the running total in
        # every chunk: emit only what is new, so that summing the deltas is right.
        more_prompt = max(0, prompt - self.prompt_tokens)
        more_completion = max(0, completion - self.completion_tokens)
        if more_prompt or more_completion:
            self.prompt_tokens = max(prompt, self.prompt_tokens)
            self.completion_tokens = max(completion, self.completion_tokens)
            out.append(
                UsageDelta(
                    step=self.step, prompt_tokens=more_prompt, completion_tokens=more_completion
                )
            )

    def end(self, url: str) -> list[ProviderChunk]:
        """The body ended: the last call is complete, or the stream broke off."""
        if not (self.done or self.finished):
            raise StreamInterrupted(
                f"the stream from {url} ended before [DONE] (after {self.events} event(s))",
                retryable=True,
            )
        out: list[ProviderChunk] = []
        self._complete_call(out)
        return out

    def whole(self, body: bytes, content_type: str, status: int) -> list[ProviderChunk]:
        """The chunks of an answer that is one JSON object, not a stream."""
        obj = self._parse_whole(body, content_type, status)
        try:
            message = obj["choices"][0]["message"]
            out: list[ProviderChunk] = []
            content = message.get("content")
            if content:
                if type(content) is str:
                    out.append(TextDelta(step=self.step, text=content))
                else:
                    content_parts(content, self.step, out)
            thinking = message.get("reasoning_content") or message.get("reasoning")
            if thinking and type(thinking) is str:
                out.append(ReasoningDelta(step=self.step, text=thinking))
            refusal = message.get("refusal")
            if refusal and type(refusal) is str:
                out.append(TextDelta(step=self.step, text=refusal))
            for n, call in enumerate(message.get("tool_calls") or (), 1):
                function = call["function"]
                arguments = function.get("arguments") or ""
                if type(arguments) is not str:
                    arguments = json.dumps(arguments)
                call_id = call.get("id") or f"call_{self.step}_{n}"
                out.append(
                    ToolArgsDelta(
                        step=self.step, call_id=call_id, name=function["name"], delta=arguments
                    )
                )
                out.append(ToolCallReady(call_id, function["name"], arguments))
            if obj.get("usage"):
                self._usage(obj["usage"], out)
            out.append(Finish(obj["choices"][0].get("finish_reason")))
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as error:
            raise MalformedStream(
                f"the server answered with JSON that is not a chat completion ({error}): "
                f"{clip(body)!r}"
            ) from None
        self.began = self.ready_sent = True
        self.finished = True
        return out


def content_parts(parts: Any, step: int, out: list[ProviderChunk]) -> None:
    """Text and reasoning out of ``content`` sent as a list of parts, not a string.

    Mistral's reasoning models send ``[{"type": "thinking", "thinking": [{"type":
    "text", "text": ...}]}, {"type": "text", "text": ...}]``: text parts are
    text, thinking parts reasoning; parts of other types (references, images)
    are skipped.
    """
    if type(parts) is dict:
        parts = [parts]
    if type(parts) is not list:
        raise TypeError("content is neither a string nor a list of parts")
    for part in parts:
        if type(part) is str:
            if part:
                out.append(TextDelta(step=step, text=part))
            continue
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if text and type(text) is str:
                out.append(TextDelta(step=step, text=text))
        elif kind == "thinking":
            thinking = part.get("thinking")
            pieces = [thinking] if type(thinking) is str else (thinking or ())
            for piece in pieces:
                text = piece if isinstance(piece, str) else piece.get("text")
                if text and type(text) is str:
                    out.append(ReasoningDelta(step=step, text=text))
        else:
            log.debug("skipping a content part of type %r", kind)


def whole_json(parts: list[str]) -> bool:
    """Whether the argument pieces so far make a whole JSON value."""
    if not parts or parts[-1].rstrip()[-1:] not in ("}", "]"):
        return False  # a cheap no for a call whose arguments are still coming
    try:
        from_json("".join(parts))
    except ValueError:
        return False
    return True
