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

from rxagent.providers.openai._errors import (
    AuthenticationError,
    BadRequest,
    ConnectionFailed,
    DeadlineExceeded,
    EventTooLarge,
    MalformedStream,
    RateLimitError,
    RetryPolicy,
    ServerError,
    StatusError,
    StreamError,
    StreamInterrupted,
    StreamStalled,
)
from rxagent.providers.openai._provider import OpenAIProvider

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
