"""OpenAIProvider: OpenAI and every OpenAI-compatible chat-completions server.

The official ``openai`` SDK builds and sends the request (configuration from
``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``, auth, headers, timeouts, HTTP status
errors); the provider reads the Server-Sent Events body itself, line by line
with pydantic-core's JSON parser, because the SDK's typed stream builds a pydantic model per
chunk and costs several times more CPU than everything else in a run.

Chunks become rxagent events as the bytes arrive: ``TextDelta``,
``ReasoningDelta`` (``reasoning_content`` or ``reasoning``, where a server
sends them), ``ToolArgsDelta`` per argument fragment, ``ToolCallReady`` once a
call's arguments are complete (when the next call starts or the choice
finishes, so the step can start that tool while later calls still stream),
``UsageDelta`` and ``Finish``.

Failures are :class:`~rxagent.errors.ProviderError` subclasses that keep the
status code, the server's message and whether a retry can help. The SDK's own
retries are off: every retry is the provider's, with backoff that honours
``retry-after``, and each is announced by a ``StepRetry`` event.

Time is bounded at every stage (see :class:`OpenAIProvider` for the defaults and
why): connecting, the wait for the response head, the silence between data
events (keep-alive comments are not progress), the whole answer, and the time a
turn may spend on retries.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import email.utils
import json
import logging
import math
import os
import random
import ssl
import time
import weakref
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import httpx2
import openai
from openai import AsyncOpenAI
from pydantic_core import from_json
from reactivex import Observable

from rxagent._text import clip
from rxagent.aio import from_async_iterable
from rxagent.errors import ProviderError
from rxagent.events import ReasoningDelta, StepRetry, TextDelta, ToolArgsDelta, UsageDelta
from rxagent.providers.base import Finish, ProviderChunk, ProviderRequest, ToolCallReady

if TYPE_CHECKING:
    from openai._types import RequestOptions

    from rxagent.events import AgentRun as _AgentRun

__all__ = [
    "AuthenticationError",
    "BadRequest",
    "ConnectionFailed",
    "DeadlineExceeded",
    "EventTooLarge",
    "MalformedStream",
    "OpenAIProvider",
    "RateLimitError",
    "RetryPolicy",
    "ServerError",
    "StatusError",
    "StreamError",
    "StreamInterrupted",
    "StreamStalled",
]

log = logging.getLogger("rxagent.providers.openai")


# -- errors -----------------------------------------------------------------------------
class StatusError(ProviderError):
    """The server answered with an HTTP error status.

    ``status_code`` is the status, ``message`` includes the server's own
    message (also in ``server_message``), ``body`` is the decoded error body,
    ``code``/``error_type`` are the error's ``code`` and ``type`` fields, and
    ``retry_after`` the delay in seconds the server asked for, if it did.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        retryable: bool,
        server_message: str = "",
        body: object = None,
        code: str | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
        partial: _AgentRun | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, retryable=retryable, partial=partial)
        self.server_message = server_message
        self.body = body
        self.code = code
        self.error_type = error_type
        self.retry_after = retry_after
        self.request_id = request_id


class BadRequest(StatusError):
    """4xx: the request is wrong (bad parameters, unknown model, ...); a retry will not help."""


class AuthenticationError(StatusError):
    """401 or 403: the API key is missing, wrong, or not allowed to do this."""


class RateLimitError(StatusError):
    """429: too many requests or tokens; retried after ``retry_after`` or a backoff."""


class ServerError(StatusError):
    """5xx (or 408/409): the server failed; a retry may help."""


class ConnectionFailed(ProviderError):
    """No answer: the connection was refused or dropped, or the answer did not come in time."""


class StreamInterrupted(ProviderError):
    """The stream broke after it began: the connection dropped, or it ended before ``[DONE]``."""


class StreamStalled(StreamInterrupted):
    """No data event for longer than the provider's ``read_timeout`` (comments do not count)."""


class DeadlineExceeded(StreamInterrupted):
    """The whole answer took longer than the provider's ``total_timeout``."""


class MalformedStream(ProviderError):
    """The server sent something that is not a chat-completions event stream."""


