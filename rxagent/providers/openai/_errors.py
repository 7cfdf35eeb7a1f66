"""The provider's errors, what the server's errors mean, and when to retry."""

from __future__ import annotations

import email.utils
import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx2
import openai

from rxagent._text import clip
from rxagent.errors import ProviderError

if TYPE_CHECKING:
    from rxagent.events import AgentRun as _AgentRun

__all__ = [
    "DEFAULT_RETRY",
    "AuthenticationError",
    "BadRequest",
    "ConnectionFailed",
    "DeadlineExceeded",
    "EventTooLarge",
    "MalformedStream",
    "RateLimitError",
    "RetryPolicy",
    "ServerError",
    "StatusError",
    "StreamError",
    "StreamInterrupted",
    "StreamStalled",
    "retry_after_of",
    "status_error",
    "stream_error",
]


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


DEFAULT_RETRY = RetryPolicy()


def status_error(error: openai.APIStatusError) -> StatusError:
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
    retry_after = retry_after_of(headers)
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
    text = f"HTTP {status} from {error.request.url}: {server_message or repr(clip(str(body)))}"
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


def stream_error(obj: Any) -> StreamError:
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


def retry_after_of(headers: httpx2.Headers) -> float | None:
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
