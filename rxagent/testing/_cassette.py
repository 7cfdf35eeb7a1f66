"""Cassettes: a provider's HTTP exchanges recorded to JSON lines, and played back.

:func:`record` returns a copy of an ``OpenAIProvider`` (or
``OpenAIResponsesProvider``) whose HTTP goes through a transport that writes
every request and the raw bytes of its answer, as they arrived, to a cassette;
:meth:`LoopbackServer.from_cassette <rxagent.testing.LoopbackServer.from_cassette>`
answers requests from one, in order, byte for byte, and answers a request that
differs from the recorded one with a 400 that says where.

One JSON object a line, one line an exchange::

    {"request": {"method": "POST", "url": "...", "endpoint": "/chat/completions",
                 "headers": {...}, "body": {...}},
     "response": {"status": 200, "headers": {...}, "body": "data: ...", "chunks": [431, 97]},
     "ended": "completed"}

``chunks`` are the byte lengths of the pieces the body arrived in (``body`` is
its text, or ``body_base64`` when it is not UTF-8); ``ended`` says how the
answer ended: ``completed``, ``closed`` (the client stopped reading, as at
``[DONE]``: the replay ends the body there) or the error that broke it (the
replay drops the connection there); ``response`` is ``null`` when no answer
came (the replay hangs up). Secrets
never reach the file: auth headers (``authorization``, ``api-key``, cookies,
organization and project ids) and query parameters that look like keys are
``REDACTED``, and so is the API key (16 characters or more) wherever else it
appears.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import threading
import weakref
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rxagent.testing._script import HangUp, RawResponse, Status, Turn, status

if TYPE_CHECKING:
    import httpx2

    from rxagent.testing._server import RecordedRequest

__all__ = ["Cassette", "record"]

P = TypeVar("P")

REDACTED = "REDACTED"
#: Headers whose values are secrets (or name the account), in any cassette.
_SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "api-key",
        "x-api-key",
        "x-goog-api-key",
        "cookie",
        "set-cookie",
        "openai-organization",
        "openai-project",
    }
)
_SECRET_QUERY = re.compile(r"key|token|secret|sig|password", re.IGNORECASE)
#: Headers about one connection's framing, not the answer: not replayed as they were.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


def record(provider: P, path: str | os.PathLike[str]) -> P:
    """A copy of ``provider`` that records every request and answer to the cassette ``path``.

    ``provider`` is an :class:`~rxagent.providers.openai.OpenAIProvider` or an
    ``OpenAIResponsesProvider``; the copy talks to the same server with the
    same options, through an HTTP client of its own. The file is started
    afresh, and each exchange is written (in the order of the requests) once
    its answer has been read. Record one session at a time (requests are
    replayed in order)::

        provider = t.record(ra.OpenAIProvider("gpt-4o-mini"), "tests/cassettes/weather.jsonl")
        ra.Agent(provider, tools=[get_weather]).run_sync("Weather in Paris?")
    """
    import httpx2
    import openai

    from rxagent.providers.openai._provider import StreamingProvider

    if not isinstance(provider, StreamingProvider):
        raise TypeError(
            f"record() records an OpenAIProvider or OpenAIResponsesProvider, not {provider!r}"
        )
    api_key = provider.client.api_key
    base = urlsplit(str(provider.client.base_url)).path.rstrip("/")
    writer = _Writer(Path(path), secrets=[api_key] if api_key else [], base=base)

    def transport() -> httpx2.AsyncBaseTransport:
        inner = httpx2.AsyncHTTPTransport(limits=openai.DEFAULT_CONNECTION_LIMITS)
        transport: httpx2.AsyncBaseTransport = _recording_transport()(inner, writer)
        return transport

    recording = copy.copy(provider)
    recording._transport = transport
    http_client = openai.DefaultAsyncHttpx2Client(transport=transport())
    recording.client = provider.client.with_options(http_client=http_client)
    recording._owns_client = True
    recording._clients = weakref.WeakKeyDictionary()
    recording._first_client_taken = False
    return recording


class _Writer:
    """Writes a cassette's exchanges in the order of their requests, as each completes."""

    def __init__(self, path: Path, secrets: list[str], base: str) -> None:
        self.path = path
        # Placeholder keys ("x", "not-needed") are no secrets, and too short to scrub
        # from a body without mangling it; real keys are far longer.
        self.secrets = [s for s in secrets if len(s) >= 16]
        self.base = base
        self.lock = threading.Lock()
        self.next = 0  # the index of the next request
        self.written = 0  # how many exchanges are in the file
        self.done: dict[int, dict[str, Any]] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def begin(self) -> int:
        with self.lock:
            self.next += 1
            return self.next - 1

    def finish(self, index: int, entry: dict[str, Any]) -> None:
        line = json.dumps(self._scrub(entry), ensure_ascii=False)
        with self.lock:
            self.done[index] = {"line": line}
            lines = []
            while self.written in self.done:
                lines.append(self.done.pop(self.written)["line"])
                self.written += 1
            if lines:
                with self.path.open("a", encoding="utf-8") as out:
                    out.write("".join(f"{line}\n" for line in lines))

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._scrub(v) for v in value]
        return value