class EventTooLarge(MalformedStream):
    """One Server-Sent Event was larger than the provider's ``max_event_size``."""


class StreamError(ProviderError):
    """The server reported an error inside the stream (an ``error`` object)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retryable: bool = False,
        server_message: str = "",
        code: str | None = None,
        error_type: str | None = None,
        partial: _AgentRun | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, retryable=retryable, partial=partial)
        self.server_message = server_message
        self.code = code
        self.error_type = error_type


# -- retries ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """When and how long the provider waits before it tries a turn again.

    Transient failures (429, 5xx, connection errors, a stream that stalls or
    drops) before the first chunk are retried up to ``max_retries`` times.
    The wait is the server's ``retry-after``/``retry-after-ms`` when it gave
    one (a request to wait longer than ``max_retry_after`` is not retried),
    else ``base_delay * 2**n`` capped at ``max_delay``, less up to ``jitter``
    of it at random. With ``mid_stream``, a stream that breaks after output
    began is also tried again from the start of the step (``StepRetry`` tells
    observers to drop the step's partial text), unless a tool call was
    already complete: a tool may be running, so that turn is never retried.

    ``max_elapsed`` bounds a turn's retrying in wall time: no attempt starts
    later than ``max_elapsed`` seconds after the turn's first (its wait
    included; ``None``: no bound). The default, 120 s, lets a server that
    does not answer within the default ``first_byte_timeout`` (60 s) be tried
    once more, and fails a turn that gets nowhere after about two minutes
    instead of six.
    """

    max_retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 8.0
    jitter: float = 0.25
    max_retry_after: float = 60.0
    mid_stream: bool = False
    max_elapsed: float | None = 120.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be at least 0, got {self.max_retries}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("retry delays must not be negative")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter}")
        if self.max_elapsed is not None and self.max_elapsed < 0:
            raise ValueError(f"max_elapsed must not be negative, got {self.max_elapsed}")

    def wait(
        self, retry: int, retry_after: float | None = None, elapsed: float = 0.0
    ) -> float | None:
        """Seconds to wait before retry number ``retry`` (1-based), ``elapsed`` seconds
        into the turn; ``None``: do not retry."""
        if retry > self.max_retries:
            return None
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            wait = float(retry_after)
        else:
            backoff = min(self.base_delay * 2.0 ** (retry - 1), self.max_delay)
            wait = backoff * (1 - self.jitter * random.random())
        if self.max_elapsed is not None and elapsed + wait > self.max_elapsed:
            return None
        return wait


_DEFAULT_RETRY = RetryPolicy()


class OpenAIProvider:
    """A provider for OpenAI and OpenAI-compatible servers (vLLM, Ollama, llama.cpp, LM Studio).

    ``model`` is the model name. ``client`` is an ``openai.AsyncOpenAI`` to use
    (else one is made from ``base_url`` and ``api_key``, which default to
    ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` as in the SDK; a server given by
    URL without a key gets a placeholder key, since local servers ignore it).
    ``request_options`` (``temperature``, ``max_tokens``, ``tool_choice``,
    ``parallel_tool_calls``, ``response_format``, a server's own such as
    ``top_k``, ...) go in the body of every request unchanged, and the
    agent's ``options`` after them; the SDK's per-request options
    (``extra_headers``, ``extra_query``, ``extra_body``, ``timeout``) are
    applied as the SDK applies them.

    ``retry`` says how transient failures are retried (see :class:`RetryPolicy`;
    by default twice, within two minutes of the turn's start).

    Timeouts, in seconds (``None`` lifts one), for each attempt:

    * ``connect_timeout`` (10): to open the connection. Connecting takes
      milliseconds when the server is up; ten seconds rides out a slow DNS or
      TLS handshake without hiding a server that is down.
    * ``first_byte_timeout`` (60): from sending the request to the response
      head. Servers answer the head before they generate (OpenAI, vLLM) or with
      the first token (Ollama, llama.cpp, which may first load the model); a
      minute covers a cold model load, and a server that has not started to
      answer by then is tried again (:class:`ConnectionFailed`).
    * ``read_timeout`` (120): the longest silence between two data events.
      SSE comments (``: keep-alive``) do not count as progress, so a server
      that only keeps the connection alive fails with :class:`StreamStalled`
      instead of holding the run forever. Two minutes leave room for a long
      prompt's prefill and a reasoning model's silent thinking; raise it for
      models that think longer without streaming anything.
    * ``total_timeout`` (600): the whole answer, head to ``[DONE]``
      (:class:`DeadlineExceeded`). Ten minutes is the openai SDK's own default
      timeout, and far above a normal turn (8,000 tokens at 15 tokens/s);
      raise it (or pass ``None``) for very long answers from slow servers.

    A stream that has finished (its ``finish_reason`` came) is never turned
    into an error by a timeout or a dropped connection after it: it ends there.

    ``max_event_size`` (characters, default 16 MiB) caps one Server-Sent Event
    (and a non-streamed answer): far above any real chunk, even a whole tool
    call that writes a large file, it bounds the memory a broken server can
    take; a larger event fails with :class:`EventTooLarge`.

    ``stream(request)`` is a cold Observable: each subscription sends the
    request; disposing it closes the HTTP response at once.
    """

    #: The ``gen_ai.provider.name`` of tracing (``rxagent.otel``): the API spoken.
    provider_name = "openai"

    def __init__(
        self,
        model: str,
        *,
        client: AsyncOpenAI | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        retry: RetryPolicy | None = None,
        connect_timeout: float | None = 10.0,
        first_byte_timeout: float | None = 60.0,
        read_timeout: float | None = 120.0,
        total_timeout: float | None = 600.0,
        max_event_size: int = 16 * 1024 * 1024,
        **request_options: Any,
    ) -> None:
        if client is not None and (base_url is not None or api_key is not None):
            raise ValueError("pass either client= or base_url=/api_key=, not both")
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("first_byte_timeout", first_byte_timeout),
            ("read_timeout", read_timeout),
            ("total_timeout", total_timeout),
        ):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, got {value!r}")
        if max_event_size < 1:
            raise ValueError(f"max_event_size must be positive, got {max_event_size!r}")
        self.model = model
        self.retry = retry or _DEFAULT_RETRY
        self.connect_timeout = connect_timeout
        self.first_byte_timeout = first_byte_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        self.max_event_size = max_event_size
        self.options: dict[str, Any] = dict(request_options)
        self._owns_client = client is None
        if client is None:
            client = _make_client(base_url, api_key)
        # The provider's own deadlines bound every stage (see _Deadlines); the HTTP
        # client keeps only the connect timeout, for its clearer error. (A per-read
        # timeout in the client would also cost CPU on every read of the stream.)
        client = client.with_options(
            max_retries=0, timeout=openai.Timeout(None, connect=connect_timeout)
        )
        self.client: AsyncOpenAI = client
        # An HTTP client's pooled connections belong to the event loop that opened
        # them, so a provider used from several loops (one asyncio.run() after
        # another, a notebook and a script) keeps one HTTP client per loop.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncOpenAI] = (
            weakref.WeakKeyDictionary()
        )
        self._first_client_taken = False

    def __repr__(self) -> str:
        return f"OpenAIProvider(model={self.model!r}, base_url={str(self.client.base_url)!r})"

    @property
    def base_url(self) -> str:
        return str(self.client.base_url)

    # -- the provider protocol --------------------------------------------------------
    def stream(self, request: ProviderRequest) -> Observable[ProviderChunk]:
        """The model's answer to ``request`` as an Observable of provider chunks."""
        return from_async_iterable(lambda: self._turn(request))

    async def aclose(self) -> None:
        """Close the HTTP client this provider made for the running event loop."""
        if not self._owns_client:
            return
        loop = asyncio.get_running_loop()
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.close()

    async def __aenter__(self) -> OpenAIProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- one turn, with its retries ---------------------------------------------------
    async def _turn(self, request: ProviderRequest) -> AsyncGenerator[ProviderChunk, None]:
        client = self._client()
        loop = asyncio.get_running_loop()
        started = loop.time()
        retries = 0
        while True:
            parser = _ChunkParser(request.step)
            try:
                # aclosing: when this generator is closed at a yield, the attempt
                # (and so the HTTP response) is closed now, not when collected.
                async with contextlib.aclosing(self._attempt(client, request, parser)) as chunks:
                    async for chunk in chunks:
                        yield chunk
                return
            except ProviderError as error:
                failure = error
            wait = self._retry_wait(failure, retries + 1, parser, loop.time() - started)
            if wait is None:
                raise failure
            retries += 1
            yield StepRetry(step=request.step, attempt=retries, error=str(failure))
            await asyncio.sleep(wait)

    def _retry_wait(
        self, error: ProviderError, retry: int, parser: _ChunkParser, elapsed: float
    ) -> float | None:
        if not error.retryable:
            return None
        if parser.began and (not self.retry.mid_stream or parser.ready_sent):
            return None  # output began: fail with the partial run, or retry only when asked
        return self.retry.wait(retry, getattr(error, "retry_after", None), elapsed)

    def _client(self) -> AsyncOpenAI:
        if not self._owns_client:
            return self.client
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            if self._first_client_taken:
                client = self.client.with_options(http_client=openai.DefaultAsyncHttpx2Client())
            else:
                client, self._first_client_taken = self.client, True
            self._clients[loop] = client
        return client

    def _body(self, request: ProviderRequest) -> tuple[dict[str, Any], RequestOptions]:
        """The JSON body (options as they are) and the SDK's options for one request."""
        body: dict[str, Any] = {"model": self.model, "messages": request.openai_messages()}
        if request.tools:
            body["tools"] = request.openai_tools()
        body["stream_options"] = {"include_usage": True}
        sdk: dict[str, Any] = {}
        for options in (self.options, request.options):
            for key, value in options.items():
                if key in _SDK_OPTIONS:
                    sdk[key] = value
                else:
                    body[key] = value
        body["stream"] = True
        # The SDK asks for JSON; a server that negotiates would then not stream.
        headers = {"Accept": "text/event-stream", **(sdk.get("extra_headers") or {})}
        extra: RequestOptions = {"headers": headers}
        if sdk.get("extra_body"):
            extra["extra_json"] = sdk["extra_body"]
        if sdk.get("extra_query"):
            extra["params"] = sdk["extra_query"]
        if "timeout" in sdk:
            extra["timeout"] = sdk["timeout"]
        return body, extra

    # -- one attempt ------------------------------------------------------------------
    async def _attempt(
        self, client: AsyncOpenAI, request: ProviderRequest, parser: _ChunkParser
    ) -> AsyncGenerator[ProviderChunk, None]:
        url = f"{str(client.base_url).rstrip('/')}/chat/completions"
        body, options = self._body(request)
        deadlines = _Deadlines(self.first_byte_timeout, self.read_timeout, self.total_timeout)
        http: httpx2.Response | None = None
        try:
            # The SDK builds and sends the request (base URL, auth, headers, timeouts)
            # and turns an error status into its exception; the body is read here.
            # (``create()`` would first walk the whole conversation through its typed
            # parameter transform: a millisecond and more per request, for nothing.)
            deadlines.waiting = True
            try:
                http = await client.post(
                    "/chat/completions",
                    cast_to=httpx2.Response,
                    body=body,
                    options=options,
                    stream=True,
                )
            except openai.APIStatusError as error:
                raise _status_error(error) from error
            except openai.APITimeoutError as error:
                if isinstance(error.__cause__, httpx2.ConnectTimeout):
                    reason = f"could not connect within connect_timeout={self.connect_timeout:g} s"
                else:  # the SDK's own timeout= option
                    reason = f"{type(error.__cause__).__name__} (the timeout= option)"
                raise ConnectionFailed(f"no answer from {url}: {reason}", retryable=True) from error
            except openai.APIConnectionError as error:
                cause = error.__cause__
                reason = f"{type(cause).__name__}: {cause}" if cause else error.message
                raise ConnectionFailed(
                    f"could not reach {url}: {reason}", retryable=True
                ) from error
            except asyncio.CancelledError:
                if deadlines.took_back():
                    raise ConnectionFailed(
                        f"no answer from {url} {deadlines.why(self)}", retryable=True
                    ) from None
                raise
            finally:
                deadlines.waiting = False
            deadlines.head_arrived()
            stream = http.headers.get("content-type", "").lower().startswith("text/event-stream")
            decoder = _SSEDecoder(self.max_event_size)
            whole: list[bytes] = []
            size = 0
            blocks = http.aiter_bytes()
            while True:
                if deadlines.expired:
                    failure = self._read_failure(None, deadlines, decoder, parser, url)
                    if failure is None:
                        break
                    raise failure
                deadlines.waiting = True
                try:
                    block = await blocks.__anext__()
                except StopAsyncIteration:
                    break
                except (asyncio.CancelledError, Exception) as error:
                    failure = self._read_failure(error, deadlines, decoder, parser, url)
                    if failure is None:
                        break  # the answer had finished: what broke after it does not matter
                    if failure is error:
                        raise
                    raise failure from (
                        None if isinstance(error, asyncio.CancelledError) else error
                    )
                finally:
                    deadlines.waiting = False
                if not stream:
                    whole.append(block)
                    size += len(block)
                    if size > self.max_event_size:
                        raise decoder.too_large()
                    deadlines.progress()
                    continue
                try:
                    events = decoder.feed(block)
                except MalformedStream as error:
                    if not parser.finished:
                        raise
                    log.warning("ignoring what %s sent after its finish reason: %s", url, error)
                    break
                if events:
                    for event, payload in events:
                        try:
                            chunks = parser.feed(payload, event)
                        except ProviderError as error:
                            if not parser.finished:
                                raise
                            # The answer was complete: what came after it cannot undo it.
                            log.warning(
                                "ignoring what %s sent after its finish reason: %s", url, error
                            )
                            parser.done = True
                            break
                        for chunk in chunks:
                            yield chunk
                        if parser.done:
                            break
                    if parser.done:
                        # As the SDK does: [DONE] ends the answer, whether or not the
                        # server then closes the connection.
                        break
                    deadlines.progress()
            if not stream:
                content_type = http.headers.get("content-type", "")
                for chunk in parser.whole(b"".join(whole), content_type, http.status_code):
                    yield chunk
                return
            if not parser.done:
                for event, payload in decoder.flush():  # the last event lacked its blank line
                    for chunk in parser.feed(payload, event):
                        yield chunk
            for chunk in parser.end(url):
                yield chunk
        finally:
            deadlines.close()
            if http is not None:
                # Closing a response that was not read to the end closes its connection:
                # that is how a cancelled run reaches the server. A connection that is
                # already broken may fail to close; that must not hide why it broke.
                with contextlib.suppress(*_TRANSPORT_ERRORS):
                    await http.aclose()

    def _read_failure(
        self,
        error: BaseException | None,
        deadlines: _Deadlines,
        decoder: _SSEDecoder,
        parser: _ChunkParser,
        url: str,
    ) -> BaseException | None:
        """What reading the body failing with ``error`` (``None``: a deadline passed
        between reads) means: the error to raise, or ``None`` when the answer had
        finished and simply ends there."""
        if isinstance(error, asyncio.CancelledError) and not deadlines.took_back():
            return error  # a cancellation from outside: not ours to turn into anything
        if parser.finished:
            log.debug("the stream from %s broke after its finish reason: %r", url, error)
            return None
        if error is None or isinstance(error, asyncio.CancelledError):
            if deadlines.expired == "total":
                return DeadlineExceeded(
                    f"the answer from {url} took longer than total_timeout="
                    f"{self.total_timeout:g} s (after {parser.events} event(s))",
                    retryable=False,
                )
            quiet = f" ({decoder.comments} comment(s) since)" if decoder.comments else ""
            return StreamStalled(
                f"the stream from {url} stalled: no data for {self.read_timeout:g} s"
                f"{quiet} (read_timeout; after {parser.events} event(s))",
                retryable=True,
            )
        if isinstance(error, httpx2.TimeoutException):  # an SDK timeout= option
            return StreamStalled(
                f"the stream from {url} stalled: {type(error).__name__} "
                f"(after {parser.events} event(s))",
                retryable=True,
            )
        if isinstance(error, _TRANSPORT_ERRORS):
            return StreamInterrupted(
                f"the stream from {url} broke after {parser.events} event(s): "
                f"{type(error).__name__}: {error}",
                retryable=True,
            )
        return error


class _Deadlines:
    """The deadlines of one attempt, checked lazily by one timer re-armed when it fires.

    Until the response head arrives the deadline is ``first_byte`` after the
    start; after it, ``idle`` after the last data event (comments are not
    progress); always at most ``total`` after the start. Progress only moves a
    number, so a stream of many small events costs no timer work; the timer
    fires at the earliest possible deadline and, if progress moved it, sleeps
    again. A deadline that passes while the attempt waits for the network
    cancels that wait (the attempt takes the cancellation back and raises a
    timeout error); one that passes while the attempt is busy is seen at its
    next read.
    """

    __slots__ = (
        "_cancelled",
        "_handle",
        "_loop",
        "_task",
        "expired",
        "first_byte",
        "head",
        "idle",
        "last",
        "started",
        "total",
        "waiting",
    )

    def __init__(self, first_byte: float | None, idle: float | None, total: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self.first_byte = first_byte
        self.idle = idle
        self.total = total
        self.started = self.last = self._loop.time()
        self.head = False
        #: Which deadline passed: "first_byte", "idle" or "total".
        self.expired: str | None = None
        #: Whether the attempt is waiting for the network (then a deadline cancels it).
        self.waiting = False
        self._cancelled = False
        self._handle: asyncio.TimerHandle | None = None
        self._arm()

    def _deadline(self) -> tuple[float, str]:
        at, which = math.inf, "idle"
        if not self.head:
            if self.first_byte is not None:
                at, which = self.started + self.first_byte, "first_byte"
        elif self.idle is not None:
            at = self.last + self.idle
        if self.total is not None and self.started + self.total < at:
            at, which = self.started + self.total, "total"
        return at, which

    def _arm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        at, _ = self._deadline()
        if at != math.inf:
            self._handle = self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = self._loop.time()
        at, which = self._deadline()
        if which == "idle" and not self.waiting:
            # Busy elsewhere (a consumer of the chunks): that is not the server's silence.
            self.last = now
            at, which = self._deadline()
        if now < at:
            self._handle = self._loop.call_at(at, self._fire)
            return
        self.expired = which
        if self.waiting and self._task is not None:
            self._cancelled = True
            self._task.cancel()

    def head_arrived(self) -> None:
        self.head = True
        self.last = self._loop.time()
        self._arm()  # the idle deadline may come before the first-byte one

    def progress(self) -> None:
        self.last = self._loop.time()

    def took_back(self) -> bool:
        """Whether a cancellation was this object's doing (it is then taken back)."""
        if not self._cancelled or self._task is None:
            return False
        self._cancelled = False
        # Another cancellation may have come as well: that one stands.
        return self._task.uncancel() == 0

    def why(self, provider: OpenAIProvider) -> str:
        if self.expired == "total":
            return f"within total_timeout={provider.total_timeout:g} s"
        return f"within first_byte_timeout={provider.first_byte_timeout:g} s"

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


#: SSE field names that may stand alone on a line (a field with no value).
_FIELDS = frozenset({"data", "event", "id", "retry"})
#: Request options that are the SDK's (not body fields).
_SDK_OPTIONS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})
#: What reading a response body raises when the connection breaks.
_TRANSPORT_ERRORS = (httpx2.HTTPError, httpx2.StreamError, anyio.EndOfStream, ssl.SSLError, OSError)


def _make_client(base_url: str | None, api_key: str | None) -> AsyncOpenAI:
    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
    if api_key is None and base_url is not None:
        api_key = "not-needed"  # local OpenAI-compatible servers take any key
    try:
        return AsyncOpenAI(api_key=api_key, base_url=base_url)
    except openai.OpenAIError as error:
        raise ValueError(
            "OpenAIProvider needs an API key: pass api_key=... or set OPENAI_API_KEY "
            "(or give base_url= for a server that needs none)"
        ) from error


# -- the wire: Server-Sent Events -------------------------------------------------------
class _SSEDecoder:
    """Server-Sent Events out of the bytes of a response body, as they arrive.

    Lines end in ``\n`` (or ``\r\n``); an event is its ``data`` lines, dispatched
    at the blank line that ends it; comments (``: ...``) keep a connection alive
    and are counted, not dispatched. A line that has not ended yet is kept as
    pieces and joined once, when it ends, so a long line arriving over many
    reads costs time linear in its length. One event (its data and the line
    still arriving) may hold at most ``limit`` characters.
    """

    __slots__ = (
        "_data",
        "_decode",
        "_event",
        "_limit",
        "_pending",
        "_pending_size",
        "_size",
        "comments",
    )

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._decode = codecs.getincrementaldecoder("utf-8")().decode
        self._pending: list[str] = []
        self._pending_size = 0
        self._data: list[str] = []
        self._size = 0
        self._event = ""
        #: Comments since the last event.
        self.comments = 0

    def feed(self, block: bytes) -> list[tuple[str, str]]:
        """The events (``(event name, data)``) that ``block`` completes."""
        try:
            lines = self._decode(block).split("\n")
        except UnicodeDecodeError as error:
            raise MalformedStream(f"the stream is not UTF-8: {error}") from None
        if len(lines) == 1:  # no line ended: keep the piece
            if lines[0]:
                self._pending.append(lines[0])
                self._pending_size += len(lines[0])
                if self._pending_size + self._size > self._limit:
                    raise self.too_large()
            return []
        if self._pending:
            self._pending.append(lines[0])
            lines[0] = "".join(self._pending)
            self._pending = []
            self._pending_size = 0
        rest = lines.pop()
        out = self._lines(lines)
        if rest:
            self._pending.append(rest)
            self._pending_size = len(rest)
            if self._pending_size + self._size > self._limit:
                raise self.too_large()
        return out

    def _lines(self, lines: list[str]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        data = self._data
        for line in lines:
            if line[-1:] == "\r":
                line = line[:-1]
            if not line:
                if data:
                    out.append((self._event, data[0] if len(data) == 1 else "\n".join(data)))
                    data = self._data = []
                    self._size = 0
                    self._event = ""
                    self.comments = 0
            elif line[:5] == "data:":
                value = line[6:] if line[5:6] == " " else line[5:]
                self._size += len(value)
                if self._size > self._limit:
                    raise self.too_large()
                data.append(value)
            elif line[:1] == ":":
                self.comments += 1  # servers send comments to keep the connection alive
            elif line[:6] == "event:":
                self._event = line[6:].strip()
            elif not (line[:3] == "id:" or line[:6] == "retry:" or line in _FIELDS):
                raise MalformedStream(
                    f"the server sent a line that is not Server-Sent Events: {clip(line)!r}"
                )
        return out

    def flush(self) -> list[tuple[str, str]]:
        """The body ended: the last event, when it lacked its blank line."""
        try:
            rest = "".join(self._pending) + self._decode(b"", True)
        except UnicodeDecodeError as error:
            raise MalformedStream(f"the stream is not UTF-8: {error}") from None
        self._pending = []
        return self._lines([rest, ""]) if rest.rstrip("\r") else self._lines([""])

    def too_large(self) -> EventTooLarge:
        return EventTooLarge(
            f"the server sent an event larger than max_event_size={self._limit} characters; "
            f"pass OpenAIProvider(max_event_size=...) to accept larger ones"
        )


# -- from chunks to events --------------------------------------------------------------
class _OpenCall:
    __slots__ = ("call_id", "given_id", "index", "name", "parts")

    def __init__(self, index: int, call_id: str, given_id: bool, name: str) -> None:
        self.index = index
        self.call_id = call_id
        self.given_id = given_id
        self.name = name
        self.parts: list[str] = []


class _ChunkParser:
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
        self.step = step
        #: Whether any output (text, reasoning, arguments, usage) was emitted.
        self.began = False
        #: Whether a ToolCallReady was emitted (then the turn must never be retried).
        self.ready_sent = False
        self.events = 0
        #: Whether ``[DONE]`` came: nothing after it is read.
        self.done = False
        #: Whether a finish reason came: the answer is complete.
        self.finished = False
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
        try:
            obj = from_json(payload)
        except ValueError as error:
            raise MalformedStream(
                f"the server sent a data line that is not JSON ({error}): {clip(payload)!r}"
            ) from None
        if event == "error" or (type(obj) is dict and obj.get("error")):
            raise _stream_error(obj)
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
                            _content_parts(content, step, out)
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
            return name != call.name or _whole_json(call.parts)
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
        try:
            obj = json.loads(body)
        except ValueError:
            raise MalformedStream(
                f"the server answered {status} with {content_type or 'no content type'} "
                f"instead of an event stream: {clip(body)!r}"
            ) from None
        if type(obj) is dict and obj.get("error"):
            raise _stream_error(obj)
        try:
            message = obj["choices"][0]["message"]
            out: list[ProviderChunk] = []
            content = message.get("content")
            if content:
                if type(content) is str:
                    out.append(TextDelta(step=self.step, text=content))
                else:
                    _content_parts(content, self.step, out)
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


def _content_parts(parts: Any, step: int, out: list[ProviderChunk]) -> None:
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


def _whole_json(parts: list[str]) -> bool:
    """Whether the argument pieces so far make a whole JSON value."""
    if not parts or parts[-1].rstrip()[-1:] not in ("}", "]"):
        return False  # a cheap no for a call whose arguments are still coming
    try:
        from_json("".join(parts))
    except ValueError:
        return False
    return True


def _status_error(error: openai.APIStatusError) -> StatusError:
    status = error.status_code
    body = error.body
    detail = body.get("error", body) if isinstance(body, dict) else None
    server_message = ""
    code = error_type = None
    if isinstance(detail, dict):
        server_message = str(detail.get("message") or "")
        code = None if detail.get("code") is None else str(detail.get("code"))
        error_type = None if detail.get("type") is None else str(detail.get("type"))
    elif isinstance(detail, str):
        server_message = detail
    elif isinstance(body, str):
        server_message = body
    headers = error.response.headers
    retry_after = _retry_after(headers)
    kind: type[StatusError]
    if status == 429:
        kind, retryable = RateLimitError, True
    elif status >= 500 or status in (408, 409):
        kind, retryable = ServerError, True
    elif status in (401, 403):
        kind, retryable = AuthenticationError, False
    else:
        kind, retryable = BadRequest, False
    should_retry = headers.get("x-should-retry")
    if should_retry in ("true", "false"):  # the server's word wins, as in the SDK
        retryable = should_retry == "true"
    text = f"HTTP {status} from {error.request.url}: {server_message or clip(str(body))!r}"
    if retry_after is not None:
        text += f" (retry after {retry_after:g} s)"
    return kind(
        text,
        status_code=status,
        retryable=retryable,
        server_message=server_message,
        body=body,
        code=code,
        error_type=error_type,
        retry_after=retry_after,
        request_id=error.request_id,
    )


_RETRYABLE_TYPES = frozenset(
    {"server_error", "rate_limit_exceeded", "rate_limit_error", "overloaded_error", "timeout"}
)


def _stream_error(obj: Any) -> StreamError:
    detail = obj.get("error", obj) if isinstance(obj, dict) else obj
    if not isinstance(detail, dict):
        detail = {"message": str(detail)}
    message = str(detail.get("message") or "(no message)")
    code = detail.get("code")
    error_type = detail.get("type")
    status = code if isinstance(code, int) else None
    if status is None and isinstance(code, str) and code.isdigit():
        status = int(code)
    retryable = (status is not None and (status == 429 or status >= 500)) or (
        error_type in _RETRYABLE_TYPES or code in _RETRYABLE_TYPES
    )
    return StreamError(
        f"the server reported an error in the stream: {message}"
        + (f" (type {error_type})" if error_type else "")
        + (f" (code {code})" if code is not None else ""),
        status_code=status,
        retryable=retryable,
        server_message=message,
        code=None if code is None else str(code),
        error_type=None if error_type is None else str(error_type),
    )


def _retry_after(headers: httpx2.Headers) -> float | None:
    """The server's requested delay in seconds (``retry-after-ms`` or ``retry-after``)."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            if name == "retry-after":
                try:
                    when = email.utils.parsedate_to_datetime(value).timestamp()
                except (TypeError, ValueError, IndexError, OverflowError):
                    return None
                return max(0.0, when - time.time())
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None
