"""The HTTP side of the OpenAI providers: the request, its retries and time bounds, the body.

:class:`StreamingProvider` is what :class:`OpenAIProvider` (chat completions)
and ``OpenAIResponsesProvider`` (the Responses API) share: the SDK client (one
per event loop), the retry loop with ``StepRetry`` events, the deadlines of
each attempt, and reading the Server-Sent Events body into an assembler that
turns each event into provider chunks. A subclass says where to post, what body
to send and how to assemble the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import httpx2
import openai
from openai import AsyncOpenAI
from reactivex import Observable, abc

from rxagent.aio import from_async_iterable, sleep_on
from rxagent.errors import ProviderError
from rxagent.events import StepRetry
from rxagent.providers.base import ProviderChunk, ProviderRequest
from rxagent.providers.openai._assembly import ChunkAssembler
from rxagent.providers.openai._errors import (
    DEFAULT_RETRY,
    ConnectionFailed,
    DeadlineExceeded,
    MalformedStream,
    RetryPolicy,
    StreamInterrupted,
    StreamStalled,
    status_error,
)
from rxagent.providers.openai._wire import TRANSPORT_ERRORS, Deadlines, SSEDecoder

if TYPE_CHECKING:
    from openai._types import RequestOptions

__all__ = ["Assembler", "OpenAIProvider", "StreamingProvider"]

log = logging.getLogger("rxagent.providers.openai")

SDK_OPTIONS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})


class Assembler(Protocol):
    """Turns the events of one answer into provider chunks, and knows where the answer is."""

    #: Whether any output (text, reasoning, arguments, usage) was emitted.
    began: bool
    #: Whether a ToolCallReady was emitted (then the turn must never be retried).
    ready_sent: bool
    #: How many events came.
    events: int
    #: Whether the stream's end marker came: nothing after it is read.
    done: bool
    #: Whether the answer is complete (what breaks after it cannot undo it).
    finished: bool

    def feed(self, payload: str, event: str = "") -> list[ProviderChunk]:
        """The chunks one event (its data, and its name) turns into."""
        ...

    def end(self, url: str) -> list[ProviderChunk]:
        """The body ended (the last chunks, or an error when the answer is incomplete)."""
        ...

    def whole(self, body: bytes, content_type: str, status: int) -> list[ProviderChunk]:
        """The chunks of an answer that came as one JSON object, not a stream."""
        ...


class StreamingProvider:
    """What the OpenAI providers share: client, retries, deadlines, and reading the stream.

    Subclasses set ``path`` (where to post, under the client's base URL) and
    implement :meth:`_body` and :meth:`_assembler`. The arguments are those of
    :class:`OpenAIProvider`.
    """

    path: ClassVar[str]

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
        scheduler: abc.SchedulerBase | None = None,
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
        self.retry = retry or DEFAULT_RETRY
        self.connect_timeout = connect_timeout
        self.first_byte_timeout = first_byte_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        self.max_event_size = max_event_size
        #: The clock of retry backoff (``None``: the event loop's).
        self.scheduler = scheduler
        self.options: dict[str, Any] = dict(request_options)
        self._owns_client = client is None
        if client is None:
            client = _make_client(base_url, api_key, type(self).__name__)
        # The provider's own deadlines bound every stage (see Deadlines); the HTTP
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
        #: Makes the HTTP transport of each client this provider makes (None: httpx's own);
        #: how rxagent.testing.record() records a session.
        self._transport: Callable[[], httpx2.AsyncBaseTransport] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def base_url(self) -> str:
        return str(self.client.base_url)

    # -- what a subclass says ---------------------------------------------------------
    def _body(self, request: ProviderRequest) -> dict[str, Any]:
        """The JSON body of the request, before the options."""
        raise NotImplementedError

    def _assembler(self, request: ProviderRequest) -> Assembler:
        """A new assembler for one attempt at ``request``."""
        raise NotImplementedError

    def _option(self, body: dict[str, Any], key: str, value: Any) -> None:
        """Put one request option in the body (as it is, unless the API names it otherwise)."""
        body[key] = value

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

    async def __aenter__(self) -> StreamingProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _client(self) -> AsyncOpenAI:
        if not self._owns_client:
            return self.client
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            if self._first_client_taken:
                transport = {} if self._transport is None else {"transport": self._transport()}
                http_client = openai.DefaultAsyncHttpx2Client(**transport)
                client = self.client.with_options(http_client=http_client)
            else:
                client, self._first_client_taken = self.client, True
            self._clients[loop] = client
        return client

    def _request(self, request: ProviderRequest) -> tuple[dict[str, Any], RequestOptions]:
        """The JSON body (options as they are) and the SDK's options for one request."""
        body = self._body(request)
        sdk: dict[str, Any] = {}
        for options in (self.options, request.options):
            for key, value in options.items():
                if key in SDK_OPTIONS:
                    sdk[key] = value
                else:
                    self._option(body, key, value)
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

    # -- one turn: attempts, until one answers or no retry is left ---------------------
    async def _turn(self, request: ProviderRequest) -> AsyncGenerator[ProviderChunk, None]:
        # One generator for the whole turn (attempts inlined, not nested generators):
        # every chunk of every answer passes through here.
        client = self._client()
        url = f"{str(client.base_url).rstrip('/')}{self.path}"
        body, options = self._request(request)
        clock = asyncio.get_running_loop().time
        started = clock()
        retries = 0
        while True:
            parser = self._assembler(request)
            deadlines = Deadlines(self.first_byte_timeout, self.read_timeout, self.total_timeout)
            http: httpx2.Response | None = None
            try:
                http = await self._open(client, body, options, url, deadlines)
                stream = (
                    http.headers.get("content-type", "").lower().startswith("text/event-stream")
                )
                decoder = SSEDecoder(self.max_event_size, type(self).__name__)
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
                        cause = None if isinstance(error, asyncio.CancelledError) else error
                        raise failure from cause
                    finally:
                        deadlines.waiting = False
                    if not stream:
                        whole.append(block)
                        size += len(block)
                        if size > self.max_event_size:
                            raise decoder.too_large()
                        deadlines.last = clock()
                        continue
                    try:
                        events = decoder.feed(block)
                    except MalformedStream as error:
                        if not parser.finished:
                            raise
                        log.warning("ignoring what %s sent after its answer: %s", url, error)
                        break
                    if not events:
                        continue  # a piece of a line, or comments: not progress
                    for event, payload in events:
                        try:
                            chunks = parser.feed(payload, event)
                        except ProviderError as error:
                            if not parser.finished:
                                raise
                            # The answer was complete: what came after it cannot undo it.
                            log.warning("ignoring what %s sent after its answer: %s", url, error)
                            parser.done = True
                            break
                        for chunk in chunks:
                            yield chunk
                        if parser.done:
                            break
                    if parser.done:
                        # As the SDK does: the end marker ends the answer, whether or not
                        # the server then closes the connection.
                        break
                    deadlines.last = clock()
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
                return
            except ProviderError as error:
                failure = error
            finally:
                deadlines.close()
                if http is not None:
                    # Closing a response that was not read to the end closes its connection:
                    # that is how a cancelled run reaches the server. A connection that is
                    # already broken may fail to close; that must not hide why it broke.
                    with contextlib.suppress(*TRANSPORT_ERRORS):
                        await http.aclose()
            wait = self._retry_wait(failure, retries + 1, parser, clock() - started)
            if wait is None:
                raise failure
            retries += 1
            yield StepRetry(step=request.step, attempt=retries, error=str(failure))
            await sleep_on(self.scheduler, wait)

    def _retry_wait(
        self, error: ProviderError, retry: int, parser: Assembler, elapsed: float
    ) -> float | None:
        if not error.retryable:
            return None
        if parser.began and (not self.retry.mid_stream or parser.ready_sent):
            return None  # output began: fail with the partial run, or retry only when asked
        return self.retry.wait(retry, getattr(error, "retry_after", None), elapsed)

    async def _open(
        self,
        client: AsyncOpenAI,
        body: dict[str, Any],
        options: RequestOptions,
        url: str,
        deadlines: Deadlines,
    ) -> httpx2.Response:
        """Send the request; the response, once its head arrived."""
        # The SDK builds and sends the request (base URL, auth, headers, timeouts)
        # and turns an error status into its exception; the body is read here.
        # (``create()`` would first walk the whole conversation through its typed
        # parameter transform: a millisecond and more per request, for nothing.)
        deadlines.waiting = True
        try:
            http = await client.post(
                self.path, cast_to=httpx2.Response, body=body, options=options, stream=True
            )
        except openai.APIStatusError as error:
            raise status_error(error) from error
        except openai.APITimeoutError as error:
            if isinstance(error.__cause__, httpx2.ConnectTimeout):
                reason = f"could not connect within connect_timeout={self.connect_timeout:g} s"
            else:  # the SDK's own timeout= option
                reason = f"{type(error.__cause__).__name__} (the timeout= option)"
            raise ConnectionFailed(f"no answer from {url}: {reason}", retryable=True) from error
        except openai.APIConnectionError as error:
            cause = error.__cause__
            reason = f"{type(cause).__name__}: {cause}" if cause else error.message
            raise ConnectionFailed(f"could not reach {url}: {reason}", retryable=True) from error
        except asyncio.CancelledError:
            if deadlines.took_back():
                raise ConnectionFailed(
                    f"no answer from {url} {deadlines.why()}", retryable=True
                ) from None
            raise
        finally:
            deadlines.waiting = False
        deadlines.head_arrived()
        return http

    def _read_failure(
        self,
        error: BaseException | None,
        deadlines: Deadlines,
        decoder: SSEDecoder,
        parser: Assembler,
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
        if isinstance(error, TRANSPORT_ERRORS):
            return StreamInterrupted(
                f"the stream from {url} broke after {parser.events} event(s): "
                f"{type(error).__name__}: {error}",
                retryable=True,
            )
        return error


_FIELDS = frozenset({"data", "event", "id", "retry"})
#: Request options that are the SDK's (not body fields).
_SDK_OPTIONS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})


class OpenAIProvider(StreamingProvider):
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
    by default twice, within two minutes of the turn's start). The waits between
    attempts run on ``scheduler`` (default: the event loop's clock), so a test can
    drive backoff in virtual time (``reactivex.testing.TestScheduler``).

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
    path = "/chat/completions"

    def _body(self, request: ProviderRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": request.openai_messages()}
        if request.tools:
            body["tools"] = request.openai_tools()
        body["stream_options"] = {"include_usage": True}
        return body

    def _assembler(self, request: ProviderRequest) -> ChunkAssembler:
        return ChunkAssembler(request.step)

    async def __aenter__(self) -> OpenAIProvider:
        return self


def _make_client(base_url: str | None, api_key: str | None, name: str) -> AsyncOpenAI:
    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
    if api_key is None and base_url is not None:
        api_key = "not-needed"  # local OpenAI-compatible servers take any key
    try:
        return AsyncOpenAI(api_key=api_key, base_url=base_url)
    except openai.OpenAIError as error:
        raise ValueError(
            f"{name} needs an API key: pass api_key=... or set OPENAI_API_KEY "
            "(or give base_url= for a server that needs none)"
        ) from error
