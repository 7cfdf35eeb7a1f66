"""LoopbackServer: an OpenAI-compatible chat-completions server on 127.0.0.1.

It speaks HTTP/1.1 with keep-alive (as the ``openai`` SDK's connection pool
expects; the protocol is h11's) and answers ``POST .../chat/completions`` from
a script, streaming Server-Sent Events in chunked transfer encoding when the
request asks for ``stream: true``. The script's items are read by
:func:`rxagent.scripted.play`, as ``ScriptedProvider`` reads them, and the
chunks it yields are encoded for the wire here. It runs on an event loop of its
own in a daemon thread, so the same server serves async tests, sync scripts and
notebooks alike, and the client's event loop is never the server's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

import h11

from rxagent.events import ReasoningDelta, TextDelta, ToolArgsDelta, UsageDelta
from rxagent.messages import AssistantMessage, ToolCall, to_openai_message
from rxagent.providers.base import Finish, ToolCallReady
from rxagent.providers.scripted import play
from rxagent.testing._script import (
    Answer,
    Disconnect,
    ErrorEvent,
    HangUp,
    KeepAlive,
    Malformed,
    NoResponse,
    Raw,
    RawResponse,
    Reasoning,
    Reply,
    Status,
    Turn,
    Usage,
    as_answer,
)

if TYPE_CHECKING:
    from rxagent.providers.openai import OpenAIProvider
    from rxagent.testing._cassette import Cassette

__all__ = ["LoopbackServer", "Outcome", "RecordedRequest"]

log = logging.getLogger("rxagent.testing")

#: How a request's answer ended: still going, sent in full, the client went away
#: first, the server hung up (a scripted fault), or the server was stopped.
Outcome: TypeAlias = Literal["pending", "completed", "disconnected", "closed", "stopped"]

#: Request body fields that are not "options".
_NOT_OPTIONS = frozenset({"model", "messages", "input", "tools", "stream", "stream_options"})
_MAX_HEAD = 64 * 1024


class RecordedRequest:
    """A request the server received, and how its answer went.

    ``body`` is the JSON body; ``messages`` (a Responses API request's
    ``input``), ``tools``, ``model`` and ``options`` (every other field but
    ``stream`` and ``stream_options``) are
    read from it. ``sent`` lists the ``data:`` payloads the server streamed, in
    order. Times are ``time.monotonic()`` values.
    """

    def __init__(
        self,
        index: int,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: Any,
    ) -> None:
        self.index = index
        self.method = method
        self.path = path
        self.headers: dict[str, str] = dict(headers)
        self.body = body
        self.received_at = time.monotonic()
        self.sent: list[str] = []
        self.outcome: Outcome = "pending"
        self.ended_at: float | None = None
        self._ended: concurrent.futures.Future[Outcome] = concurrent.futures.Future()

    # -- what the client asked for ----------------------------------------------------
    @property
    def model(self) -> str | None:
        model = self._field("model")
        return model if isinstance(model, str) else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self._field("messages")
        if messages is None:  # a Responses API request: its input items
            messages = self._field("input")
            if isinstance(messages, str):
                messages = [{"role": "user", "content": messages}]
        return list(messages or [])

    @property
    def api(self) -> str:
        """``"responses"`` for a request to ``.../responses``, else ``"chat"``."""
        return (
            "responses" if self.path.split("?", 1)[0].rstrip("/").endswith("/responses") else "chat"
        )

    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self._field("tools") or [])

    @property
    def tool_names(self) -> list[str]:
        return [t.get("name") or t.get("function", {}).get("name", "") for t in self.tools]

    @property
    def stream(self) -> bool:
        return bool(self._field("stream"))

    @property
    def options(self) -> dict[str, Any]:
        """Every body field but ``model``, ``messages``, ``tools``, ``stream*``."""
        body = self.body if isinstance(self.body, dict) else {}
        return {k: v for k, v in body.items() if k not in _NOT_OPTIONS}

    @property
    def system_prompt(self) -> str | None:
        """The content of the first message, when it is a system message (or the
        ``instructions``, in a Responses API request)."""
        instructions = self._field("instructions")
        if isinstance(instructions, str):
            return instructions
        messages = self.messages
        if messages and messages[0].get("role") in ("system", "developer"):
            return self._text(messages[0].get("content"))
        return None

    @property
    def last_user_message(self) -> str | None:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return self._text(message.get("content"))
        return None

    def _field(self, name: str) -> Any:
        return self.body.get(name) if isinstance(self.body, dict) else None

    def _text(self, content: Any) -> str:
        if isinstance(content, str):
            return content
        if isinstance(content, list) and all(isinstance(p, dict) and "text" in p for p in content):
            return "".join(str(p["text"]) for p in content)  # text parts
        return json.dumps(content)

    # -- how the answer went ----------------------------------------------------------
    def wait_ended(self, timeout: float = 5.0) -> Outcome:
        """Block until the answer has ended; its :data:`Outcome`."""
        try:
            return self._ended.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"request {self.index} was still being answered after {timeout} s"
            ) from None

    # A default bound (rather than asking callers for asyncio.timeout) keeps a test
    # that forgets one from hanging; the sync twin takes the same argument.
    async def ended(self, timeout: float = 5.0) -> Outcome:  # noqa: ASYNC109
        """Wait (without blocking the loop) until the answer has ended; its :data:`Outcome`."""
        try:
            await _wait_future(self._ended, timeout)
            return self._ended.result()
        except TimeoutError:
            raise TimeoutError(
                f"request {self.index} was still being answered after {timeout} s"
            ) from None

    def _end(self, outcome: Outcome) -> None:
        if self.outcome == "pending":
            self.outcome = outcome
            self.ended_at = time.monotonic()
            self._ended.set_result(outcome)

    def __repr__(self) -> str:
        return (
            f"<RecordedRequest {self.index} {self.method} {self.path} "
            f"messages={len(self.messages)} tools={self.tool_names} {self.outcome}>"
        )


class _BadRequest(Exception):
    pass


class _Connection:
    """One client connection: h11 speaks its HTTP/1.1 over the stream reader and writer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)

    async def _receive(self) -> bool:
        """Read what the client sent into h11; ``False`` when it closed the connection."""
        try:
            data = await self.reader.read(65536)
        except (ConnectionError, OSError):
            data = b""
        if self.http.their_state is not h11.CLOSED:
            self.http.receive_data(data)  # b"": the client closed its side
        return bool(data)

    async def _next_event(self) -> Any:
        while True:
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self._receive()

    async def read_request(self) -> tuple[h11.Request, bytes] | None:
        """The next request and its body; ``None`` when the client is done with the connection."""
        event = await self._next_event()
        if type(event) is h11.ConnectionClosed:
            return None
        if type(event) is not h11.Request:
            raise _BadRequest(f"expected a request, got {event!r}")
        request = event
        if self.http.they_are_waiting_for_100_continue:
            await self.send(h11.InformationalResponse(status_code=100, headers=[]))
        body = bytearray()
        while True:
            event = await self._next_event()
            if type(event) is h11.Data:
                body += event.data
            elif type(event) is h11.EndOfMessage:
                return request, bytes(body)
            else:
                raise _BadRequest("the client closed the connection mid-body")

    async def send(self, *events: Any) -> None:
        data = b"".join(self.http.send(event) or b"" for event in events)
        self.writer.write(data)
        await self.writer.drain()

    async def respond(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        """A whole answer: status, headers (a content length added), body."""
        fields = [(name, value) for name, value in headers.items()]
        fields.append(("content-length", str(len(body))))
        response = h11.Response(status_code=status, headers=fields, reason=_reason(status))
        await self.send(response, h11.Data(data=body), h11.EndOfMessage())

    def next_cycle(self) -> bool:
        """After an answer sent in full: whether the connection can take another request."""
        if self.http.our_state is h11.DONE and self.http.their_state is h11.DONE:
            self.http.start_next_cycle()
            return True
        return False

    async def gone(self) -> None:
        """Return when the client closes the connection (data it sends meanwhile is kept)."""
        while await self._receive():
            pass


class LoopbackServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1, answering from a script.

    ``script`` is a list of turns, one per request, or a function of the
    :class:`RecordedRequest` that returns the turn (see
    :mod:`rxagent.testing` for the vocabulary); :meth:`push` adds turns later
    (pushed turns answer first; a script function answers when none is left).
    ``chunk_delay`` (seconds) is the pause before each streamed chunk after the
    first. Every request is recorded in :attr:`requests`.

    Use it as a context manager (``with`` or ``async with``), or call
    :meth:`start` and :meth:`stop`. :attr:`url` is the ``base_url`` for a
    client, and :meth:`provider` makes an ``OpenAIProvider`` pointed at it::

        with LoopbackServer([["Hello", " world"]]) as server:
            agent = ra.Agent(server.provider())
            assert agent.run_sync("hi").text == "Hello world"
            assert server.requests[0].messages[-1]["content"] == "hi"

    A request with no turn left (or whose script function raises) gets a 400
    answer that says so. ``GET .../models`` lists ``model``.
    """

    def __init__(
        self,
        script: Iterable[Turn] | Callable[[RecordedRequest], Turn] = (),
        *,
        model: str = "loopback",
        chunk_delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.model = model
        self.chunk_delay = chunk_delay
        self.host = host
        self._port = port
        self._respond: Callable[[RecordedRequest], Turn] | None = None
        self._turns: deque[Turn] = deque()
        if callable(script):
            self._respond = script
        else:
            self._turns.extend(script)
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._arrival_waiters: list[tuple[int, concurrent.futures.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        # How many streamed answers are being sent (a list, shared with the streamers;
        # touched on the server's loop only).
        self._streams = [0]
        #: The cassette this server replays (see :meth:`from_cassette`), if it does.
        self.cassette: Cassette | None = None

    @classmethod
    def from_cassette(cls, path: str | os.PathLike[str], **kwargs: Any) -> LoopbackServer:
        """A server that replays the cassette at ``path`` (see :func:`rxagent.testing.record`).

        Requests are matched in order (method, endpoint, JSON body) and answered
        with the recorded bytes, in the pieces they arrived in; a request that
        differs gets a 400 that says where (``server.cassette.mismatches`` lists
        them too). The server's ``model`` is the recorded one, so that
        :meth:`provider` asks for it.
        """
        from rxagent.testing._cassette import Cassette

        cassette = Cassette.load(path)
        kwargs.setdefault("model", cassette.model or "loopback")
        server = cls(cassette, **kwargs)
        server.cassette = cassette
        return server

    # -- the script -------------------------------------------------------------------
    def push(self, *turns: Turn) -> None:
        """Add turns: each answers one request, after the turns already scripted."""
        with self._lock:
            self._turns.extend(turns)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in order (a copy of the list)."""
        with self._lock:
            return list(self._requests)

    # -- where it is ------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the loopback server is not running; call start() first")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """The base URL for an OpenAI client: ``http://127.0.0.1:<port>/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def provider(self, **kwargs: Any) -> OpenAIProvider:
        """An ``OpenAIProvider`` for this server, with fast retries (override with ``kwargs``).

        The defaults suit tests: retries wait milliseconds, not seconds, and a
        server that does not answer, or a stream that stalls, fails after 5 s.
        """
        from rxagent.providers.openai import OpenAIProvider, RetryPolicy

        settings: dict[str, Any] = {
            "base_url": self.url,
            "api_key": "loopback",
            "retry": RetryPolicy(base_delay=0.001, max_delay=0.02),
            "first_byte_timeout": 5.0,
            "read_timeout": 5.0,
        }
        settings.update(kwargs)
        model = settings.pop("model", self.model)
        return OpenAIProvider(model, **settings)

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> LoopbackServer:
        """Start serving (in a daemon thread); returns the server. Idempotent."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_forever, name="rxagent-loopback-server", daemon=True
        )
        thread.start()
        try:
            self._server = asyncio.run_coroutine_threadsafe(
                # A deep accept queue: many clients connecting at once must not see
                # dropped SYNs (and the client's one-second retransmission delay).
                asyncio.start_server(self._serve, self.host, self._port, backlog=1024),
                loop,
            ).result(10)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
            raise
        self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        """Stop serving: open connections are closed, pending answers end as ``stopped``."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        for request in self.requests:
            request._end("stopped")

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LoopbackServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # -- waiting for requests ---------------------------------------------------------
    def wait_for_requests(self, count: int = 1, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until ``count`` requests have arrived; the requests so far."""
        future = self._arrival(count)
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise self._too_few(count, timeout) from None
        return self.requests

    async def requests_received(
        self,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109 (as in RecordedRequest.ended)
    ) -> list[RecordedRequest]:
        """Wait (without blocking the loop) until ``count`` requests have arrived."""
        try:
            await _wait_future(self._arrival(count), timeout)
        except TimeoutError:
            raise self._too_few(count, timeout) from None
        return self.requests

    def _arrival(self, count: int) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            if len(self._requests) >= count:
                future.set_result(None)
            else:
                self._arrival_waiters.append((count, future))
        return future

    def _too_few(self, count: int, timeout: float) -> TimeoutError:
        return TimeoutError(
            f"the loopback server received {len(self.requests)} request(s) in {timeout} s, "
            f"expected {count}"
        )

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            arrived = len(self._requests)
            ready = [f for n, f in self._arrival_waiters if n <= arrived]
            self._arrival_waiters = [(n, f) for n, f in self._arrival_waiters if n > arrived]
        for future in ready:
            future.set_result(None)

    # -- serving ----------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        connection = _Connection(reader, writer)
        try:
            while await self._one_exchange(connection):
                pass
        except h11.RemoteProtocolError as error:
            with contextlib.suppress(Exception):
                body = json.dumps(_error_body(f"not HTTP/1.1 this server reads: {error}"))
                await connection.respond(
                    error.error_status_hint, body.encode(), {"content-type": "application/json"}
                )
        except (ConnectionError, OSError, _BadRequest, asyncio.CancelledError):
            pass
        except Exception:  # a bug, here or in a scripted item: say so, drop the connection
            log.exception("the loopback server failed while answering a request")
        finally:
            self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _one_exchange(self, connection: _Connection) -> bool:
        """Read one request and answer it; whether the connection stays open."""
        received = await connection.read_request()
        if received is None:
            return False
        head, body_bytes = received
        method = head.method.decode("latin-1")
        target = head.target.decode("latin-1")
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers}
        path = target.split("?", 1)[0].rstrip("/")

        if method == "GET" and path.endswith("/models"):
            models = {
                "object": "list",
                "data": [{"id": self.model, "object": "model", "owned_by": "rxagent"}],
            }
            await self._send_json(connection, 200, models)
            return connection.next_cycle()
        if method != "POST" or not path.endswith(("/chat/completions", "/responses")):
            await self._send_json(
                connection, 404, _error_body(f"no route for {method} {path}", "not_found")
            )
            return connection.next_cycle()
        try:
            body = json.loads(body_bytes or b"null")
        except ValueError as error:
            await self._send_json(connection, 400, _error_body(f"the body is not JSON: {error}"))
            return connection.next_cycle()

        request = RecordedRequest(len(self._requests), method, target, headers, body)
        self._record(request)
        answer = self._answer_for(request)
        if isinstance(answer, str):  # the script could not answer: say why
            await self._send_json(connection, 400, _error_body(answer, "loopback_script_error"))
            request._end("completed")
            return connection.next_cycle()
        if isinstance(answer, HangUp):
            request._end("closed")
            return False
        if isinstance(answer, NoResponse):
            await connection.gone()
            request._end("disconnected")
            return False
        if isinstance(answer, Status):
            problem = _error_body(answer.message, answer.type, answer.code)
            await self._send_json(connection, answer.status, problem, answer.headers)
            request._end("completed")
            return connection.next_cycle()
        if isinstance(answer, RawResponse) and not answer.chunks and answer.then == "end":
            await connection.respond(answer.status, answer.body, answer.headers)
            request._end("completed")
            return connection.next_cycle()
        # A reply: race it against the client going away, so that a disconnect is
        # seen at once even while the reply waits (a delay, a gate, a stall).
        answering = asyncio.ensure_future(self._reply(connection, request, answer))
        watching = asyncio.ensure_future(connection.gone())
        try:
            done, _ = await asyncio.wait({answering, watching}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            answering.cancel()
            watching.cancel()
            raise
        if answering in done:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            outcome: Outcome
            try:
                outcome = answering.result()
            except (ConnectionError, OSError):
                outcome = "disconnected"
        else:
            answering.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await answering
            outcome = "disconnected"
        request._end(outcome)
        return outcome == "completed" and connection.next_cycle()

    def _answer_for(self, request: RecordedRequest) -> Answer | str:
        with self._lock:
            turn: Turn | None = self._turns.popleft() if self._turns else self._respond
        if turn is None:
            return (
                f"loopback server: no scripted turn for request {request.index + 1} "
                f"(push more turns, or give a function as the script)"
            )
        try:
            while callable(turn):
                turn = turn(request)
            return as_answer(turn)
        except Exception as error:
            return f"loopback server: the script failed: {type(error).__name__}: {error}"

    async def _reply(
        self, connection: _Connection, request: RecordedRequest, reply: Reply | RawResponse
    ) -> Outcome:
        if isinstance(reply, RawResponse):
            return await _stream_raw(connection, request, reply, self._streams)
        delay = self.chunk_delay if reply.chunk_delay is None else reply.chunk_delay
        chunks = play(
            reply.items, call_ids=f"call_loopback_{request.index + 1}_", pace=delay, wire=True
        )
        responses = request.api == "responses"
        if not request.stream:
            return await _whole(connection, request, self.model, chunks)
        self._streams[0] += 1
        try:
            stream = _Stream(connection, request, delay, self._streams)
            encoder = (_ResponsesEncoder if responses else _ChatEncoder)(
                stream, request, self.model
            )
            return await stream.play(encoder, chunks)
        finally:
            self._streams[0] -= 1

    async def _send_json(
        self,
        connection: _Connection,
        status: int,
        body: Any,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        await connection.respond(
            status,
            json.dumps(body).encode(),
            {"content-type": "application/json", **dict(headers or {})},
        )


async def _stream_raw(
    connection: _Connection, request: RecordedRequest, answer: RawResponse, streams: list[int]
) -> Outcome:
    """Send a raw answer in its pieces, then end it or drop the connection."""
    stream = _Stream(connection, request, 0.0, streams)
    headers = [(name, value) for name, value in answer.headers.items()]
    await connection.send(h11.Response(status_code=answer.status, headers=headers))
    start = 0
    for size in answer.chunks or (len(answer.body),):
        if size:
            await stream.write(answer.body[start : start + size])
        start += size
    if start < len(answer.body):
        await stream.write(answer.body[start:])
    if answer.then == "disconnect":
        return "closed"
    await stream.end()
    return "completed"


class _Encoder(Protocol):
    """Puts a reply's chunks on the wire of one API."""

    async def start(self) -> None: ...
    async def chunk(self, chunk: Any) -> None: ...
    async def error(self, item: ErrorEvent) -> None: ...
    async def end(self) -> None: ...


class _Stream:
    """A streamed answer: Server-Sent Events in chunked encoding, and the faults that break it."""

    def __init__(
        self,
        connection: _Connection,
        request: RecordedRequest,
        delay: float,
        streams: list[int],
    ) -> None:
        self.connection = connection
        self.request = request
        self.delay = delay
        self.streams = streams
        self.written = 0
        version = connection.http.their_http_version
        #: Whether h11 frames this answer in chunks (it does for an HTTP/1.1 client).
        self.chunked = version is not None and version >= b"1.1"

    async def play(self, encoder: _Encoder, chunks: AsyncIterator[Any]) -> Outcome:
        """Send the head, then each chunk as the encoder puts it, then the end."""
        head = h11.Response(
            status_code=200,
            headers=[
                ("content-type", "text/event-stream; charset=utf-8"),
                ("cache-control", "no-cache"),
                ("x-request-id", f"req_loopback_{self.request.index + 1}"),
            ],
        )
        await self.connection.send(head)
        await encoder.start()
        async for chunk in chunks:
            kind = type(chunk)
            if kind is Disconnect:
                return "closed"
            if kind is KeepAlive:
                while True:  # until the client leaves or the server stops
                    await self.write(b": keep-alive\n\n")
                    await asyncio.sleep(chunk.every)
            elif kind is Raw:
                await self.write(chunk.data)
            elif kind is Malformed:
                await self.data(chunk.payload)
            elif kind is ErrorEvent:
                await encoder.error(chunk)
                await self.end()  # OpenAI ends the body after an error event, without [DONE]
                return "completed"
            else:
                await encoder.chunk(chunk)
        await encoder.end()
        await self.end()
        return "completed"

    async def data(self, payload: str, event: str | None = None) -> None:
        """One event: its ``data:`` line (and ``event:`` line, when named)."""
        self.request.sent.append(payload)
        line = b"data: " + payload.encode() + b"\n\n"
        await self.write(line if event is None else b"event: " + event.encode() + b"\n" + line)

    async def write(self, data: bytes) -> None:
        writer = self.connection.writer
        # The framing h11 would write for h11.Data, written here: h11's state machine
        # costs 5 us a chunk, as much as the rest of the server's work per token, and
        # a chunk changes no state (h11 still sends the head, chooses the framing from
        # the client's HTTP version, sends the end and keeps the connection's state).
        writer.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)
        await writer.drain()
        self.written += 1
        if not self.delay and (self.streams[0] > 1 or self.written % 32 == 0):
            # Take turns with the other streams chunk by chunk, as a fair server does;
            # a stream on its own goes out in bursts (drain() waits only for a client
            # that reads slower than the server writes).
            await asyncio.sleep(0)

    async def end(self) -> None:
        await self.connection.send(h11.EndOfMessage())


class _ChatEncoder:
    """Provider chunks as ``chat.completion.chunk`` objects, the chat-completions stream."""

    def __init__(self, stream: _Stream, request: RecordedRequest, model: str) -> None:
        self.stream = stream
        self.request = request
        self.calls: dict[str, int] = {}
        self.finished = False
        self.usage: UsageDelta | Usage | None = None
        self.template = {
            "id": f"chatcmpl-loopback-{request.index + 1}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.model or model,
            "system_fingerprint": None,
        }

    async def start(self) -> None:
        await self._choice({"role": "assistant", "content": ""})

    async def chunk(self, chunk: Any) -> None:
        kind = type(chunk)
        if kind is TextDelta:
            await self._choice({"content": chunk.text})
        elif kind is ToolArgsDelta:
            index = self.calls.get(chunk.call_id)
            if index is None:  # a new call: its id and name first, as OpenAI sends them
                index = self.calls[chunk.call_id] = len(self.calls)
                function = {"name": chunk.name, "arguments": ""}
                opening = {"index": index, "id": chunk.call_id, "type": "function"}
                await self._choice({"tool_calls": [{**opening, "function": function}]})
            piece = {"index": index, "function": {"arguments": chunk.delta}}
            await self._choice({"tool_calls": [piece]})
        elif kind is ToolCallReady:
            pass  # a call is complete when the next begins or the choice finishes
        elif kind is Reasoning:
            await self._choice({chunk.field: chunk.text})
        elif kind is ReasoningDelta:
            await self._choice({"reasoning_content": chunk.text})
        elif kind is UsageDelta:
            self.usage = chunk  # reported after the finish chunk, as OpenAI does
        elif kind is Finish:
            self.finished = True
            await self._choice({}, chunk.reason)
        else:
            raise TypeError(f"not a loopback script item: {chunk!r}")

    async def error(self, item: ErrorEvent) -> None:
        await self.stream.data(json.dumps(_error_body(item.message, item.type, item.code)))

    async def end(self) -> None:
        # (The script's Finish came: play() ends every reply with one.)
        options = self.request.body.get("stream_options") or {}
        usage: UsageDelta | Usage | None = self.usage
        if usage is None and isinstance(options, dict) and options.get("include_usage"):
            usage = _estimate_usage(self.request)
        if usage is not None:
            report = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            }
            await self.stream.data(json.dumps({**self.template, "choices": [], "usage": report}))
        await self.stream.data("[DONE]")

    async def _choice(self, delta: dict[str, Any], finish_reason: str | None = None) -> None:
        chunk = {
            **self.template,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        await self.stream.data(json.dumps(chunk, separators=(",", ":")))


class _Gathered:
    """A reply's chunks gathered for an answer that does not stream."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.calls: list[ToolCallReady] = []
        self.usage: UsageDelta | Usage | None = None
        self.reason: str | None = None


async def _gather(connection: _Connection, chunks: AsyncIterator[Any]) -> _Gathered | Outcome:
    """The reply's chunks, gathered; or, when a fault answered instead, how that went."""
    gathered = _Gathered()
    async for chunk in chunks:
        kind = type(chunk)
        if kind is TextDelta:
            gathered.text.append(chunk.text)
        elif kind is ToolCallReady:
            gathered.calls.append(chunk)
        elif kind is Reasoning or kind is ReasoningDelta:
            gathered.thinking.append(chunk.text)
        elif kind is UsageDelta:
            gathered.usage = chunk
        elif kind is Finish:
            gathered.reason = gathered.reason or chunk.reason
        elif kind is Disconnect:
            return "closed"
        elif kind is KeepAlive:
            await asyncio.Event().wait()
        elif kind is Malformed or kind is Raw:
            data = chunk.payload.encode() if kind is Malformed else chunk.data
            await connection.respond(200, data, {"content-type": "application/json"})
            return "completed"
        elif kind is ErrorEvent:
            body = json.dumps(_error_body(chunk.message, chunk.type, chunk.code)).encode()
            await connection.respond(500, body, {"content-type": "application/json"})
            return "completed"
    return gathered


async def _whole(
    connection: _Connection, request: RecordedRequest, model: str, chunks: AsyncIterator[Any]
) -> Outcome:
    """Answer a request that does not stream with one object: a ``chat.completion``,
    or a ``response`` for the Responses API."""
    gathered = await _gather(connection, chunks)
    if not isinstance(gathered, _Gathered):
        return gathered
    build = _response_object if request.api == "responses" else _chat_completion
    body = json.dumps(build(gathered, request, model)).encode()
    await connection.respond(200, body, {"content-type": "application/json"})
    return "completed"


def _chat_completion(gathered: _Gathered, request: RecordedRequest, model: str) -> Any:
    calls = tuple(
        ToolCall(id=c.call_id, name=c.name, arguments=c.arguments) for c in gathered.calls
    )
    text = "".join(gathered.text) or None
    message = to_openai_message(AssistantMessage(content=text, tool_calls=calls))
    if not calls:
        message.pop("tool_calls", None)
    if gathered.thinking:
        message["reasoning_content"] = "".join(gathered.thinking)
    usage = gathered.usage or _estimate_usage(request)
    return {
        "id": f"chatcmpl-loopback-{request.index + 1}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model or model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": gathered.reason}
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
    }


