"""The script vocabulary of the loopback server: what it answers, item by item.

A *turn* answers one request. It is a streamed reply (a string, a list of
items, or :func:`reply`), a whole-response answer (:func:`status`,
:func:`rate_limited`, :func:`server_error`, :func:`hang_up`,
:func:`response`), or a function of the :class:`RecordedRequest` that returns
one of those.

Items of a streamed reply, sent in order. The common ones are those of
:mod:`rxagent.scripted` (``call``, ``reasoning``, ``usage``, ``finish``,
``delay``, :class:`Gate`, and ``hang`` alias ``stall``), read by the same
:func:`rxagent.scripted.play`, so one script plays on ``ScriptedProvider``
offline or here over HTTP:

* a ``str``: a piece of assistant text (one chunk);
* :func:`call`: a tool call, its JSON arguments split into fragments (only the
  first fragment carries the call's id and name, as OpenAI sends them);
* :func:`reasoning`: a piece of reasoning text (``reasoning_content``, or the
  field you name);
* :func:`usage`: the token usage reported after the finish chunk;
* :func:`finish`: the finish reason (by default ``tool_calls`` when the reply
  made calls, else ``stop``);
* :func:`delay`: a pause; a :class:`Gate`: a pause until the test opens it;
* faults: :func:`disconnect` (the connection drops here), :func:`stall` (the
  server goes silent), :func:`keep_alive` (the server sends only keep-alive
  comments from here on), :func:`malformed` (a ``data:`` line that is not
  JSON), :func:`error_event` (an ``error`` object in the stream), :func:`raw`
  (bytes sent as they are).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from rxagent.providers.scripted import (
    Call,
    Delay,
    Finish,
    Gate,
    Reasoning,
    call,
    delay,
    finish,
    reasoning,
    usage,
)
from rxagent.providers.scripted import Hang as Stall
from rxagent.providers.scripted import UsageReport as Usage
from rxagent.providers.scripted import hang as stall

if TYPE_CHECKING:
    from rxagent.testing._server import RecordedRequest

__all__ = [
    "Answer",
    "Call",
    "Delay",
    "Disconnect",
    "ErrorEvent",
    "Finish",
    "Gate",
    "HangUp",
    "Item",
    "KeepAlive",
    "Malformed",
    "NoResponse",
    "Raw",
    "RawResponse",
    "Reasoning",
    "Reply",
    "Stall",
    "Status",
    "Turn",
    "Usage",
    "call",
    "delay",
    "disconnect",
    "error_event",
    "finish",
    "hang_up",
    "keep_alive",
    "malformed",
    "no_response",
    "rate_limited",
    "raw",
    "reasoning",
    "reply",
    "response",
    "server_error",
    "stall",
    "status",
    "usage",
]


# -- items of a streamed reply ----------------------------------------------------------
@dataclass(frozen=True)
class Disconnect:
    """Fault: the server drops the connection here, in the middle of the body."""


@dataclass(frozen=True)
class KeepAlive:
    """Fault: from here on the server sends only SSE comments, one every ``every`` seconds,
    until the client goes away (each resets a plain read timeout, but none is data)."""

    every: float = 0.05


@dataclass(frozen=True)
class Malformed:
    """Fault: a ``data:`` line whose payload is not JSON."""

    payload: str = '{"choices": [{"index": 0, "delta": {"content": "unterminated'


@dataclass(frozen=True)
class ErrorEvent:
    """Fault: an ``error`` object in the stream, as OpenAI sends one mid-stream."""

    message: str
    type: str = "server_error"
    code: str | int | None = None


@dataclass(frozen=True)
class Raw:
    """Bytes sent exactly as they are (you write the SSE framing)."""

    data: bytes


Item: TypeAlias = (
    str
    | Call
    | Reasoning
    | Usage
    | Finish
    | Delay
    | Gate
    | Disconnect
    | Stall
    | KeepAlive
    | Malformed
    | ErrorEvent
    | Raw
)


# -- whole answers ----------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """A streamed answer: the items, and the pause between them (``None``: the server's)."""

    items: tuple[Item, ...]
    chunk_delay: float | None = None


@dataclass(frozen=True)
class Status:
    """An HTTP error answer with an OpenAI-style JSON error body."""

    status: int
    message: str
    type: str = "server_error"
    code: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HangUp:
    """Fault: the server closes the connection without answering."""


@dataclass(frozen=True)
class NoResponse:
    """Fault: the server reads the request and never answers, keeping the connection open."""


@dataclass(frozen=True)
class RawResponse:
    """An answer sent as given: status, headers and body.

    With ``chunks`` (byte lengths), the body is streamed in those pieces (chunked
    encoding), each sent on its own; ``then`` says what follows the last:
    ``end`` (the body ends) or ``disconnect`` (the connection drops). A replayed
    cassette answers so.
    """

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    chunks: tuple[int, ...] = ()
    then: Literal["end", "disconnect"] = "end"


Answer: TypeAlias = Reply | Status | HangUp | NoResponse | RawResponse
Turn: TypeAlias = "str | Sequence[Item] | Answer | Callable[[RecordedRequest], Turn]"


# -- the helpers ------------------------------------------------------------------------
def disconnect() -> Disconnect:
    """Drop the connection here, mid-body (the client sees an incomplete stream)."""
    return Disconnect()


def keep_alive(every: float = 0.05) -> KeepAlive:
    """From here on, send only a ``: keep-alive`` comment every ``every`` seconds."""
    return KeepAlive(every)


def no_response() -> NoResponse:
    """Never answer the request (no status line), keeping the connection open."""
    return NoResponse()


def malformed(payload: str | None = None) -> Malformed:
    """A ``data:`` line whose payload does not parse as JSON."""
    return Malformed() if payload is None else Malformed(payload)


def error_event(
    message: str, *, type: str = "server_error", code: str | int | None = None
) -> ErrorEvent:
    """An ``{"error": {...}}`` object in the stream."""
    return ErrorEvent(message, type, code)


def raw(data: str | bytes) -> Raw:
    """Send ``data`` exactly as it is, e.g. ``raw("not an SSE line\\n\\n")``."""
    return Raw(data.encode() if isinstance(data, str) else data)


def reply(*items: Item, chunk_delay: float | None = None) -> Reply:
    """A streamed answer with a pause of its own between items."""
    return Reply(tuple(items), chunk_delay)


def status(
    code: int,
    message: str | None = None,
    *,
    retry_after: float | None = None,
    retry_after_ms: float | None = None,
    type: str | None = None,
    error_code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Status:
    """An HTTP error answer; ``retry_after`` (seconds) sets the ``retry-after`` header."""
    all_headers = dict(headers or {})
    if retry_after is not None:
        all_headers["retry-after"] = _number(retry_after)
    if retry_after_ms is not None:
        all_headers["retry-after-ms"] = _number(retry_after_ms)
    default_type = (
        "rate_limit_exceeded"
        if code == 429
        else ("server_error" if code >= 500 else "invalid_request_error")
    )
    return Status(
        code,
        message or f"loopback server: scripted {code} answer",
        type or default_type,
        error_code,
        all_headers,
    )


def rate_limited(
    retry_after: float | None = None, *, message: str = "Rate limit reached (scripted)"
) -> Status:
    """A 429 answer, with a ``retry-after`` header when ``retry_after`` (seconds) is given."""
    return status(429, message, retry_after=retry_after)


def server_error(message: str = "The server had an error (scripted)", code: int = 500) -> Status:
    """A 5xx answer."""
    return status(code, message)


def hang_up() -> HangUp:
    """Close the connection without answering (the client sees a connection error)."""
    return HangUp()


def response(
    body: str | bytes | Mapping[str, Any],
    *,
    status: int = 200,
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> RawResponse:
    """An answer sent as given (a mapping body is sent as JSON)."""
    data = (
        json.dumps(dict(body)).encode()
        if isinstance(body, Mapping)
        else (body.encode() if isinstance(body, str) else body)
    )
    return RawResponse(status, data, {"content-type": content_type, **dict(headers or {})})


def as_answer(turn: str | Sequence[Item] | Answer) -> Answer:
    """A turn that is not a function, as an :data:`Answer`."""
    if isinstance(turn, Reply | Status | HangUp | NoResponse | RawResponse):
        return turn
    if isinstance(turn, str):
        return Reply((turn,))
    if isinstance(turn, Sequence):
        return Reply(tuple(turn))
    raise TypeError(f"not a turn for the loopback server: {turn!r}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
