"""Test your agents offline against a real OpenAI-compatible HTTP server.

:class:`LoopbackServer` listens on 127.0.0.1 and speaks the chat-completions
wire format (Server-Sent Events when the request streams). It answers each
request with the next turn of a script, records every request it receives,
and injects faults on demand, so a test drives the real ``openai`` SDK and
:class:`~rxagent.providers.openai.OpenAIProvider` end to end::

    import rxagent as ra
    from rxagent import testing as t

    @ra.tool
    def add(a: int, b: int) -> int:
        '''Add two numbers.'''
        return a + b

    with t.LoopbackServer([
        ["Adding. ", t.call("add", {"a": 2, "b": 3}), t.usage(20, 8)],
        t.rate_limited(retry_after=0.01),       # the next request gets a 429...
        ["2 + 3 = 5"],                          # ...and its retry this answer
    ]) as server:
        result = ra.Agent(server.provider(), tools=[add]).run_sync("2 + 3?")
        assert result.text == "2 + 3 = 5"
        assert server.requests[1].messages[-1]["role"] == "tool"

A turn is a string, a list of items, an answer such as :func:`status`, or a
function of the :class:`RecordedRequest` returning one of these.

========================  ==========================================================
item / answer             what the server does
========================  ==========================================================
``"text"``                streams a content delta
``call(name, args)``      streams a tool call, arguments in fragments (id and name
                          only in the first)
``reasoning(text)``       streams a ``reasoning_content`` (or ``field=``) delta
``usage(p, c)``           reports usage after the finish chunk (unless scripted, the
                          server estimates it when the request asks for usage)
``finish(reason)``        sends the finish reason here
``delay(s)``              pauses; a :class:`Gate` pauses until the test opens it
``disconnect()``          drops the connection mid-body
``stall()``               goes silent, keeping the connection open
``keep_alive(every)``     sends only ``: keep-alive`` comments from here on
``malformed(payload)``    sends a ``data:`` line that is not JSON
``error_event(message)``  sends an ``{"error": ...}`` object and ends the body
``raw(bytes)``            sends bytes exactly as given
``status(code, ...)``     answers an HTTP error (``retry_after=`` sets the header);
                          ``rate_limited()`` is 429, ``server_error()`` 500
``hang_up()``             closes the connection without answering
``no_response()``         never answers, keeping the connection open
``response(body, ...)``   answers exactly this status, body and headers
========================  ==========================================================

What the client sees, through ``OpenAIProvider``: a 429 or 5xx answer, a hang-up,
no response, or a stall before the first chunk is retried (with a ``StepRetry``
event); after output began, a disconnect or stall (keep-alive comments
included) fails the step with ``StreamInterrupted`` / ``StreamStalled`` and the
partial run attached; a malformed line is a
``MalformedStream`` error and an error event a ``StreamError``, both naming what
was sent.

The server speaks chat completions (``.../chat/completions``) and the Responses
API (``.../responses``) from the same scripts.

:func:`record` makes a provider write a real session to a cassette, and
:meth:`LoopbackServer.from_cassette` replays it byte for byte (a request that
differs from the recorded one gets a 400 that says where).

For pytest, the fixtures ``loopback_server`` (a running server, stopped after
the test) and ``loopback_provider`` (an ``OpenAIProvider`` pointed at it) come
with the ``rxagent.testing.pytest_plugin`` plugin.
"""

from rxagent.testing._cassette import Cassette, record
from rxagent.testing._script import (
    Answer,
    Call,
    Delay,
    Disconnect,
    ErrorEvent,
    Finish,
    Gate,
    HangUp,
    Item,
    KeepAlive,
    Malformed,
    NoResponse,
    Raw,
    RawResponse,
    Reasoning,
    Reply,
    Stall,
    Status,
    Turn,
    Usage,
    call,
    delay,
    disconnect,
    error_event,
    finish,
    hang_up,
    keep_alive,
    malformed,
    no_response,
    rate_limited,
    raw,
    reasoning,
    reply,
    response,
    server_error,
    stall,
    status,
    usage,
)
from rxagent.testing._server import LoopbackServer, Outcome, RecordedRequest

__all__ = [
    "Answer",
    "Call",
    "Cassette",
    "Delay",
    "Disconnect",
    "ErrorEvent",
    "Finish",
    "Gate",
    "HangUp",
    "Item",
    "KeepAlive",
    "LoopbackServer",
    "Malformed",
    "NoResponse",
    "Outcome",
    "Raw",
    "RawResponse",
    "Reasoning",
    "RecordedRequest",
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
    "record",
    "reply",
    "response",
    "server_error",
    "stall",
    "status",
    "usage",
]