def _response_object(gathered: _Gathered, request: RecordedRequest, model: str) -> Any:
    items = _ResponseItems(request)
    output: list[dict[str, Any]] = []
    if gathered.thinking:
        output.append(items.reasoning("".join(gathered.thinking)))
    if gathered.text:
        output.append(items.message("".join(gathered.text)))
    output.extend(items.call(call.call_id, call.name, call.arguments) for call in gathered.calls)
    return items.response(model, output, gathered.usage, gathered.reason)


class _ResponseItems:
    """The output items and the ``response`` object of the Responses API, for one request."""

    def __init__(self, request: RecordedRequest) -> None:
        self.request = request
        self.count = 0
        include = request.body.get("include") if isinstance(request.body, dict) else None
        #: Whether the request asked for its reasoning encrypted (to send it back).
        self.encrypted = isinstance(include, list) and "reasoning.encrypted_content" in include

    def _id(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_loopback_{self.request.index + 1}_{self.count}"

    def reasoning(self, text: str, item_id: str | None = None) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": item_id or self._id("rs"),
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": text}],
        }
        if self.encrypted:
            item["encrypted_content"] = "loopback-encrypted:" + text
        return item

    def message(self, text: str, item_id: str | None = None) -> dict[str, Any]:
        return {
            "id": item_id or self._id("msg"),
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }

    def call(
        self, call_id: str, name: str, arguments: str, item_id: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": item_id or self._id("fc"),
            "type": "function_call",
            "status": "completed",
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
        }

    def response(
        self,
        model: str,
        output: list[dict[str, Any]] | None = None,
        usage: UsageDelta | Usage | None = None,
        reason: str | None = None,
        status: str | None = None,
    ) -> dict[str, Any]:
        if status is None:
            status = "incomplete" if reason == "length" else "completed"
        report: dict[str, Any] | None = None
        if status != "in_progress":
            usage = usage or _estimate_usage(self.request)
            report = {
                "input_tokens": usage.prompt_tokens,
                "output_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            }
        return {
            "id": f"resp_loopback_{self.request.index + 1}",
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": self.request.model or model,
            "output": output or [],
            "usage": report,
            "error": None,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
        }


#: For the items whose text streams (a message, reasoning): the events that open its part,
#: carry its text and close it, where in the item the text goes, and the empty part.
_STREAMED: dict[str, tuple[str, str, str, dict[str, int], dict[str, Any]]] = {
    "message": (
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        {"content_index": 0},
        {"type": "output_text", "text": "", "annotations": []},
    ),
    "reasoning": (
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        {"summary_index": 0},
        {"type": "summary_text", "text": ""},
    ),
}


class _ResponsesEncoder:
    """Provider chunks as the Responses API's stream events."""

    def __init__(self, stream: _Stream, request: RecordedRequest, model: str) -> None:
        self.stream = stream
        self.model = model
        self.items = _ResponseItems(request)
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        #: The item being streamed (a message or reasoning): its kind, id and text so far.
        self.open: tuple[str, str, list[str]] | None = None
        self.calls: dict[str, tuple[str, int]] = {}
        self.usage: UsageDelta | Usage | None = None
        self.reason: str | None = None

    async def start(self) -> None:
        response = self.items.response(self.model, status="in_progress")
        await self._event("response.created", response=response)
        await self._event("response.in_progress", response=response)

    async def chunk(self, chunk: Any) -> None:
        kind = type(chunk)
        if kind is TextDelta or kind is Reasoning or kind is ReasoningDelta:
            streamed = "message" if kind is TextDelta else "reasoning"
            item_id = await self._open(streamed, chunk.text)
            _, delta, _, where, _ = _STREAMED[streamed]
            index = len(self.output)
            await self._event(delta, item_id=item_id, output_index=index, **where, delta=chunk.text)
        elif kind is ToolArgsDelta:
            if chunk.call_id not in self.calls:
                await self._close()
                item = self.items.call(chunk.call_id, chunk.name, "")
                item["status"] = "in_progress"
                self.calls[chunk.call_id] = (item["id"], len(self.output))
                self.output.append(item)
                await self._event(
                    "response.output_item.added", output_index=len(self.output) - 1, item=item
                )
            item_id, index = self.calls[chunk.call_id]
            await self._event(
                "response.function_call_arguments.delta",
                item_id=item_id,
                output_index=index,
                delta=chunk.delta,
            )
        elif kind is ToolCallReady:
            item_id, index = self.calls[chunk.call_id]
            item = self.items.call(chunk.call_id, chunk.name, chunk.arguments, item_id)
            self.output[index] = item
            await self._event(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                arguments=chunk.arguments,
            )
            await self._event("response.output_item.done", output_index=index, item=item)
        elif kind is UsageDelta:
            self.usage = chunk
        elif kind is Finish:
            self.reason = chunk.reason
        else:
            raise TypeError(f"not a loopback script item: {chunk!r}")

    async def error(self, item: ErrorEvent) -> None:
        await self._event("error", code=item.code or item.type, message=item.message, param=None)

    async def end(self) -> None:
        await self._close()
        response = self.items.response(self.model, self.output, self.usage, self.reason)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        await self._event(kind, response=response)

    async def _open(self, kind: str, text: str) -> str:
        """The id of the open item of this kind (opening it, closing another), whose
        text grows by ``text``."""
        if self.open is not None and self.open[0] == kind:
            self.open[2].append(text)
            return self.open[1]
        await self._close()
        index = len(self.output)
        if kind == "message":
            item = {**self.items.message(""), "status": "in_progress", "content": []}
        else:
            item = {"id": self.items._id("rs"), "type": "reasoning", "summary": []}
        await self._event("response.output_item.added", output_index=index, item=item)
        added, _, _, where, part = _STREAMED[kind]
        await self._event(added, item_id=item["id"], output_index=index, **where, part=part)
        self.open = (kind, item["id"], [text])
        return str(item["id"])

    async def _close(self) -> None:
        if self.open is None:
            return
        kind, item_id, pieces = self.open
        self.open = None
        index = len(self.output)
        text = "".join(pieces)
        _, _, done, where, _ = _STREAMED[kind]
        await self._event(done, item_id=item_id, output_index=index, **where, text=text)
        if kind == "message":
            item = self.items.message(text, item_id)
        else:
            item = self.items.reasoning(text, item_id)
        self.output.append(item)
        await self._event("response.output_item.done", output_index=index, item=item)

    async def _event(self, kind: str, **fields: Any) -> None:
        payload = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        await self.stream.data(json.dumps(payload, separators=(",", ":")), event=kind)


def _estimate_usage(request: RecordedRequest) -> Usage:
    """A rough usage (four characters a prompt token), for replies that script none."""
    prompt = sum(len(json.dumps(m.get("content"))) for m in request.messages)
    # One streamed chunk is about one token; the first chunk only names the role.
    return Usage(max(1, prompt // 4), max(1, len(request.sent) - 1))


def _error_body(message: str, type: str = "invalid_request_error", code: Any = None) -> Any:
    return {"error": {"message": message, "type": type, "param": None, "code": code}}


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


async def _wait_future(future: concurrent.futures.Future[Any], timeout: float) -> None:  # noqa: ASYNC109
    """Await a thread-safe future from any event loop, with a timeout, without cancelling it."""
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake(_: concurrent.futures.Future[Any]) -> None:
        def settle() -> None:
            if not woken.done():
                woken.set_result(None)

        with contextlib.suppress(RuntimeError):  # the waiting loop is gone
            loop.call_soon_threadsafe(settle)

    future.add_done_callback(wake)
    await asyncio.wait_for(woken, timeout)
