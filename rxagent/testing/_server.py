"""LoopbackServer: an OpenAI-compatible chat-completions server on 127.0.0.1.

It speaks HTTP/1.1 with keep-alive (as the ``openai`` SDK's connection pool
expects) and answers ``POST .../chat/completions`` from a script, streaming
Server-Sent Events in chunked transfer encoding when the request asks for
``stream: true``. It runs on an event loop of its own in a daemon thread, so
the same server serves async tests, sync scripts and notebooks alike, and the
client's event loop is never the server's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

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
    as_answer,
)

if TYPE_CHECKING:
    from rxagent.providers.openai import OpenAIProvider

__all__ = ["LoopbackServer", "Outcome", "RecordedRequest"]

log = logging.getLogger("rxagent.testing")

#: How a request's answer ended: still going, sent in full, the client went away
#: first, the server hung up (a scripted fault), or the server was stopped.
Outcome: TypeAlias = Literal["pending", "completed", "disconnected", "closed", "stopped"]

#: Request body fields that are not "options".
_NOT_OPTIONS = frozenset({"model", "messages", "tools", "stream", "stream_options"})
_MAX_HEAD = 64 * 1024


class RecordedRequest:
    """A request the server received, and how its answer went.

    ``body`` is the JSON body; ``messages``, ``tools``, ``model`` and
    ``options`` (every other field but ``stream`` and ``stream_options``) are
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
        return list(self._field("messages") or [])

    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self._field("tools") or [])

    @property
    def tool_names(self) -> list[str]:
        return [t.get("function", {}).get("name", "") for t in self.tools]

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
        """The content of the first message, when it is a system message."""
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
        return content if isinstance(content, str) else json.dumps(content)

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
    """One client connection: a read buffer over the stream reader, and the writer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()

    async def _fill(self) -> bool:
        try:
            data = await self.reader.read(65536)
        except (ConnectionError, OSError):
            return False
        if not data:
            return False
        self.buffer += data
        return True

    async def read_head(self) -> bytes | None:
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buffer[:end])
                del self.buffer[: end + 4]
                return head
            if len(self.buffer) > _MAX_HEAD:
                raise _BadRequest("request head too large")
            if not await self._fill():
                return None

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not await self._fill():
                raise _BadRequest("the client closed the connection mid-body")
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def read_line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            if not await self._fill():
                raise _BadRequest("the client closed the connection mid-body")

    async def read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size = int((await self.read_line()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while await self.read_line():  # trailers, up to the blank line
                    pass
                return bytes(body)
            body += await self.read_exactly(size)
            await self.read_line()

    async def gone(self) -> None:
        """Return when the client closes the connection (data it sends meanwhile is kept)."""
        while await self._fill():
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
        head = await connection.read_head()
        if head is None:
            return False
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            await self._send_json(connection, 400, _error_body("malformed request line"))
            return False
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("expect", "").lower() == "100-continue":
            connection.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body_bytes = await connection.read_chunked()
        else:
            body_bytes = await connection.read_exactly(int(headers.get("content-length", "0")))
        keep_alive = headers.get("connection", "").lower() != "close"
        path = target.split("?", 1)[0]

        if method == "GET" and path.rstrip("/").endswith("/models"):
            models = {
                "object": "list",
                "data": [{"id": self.model, "object": "model", "owned_by": "rxagent"}],
            }
            await self._send_json(connection, 200, models)
            return keep_alive
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            await self._send_json(
                connection, 404, _error_body(f"no route for {method} {path}", "not_found")
            )
            return keep_alive
        try:
            body = json.loads(body_bytes or b"null")
        except ValueError as error:
            await self._send_json(connection, 400, _error_body(f"the body is not JSON: {error}"))
            return keep_alive

        request = RecordedRequest(len(self._requests), method, target, headers, body)
        self._record(request)
        answer = self._answer_for(request)
        if isinstance(answer, str):  # the script could not answer: say why
            await self._send_json(connection, 400, _error_body(answer, "loopback_script_error"))
            request._end("completed")
            return keep_alive
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
            return keep_alive
        if isinstance(answer, RawResponse):
            await self._send(connection, answer.status, answer.body, answer.headers)
            request._end("completed")
            return keep_alive
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
        return keep_alive and outcome == "completed"

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
        self, connection: _Connection, request: RecordedRequest, reply: Reply
    ) -> Outcome:
        delay = self.chunk_delay if reply.chunk_delay is None else reply.chunk_delay
        if request.stream:
            self._streams[0] += 1
            try:
                streamer = _Streamer(connection, request, self.model, delay, self._streams)
                return await streamer.play(reply.items)
            finally:
                self._streams[0] -= 1
        return await _play_whole(connection, request, self.model, reply.items)

    async def _send_json(
        self,
        connection: _Connection,
        status: int,
        body: Any,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        await self._send(
            connection,
            status,
            json.dumps(body).encode(),
            {"content-type": "application/json", **dict(headers or {})},
        )

    async def _send(
        self, connection: _Connection, status: int, body: bytes, headers: Mapping[str, str]
    ) -> None:
        lines = [f"HTTP/1.1 {status} {_reason(status)}", f"content-length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        connection.writer.write(head + body)
        await connection.writer.drain()


class _Streamer:
    """Plays a reply's items as chat-completion chunks over SSE in chunked encoding."""

    def __init__(
        self,
        connection: _Connection,
        request: RecordedRequest,
        model: str,
        delay: float,
        streams: list[int],
    ) -> None:
        self.writer = connection.writer
        self.streams = streams
        self.request = request
        self.delay = delay
        self.sent_any = False
        self.written = 0
        self.template = {
            "id": f"chatcmpl-loopback-{request.index + 1}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.model or model,
            "system_fingerprint": None,
        }

    async def play(self, items: Iterable[Item]) -> Outcome:
        self.writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
            + f"x-request-id: req_loopback_{self.request.index + 1}\r\n\r\n".encode()
        )
        await self._choice({"role": "assistant", "content": ""})
        calls = 0
        finished = False
        reported: Usage | None = None
        for item in items:
            if isinstance(item, str):
                await self._choice({"content": item})
            elif isinstance(item, Call):
                await self._call(item, calls)
                calls += 1
            elif isinstance(item, Reasoning):
                await self._choice({item.field: item.text})
            elif isinstance(item, Usage):
                reported = item
            elif isinstance(item, Finish):
                await self._choice({}, item.reason)
                finished = True
            elif isinstance(item, Delay):
                await asyncio.sleep(item.seconds)
            elif isinstance(item, Gate):
                await item._pass()
            elif isinstance(item, Disconnect):
                return "closed"
            elif isinstance(item, Stall):
                await asyncio.Event().wait()  # until the client leaves or the server stops
            elif isinstance(item, KeepAlive):
                while True:  # until the client leaves or the server stops
                    await self._write(b": keep-alive\n\n")
                    await asyncio.sleep(item.every)
            elif isinstance(item, Malformed):
                await self._data(item.payload)
            elif isinstance(item, ErrorEvent):
                error = _error_body(item.message, item.type, item.code)
                await self._data(json.dumps(error))
                await self._end()  # OpenAI ends the body after an error event, without [DONE]
                return "completed"
            elif isinstance(item, Raw):
                await self._write(item.data)
            else:
                raise TypeError(f"not a loopback script item: {item!r}")
        if not finished:
            await self._choice({}, "tool_calls" if calls else "stop")
        options = self.request.body.get("stream_options") or {}
        if reported is None and isinstance(options, dict) and options.get("include_usage"):
            reported = _estimate_usage(self.request)
        if reported is not None:
            usage = {
                "prompt_tokens": reported.prompt_tokens,
                "completion_tokens": reported.completion_tokens,
                "total_tokens": reported.prompt_tokens + reported.completion_tokens,
            }
            await self._data(json.dumps({**self.template, "choices": [], "usage": usage}))
        await self._data("[DONE]")
        await self._end()
        return "completed"

    async def _call(self, call: Call, index: int) -> None:
        call_id = call.id or f"call_loopback_{self.request.index + 1}_{index + 1}"
        first = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        await self._choice({"tool_calls": [first]})
        for piece in _split(call.arguments, call.fragments):
            await self._choice({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})

    async def _choice(self, delta: dict[str, Any], finish_reason: str | None = None) -> None:
        chunk = {
            **self.template,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        await self._data(json.dumps(chunk, separators=(",", ":")))

    async def _data(self, payload: str) -> None:
        if self.sent_any and self.delay:
            await self.writer.drain()
            await asyncio.sleep(self.delay)
        self.sent_any = True
        self.request.sent.append(payload)
        await self._write(b"data: " + payload.encode() + b"\n\n")

    async def _write(self, data: bytes) -> None:
        self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await self.writer.drain()
        self.written += 1
        if not self.delay and (self.streams[0] > 1 or self.written % 32 == 0):
            # Take turns with the other streams chunk by chunk, as a fair server does;
            # a stream on its own goes out in bursts (drain() waits only for a client
            # that reads slower than the server writes).
            await asyncio.sleep(0)

    async def _end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()


async def _play_whole(
    connection: _Connection, request: RecordedRequest, model: str, items: Iterable[Item]
) -> Outcome:
    """Answer a non-streaming request with one ``chat.completion`` object."""
    text: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    reported: Usage | None = None
    finish_reason: str | None = None
    for item in items:
        if isinstance(item, str):
            text.append(item)
        elif isinstance(item, Call):
            calls.append(
                {
                    "id": item.id or f"call_loopback_{request.index + 1}_{len(calls) + 1}",
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
            )
        elif isinstance(item, Reasoning):
            thinking.append(item.text)
        elif isinstance(item, Usage):
            reported = item
        elif isinstance(item, Finish):
            finish_reason = item.reason
        elif isinstance(item, Delay):
            await asyncio.sleep(item.seconds)
        elif isinstance(item, Gate):
            await item._pass()
        elif isinstance(item, Disconnect):
            return "closed"
        elif isinstance(item, Stall | KeepAlive):
            await asyncio.Event().wait()
        elif isinstance(item, Malformed | Raw):
            data = item.payload.encode() if isinstance(item, Malformed) else item.data
            await _write_whole(connection, 200, data)
            return "completed"
        elif isinstance(item, ErrorEvent):
            body = json.dumps(_error_body(item.message, item.type, item.code)).encode()
            await _write_whole(connection, 500, body)
            return "completed"
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    reported = reported or _estimate_usage(request)
    completion = {
        "id": f"chatcmpl-loopback-{request.index + 1}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model or model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason or ("tool_calls" if calls else "stop"),
            }
        ],
        "usage": {
            "prompt_tokens": reported.prompt_tokens,
            "completion_tokens": reported.completion_tokens,
            "total_tokens": reported.prompt_tokens + reported.completion_tokens,
        },
    }
    await _write_whole(connection, 200, json.dumps(completion).encode())
    return "completed"


async def _write_whole(connection: _Connection, status: int, body: bytes) -> None:
    head = (
        f"HTTP/1.1 {status} {_reason(status)}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    connection.writer.write(head.encode() + body)
    await connection.writer.drain()


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


def _split(text: str, pieces: int) -> list[str]:
    if pieces <= 1 or len(text) <= 1:
        return [text]
    size = -(-len(text) // pieces)
    return [text[i : i + size] for i in range(0, len(text), size)]


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