def _headers(headers: httpx2.Headers) -> dict[str, str]:
    return {
        name.lower(): (REDACTED if name.lower() in _SECRET_HEADERS else value)
        for name, value in headers.items()
    }


def _url(url: str) -> str:
    parts = urlsplit(url)
    query = [(k, REDACTED if _SECRET_QUERY.search(k) else v) for k, v in parse_qsl(parts.query)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _body(content: bytes) -> Any:
    try:
        return json.loads(content) if content else None
    except ValueError:
        return content.decode("utf-8", "replace")


@functools.cache
def _recording_transport() -> type[Any]:
    """The recording transport class (made on first use: httpx2 is imported only then)."""
    import httpx2

    class _RecordingTransport(httpx2.AsyncBaseTransport):
        """An HTTP transport that records each exchange through the one it wraps."""

        def __init__(self, inner: httpx2.AsyncBaseTransport, writer: _Writer) -> None:
            self.inner = inner
            self.writer = writer

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            # Plain bytes in the cassette: a compressed body would be unreadable there.
            request.headers["accept-encoding"] = "identity"
            content = await request.aread()
            path = request.url.path
            endpoint = path[len(self.writer.base) :] if path.startswith(self.writer.base) else path
            entry: dict[str, Any] = {
                "request": {
                    "method": request.method,
                    "url": _url(str(request.url)),
                    "endpoint": endpoint,
                    "headers": _headers(request.headers),
                    "body": _body(content),
                },
                "response": None,
            }
            index = self.writer.begin()
            try:
                response = await self.inner.handle_async_request(request)
            except BaseException as error:
                entry["ended"] = f"{type(error).__name__}: {error}"
                self.writer.finish(index, entry)
                raise
            entry["response"] = {
                "status": response.status_code,
                "headers": _headers(response.headers),
            }
            tee = _Tee(response.stream, entry, index, self.writer)
            return httpx2.Response(
                status_code=response.status_code,
                headers=response.headers,
                stream=tee,
                extensions=response.extensions,
                request=request,
            )

        async def aclose(self) -> None:
            await self.inner.aclose()

    class _Tee(httpx2.AsyncByteStream):
        """A response body that keeps what passes through it, and records it when closed."""

        def __init__(self, inner: Any, entry: dict[str, Any], index: int, writer: _Writer) -> None:
            self.inner = inner
            self.entry = entry
            self.index = index
            self.writer = writer
            self.chunks: list[bytes] = []
            self.ended = "closed"
            self.recorded = False

        async def __aiter__(self) -> AsyncIterator[bytes]:
            try:
                async for chunk in self.inner:
                    self.chunks.append(chunk)
                    yield chunk
            except BaseException as error:
                self.ended = f"{type(error).__name__}: {error}"
                raise
            self.ended = "completed"

        async def aclose(self) -> None:
            try:
                aclose = getattr(self.inner, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                self._record()

        def _record(self) -> None:
            if self.recorded:
                return
            self.recorded = True
            data = b"".join(self.chunks)
            response = self.entry["response"]
            try:
                response["body"] = data.decode("utf-8")
            except UnicodeDecodeError:
                response["body_base64"] = base64.b64encode(data).decode("ascii")
            response["chunks"] = [len(chunk) for chunk in self.chunks]
            self.entry["ended"] = self.ended
            self.writer.finish(self.index, self.entry)

    return _RecordingTransport


class Cassette:
    """A recorded session, answering a loopback server's requests in order.

    Each request must match the next recorded one (method, endpoint and JSON
    body); its answer is the recorded status, headers and body, sent in the
    pieces it arrived in. A request that differs, or one past the end, gets a
    400 whose message says how (``type: cassette_mismatch``), which the
    provider raises as a ``BadRequest``.
    """

    def __init__(self, exchanges: list[dict[str, Any]], name: str = "cassette") -> None:
        self.exchanges = exchanges
        self.name = name
        self.next = 0
        #: What went wrong matching requests, in order (also sent as the 400's message).
        self.mismatches: list[str] = []

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Cassette:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        exchanges = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                exchanges.append(json.loads(line))
            except ValueError as error:
                raise ValueError(f"{path}:{number} is not a cassette line: {error}") from None
        return cls(exchanges, str(path))

    @property
    def model(self) -> str | None:
        """The model the recorded session asked for."""
        for exchange in self.exchanges:
            body = exchange["request"].get("body")
            if isinstance(body, dict) and isinstance(body.get("model"), str):
                return str(body["model"])
        return None

    def __call__(self, request: RecordedRequest) -> Turn:
        index, self.next = self.next, self.next + 1
        if index >= len(self.exchanges):
            return self._mismatch(
                f"{self.name} has {len(self.exchanges)} exchange(s); "
                f"request {index + 1} ({request.method} {request.path}) has none"
            )
        recorded = self.exchanges[index]["request"]
        path = request.path.split("?", 1)[0].rstrip("/")
        endpoint = str(recorded.get("endpoint") or "").rstrip("/")
        if request.method != recorded["method"] or not path.endswith(endpoint):
            return self._mismatch(
                f"request {index + 1} is {request.method} {path}, but {self.name} recorded "
                f"{recorded['method']} {endpoint}"
            )
        difference = _difference(recorded.get("body"), request.body)
        if difference is not None:
            return self._mismatch(
                f"request {index + 1} differs from the one {self.name} recorded: {difference}"
            )
        return _answer(self.exchanges[index])

    def _mismatch(self, message: str) -> Status:
        self.mismatches.append(message)
        return status(400, message, type="cassette_mismatch")


def _answer(exchange: Mapping[str, Any]) -> Turn:
    response = exchange.get("response")
    if response is None:
        return HangUp()  # no answer came: the connection failed
    if "body_base64" in response:
        data = base64.b64decode(response["body_base64"])
    else:
        data = str(response.get("body") or "").encode("utf-8")
    headers = {k: v for k, v in response.get("headers", {}).items() if k not in _FRAMING}
    ended = exchange.get("ended", "completed")
    chunks = tuple(response.get("chunks") or ())
    status_code = int(response["status"])
    # "closed": the client stopped reading (at [DONE], say) before the body's end; what
    # the server sent after is unknown, and servers end the body there: so does the replay.
    then: Literal["end", "disconnect"] = "end" if ended in ("completed", "closed") else "disconnect"
    return RawResponse(status_code, data, headers, chunks, then)


def _difference(recorded: Any, got: Any, where: str = "body") -> str | None:
    """Where two JSON values first differ (``None``: they are equal)."""
    if isinstance(recorded, dict) and isinstance(got, dict):
        for key in list(recorded) + [k for k in got if k not in recorded]:
            if key not in got:
                return f"{where}.{key} was recorded but is missing"
            if key not in recorded:
                return f"{where}.{key} is new: {_show(got[key])}"
            found = _difference(recorded[key], got[key], f"{where}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(recorded, list) and isinstance(got, list):
        for n, (a, b) in enumerate(zip(recorded, got, strict=False)):
            found = _difference(a, b, f"{where}[{n}]")
            if found is not None:
                return found
        if len(recorded) != len(got):
            return f"{where} has {len(got)} item(s), recorded {len(recorded)}"
        return None
    if recorded != got or type(recorded) is not type(got):
        return f"{where} is {_show(got)}, recorded {_show(recorded)}"
    return None


def _show(value: Any) -> str:
    from rxagent._text import one_line

    return one_line(json.dumps(value) if isinstance(value, str) else value, 80)
