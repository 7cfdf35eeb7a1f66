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
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import email.utils
import json
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
    """The stream went silent for longer than the provider's ``read_timeout``."""


class MalformedStream(ProviderError):
    """The server sent something that is not a chat-completions event stream."""


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
    """

    max_retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 8.0
    jitter: float = 0.25
    max_retry_after: float = 60.0
    mid_stream: bool = False

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be at least 0, got {self.max_retries}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("retry delays must not be negative")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter}")

    def wait(self, retry: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait before retry number ``retry`` (1-based); ``None``: do not retry."""
        if retry > self.max_retries:
            return None
        if retry_after is not None:
            return float(retry_after) if retry_after <= self.max_retry_after else None
        backoff = min(self.base_delay * 2.0 ** (retry - 1), self.max_delay)
        return backoff * (1 - self.jitter * random.random())


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

    ``retry`` says how transient failures are retried (see
    :class:`RetryPolicy`); ``read_timeout`` (seconds) bounds the wait for the
    answer and any silence in the stream (``None`` keeps the client's own
    timeout); ``connect_timeout`` bounds connecting.

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
        read_timeout: float | None = 120.0,
        connect_timeout: float = 10.0,
        **request_options: Any,
    ) -> None:
        if client is not None and (base_url is not None or api_key is not None):
            raise ValueError("pass either client= or base_url=/api_key=, not both")
        self.model = model
        self.retry = retry or _DEFAULT_RETRY
        self.read_timeout = read_timeout
        self.options: dict[str, Any] = dict(request_options)
        self._owns_client = client is None
        if client is None:
            client = _make_client(base_url, api_key)
        if read_timeout is not None:
            timeout = openai.Timeout(read_timeout, connect=min(connect_timeout, read_timeout))
            client = client.with_options(max_retries=0, timeout=timeout)
        else:
            client = client.with_options(max_retries=0)
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
            wait = self._retry_wait(failure, retries + 1, parser)
            if wait is None:
                raise failure
            retries += 1
            yield StepRetry(step=request.step, attempt=retries, error=str(failure))
            await asyncio.sleep(wait)

    @property
    def _in_time(self) -> str:
        return "in time" if self.read_timeout is None else f"for {self.read_timeout:g} s"

    def _retry_wait(self, error: ProviderError, retry: int, parser: _ChunkParser) -> float | None:
        if not error.retryable:
            return None
        if parser.began and (not self.retry.mid_stream or parser.ready_sent):
            return None  # output began: fail with the partial run, or retry only when asked
        return self.retry.wait(retry, getattr(error, "retry_after", None))

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
        http: httpx2.Response | None = None
        try:
            # The SDK builds and sends the request (base URL, auth, headers, timeouts)
            # and turns an error status into its exception; the body is read here.
            # (``create()`` would first walk the whole conversation through its typed
            # parameter transform: a millisecond and more per request, for nothing.)
            http = await client.post(
                "/chat/completions",
                cast_to=httpx2.Response,
                body=body,
                options=options,
                stream=True,
            )
            content_type = http.headers.get("content-type", "")
            if not content_type.lower().startswith("text/event-stream"):
                for chunk in parser.whole(await http.aread(), content_type, http.status_code):
                    yield chunk
                return
            # Server-Sent Events, parsed here: lines end in \n (or \r\n); an event is
            # its data lines, dispatched at the blank line that ends it.
            decode = codecs.getincrementaldecoder("utf-8")().decode
            rest = ""
            data: list[str] = []
            event = ""
            async for block in http.aiter_bytes():
                lines = (rest + decode(block)).split("\n") if rest else decode(block).split("\n")
                rest = lines.pop()
                for line in lines:
                    if line[-1:] == "\r":
                        line = line[:-1]
                    if not line:
                        if data:
                            chunks = parser.feed(data, event)
                            data = []
                            event = ""
                            for chunk in chunks:
                                yield chunk
                    elif line[:5] == "data:":
                        data.append(line[6:] if line[5:6] == " " else line[5:])
                    elif line[:1] == ":":
                        pass  # a comment: servers send them to keep the connection alive
                    elif line[:6] == "event:":
                        event = line[6:].strip()
                    elif not (line[:3] == "id:" or line[:6] == "retry:" or line in _FIELDS):
                        raise MalformedStream(
                            f"the server sent a line that is not Server-Sent Events: {_clip(line)}"
                        )
            rest = (rest + decode(b"", True)).rstrip("\r")
            if rest.startswith("data:"):
                data.append(rest[6:] if rest[5:6] == " " else rest[5:])
            if data:  # the last event lacked its blank line
                for chunk in parser.feed(data, event):
                    yield chunk
            for chunk in parser.end(url):
                yield chunk
        except openai.APIStatusError as error:
            raise _status_error(error) from error
        except openai.APITimeoutError as error:
            raise ConnectionFailed(
                f"no answer from {url} {self._in_time}", retryable=True
            ) from error
        except openai.APIConnectionError as error:
            cause = error.__cause__
            reason = f"{type(cause).__name__}: {cause}" if cause else error.message
            raise ConnectionFailed(f"could not reach {url}: {reason}", retryable=True) from error
        except httpx2.TimeoutException as error:
            raise StreamStalled(
                f"the stream from {url} stalled: no data {self._in_time} "
                f"(after {parser.events} event(s))",
                retryable=True,
            ) from error
        except _TRANSPORT_ERRORS as error:
            raise StreamInterrupted(
                f"the stream from {url} broke after {parser.events} event(s): "
                f"{type(error).__name__}: {error}",
                retryable=True,
            ) from error
        except UnicodeDecodeError as error:
            raise MalformedStream(f"the stream from {url} is not UTF-8: {error}") from None
        finally:
            if http is not None:
                # Closing a response that was not read to the end closes its connection:
                # that is how a cancelled run reaches the server. A connection that is
                # already broken may fail to close; that must not hide why it broke.
                with contextlib.suppress(*_TRANSPORT_ERRORS):
                    await http.aclose()


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
    """The state of one streamed answer: the tool call being assembled, usage seen, the end."""

    def __init__(self, step: int) -> None:
        self.step = step
        #: Whether any output (text, reasoning, arguments, usage) was emitted.
        self.began = False
        #: Whether a ToolCallReady was emitted (then the turn must never be retried).
        self.ready_sent = False
        self.events = 0
        self.done = False
        self.finished = False
        self.current: _OpenCall | None = None
        self.completed: set[int] = set()
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def feed(self, data: list[str], event: str) -> list[ProviderChunk]:
        """The chunks one SSE event (its ``data`` lines) turns into."""
        self.events += 1
        payload = data[0] if len(data) == 1 else "\n".join(data)
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
                f"the server sent a data line that is not JSON ({error}): {_clip(payload)}"
            ) from None
        if event == "error" or (type(obj) is dict and obj.get("error")):
            raise _stream_error(obj)
        if type(obj) is not dict:
            raise MalformedStream(
                f"the server sent a chunk that is not an object: {_clip(payload)}"
            )
        try:
            out = self._chunk(obj)
        except (AttributeError, TypeError, KeyError, ValueError) as error:
            raise MalformedStream(
                f"the server sent a chunk of the wrong shape ({error}): {_clip(payload)}"
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
                        if type(content) is not str:
                            raise TypeError("delta.content is not a string")
                        out.append(TextDelta(step=step, text=content))
                    if not content or len(delta) > 1:  # most deltas are text and nothing else
                        thinking = delta.get("reasoning_content") or delta.get("reasoning")
                        if thinking and type(thinking) is str:
                            out.append(ReasoningDelta(step=step, text=thinking))
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
            name = function.get("name")
            arguments = function.get("arguments")
            call = self.current
            if (
                call is None
                or (index is not None and index != call.index)
                or (given is not None and call.given_id and given != call.call_id)
            ):
                # A new call: the one before it is complete. (Some servers send no
                # index, or index 0 for every call; a new id then marks a new call.)
                if index is not None and index in self.completed:
                    raise MalformedStream(
                        f"tool call {index} got more arguments after it was complete"
                    )
                self._complete_call(out)
                self.calls += 1
                call = _OpenCall(
                    index if index is not None else 1_000_000 + self.calls,
                    given or f"call_{self.step}_{self.calls}",
                    given is not None,
                    "",
                )
                self.current = call
            if name and not call.name:
                if type(name) is not str:
                    raise TypeError("function.name is not a string")
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

    def _complete_call(self, out: list[ProviderChunk]) -> None:
        call = self.current
        if call is None:
            return
        self.current = None
        self.completed.add(call.index)
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
                f"instead of an event stream: {_clip(body)}"
            ) from None
        if type(obj) is dict and obj.get("error"):
            raise _stream_error(obj)
        try:
            message = obj["choices"][0]["message"]
            out: list[ProviderChunk] = []
            content = message.get("content")
            if content:
                out.append(TextDelta(step=self.step, text=str(content)))
            thinking = message.get("reasoning_content") or message.get("reasoning")
            if thinking and type(thinking) is str:
                out.append(ReasoningDelta(step=self.step, text=thinking))
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
                f"{_clip(body)}"
            ) from None
        self.began = self.ready_sent = True
        return out


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
    text = f"HTTP {status} from {error.request.url}: {server_message or _clip(str(body))}"
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


def _clip(text: bytes | str, limit: int = 200) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")
