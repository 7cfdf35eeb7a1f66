"""rxagent's exception hierarchy.

Every failure a run reports to ``on_error`` is an :class:`AgentError`. Its
``partial`` attribute holds the :class:`~rxagent.events.AgentRun` so far (the
conversation up to the failure, which still validates), so nothing already
streamed is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rxagent._text import sendable

if TYPE_CHECKING:
    from rxagent.events import AgentRun

__all__ = [
    "AgentError",
    "ApprovalError",
    "OutputValidationError",
    "ProviderError",
    "ToolArgumentsError",
    "ToolCancelled",
    "ToolError",
    "ToolExecutionError",
    "ToolOutputError",
    "ToolTimeoutError",
    "ToolsFailed",
    "UnknownToolError",
]


class AgentError(Exception):
    """Base of every error a run reports; ``partial`` is the run so far.

    The message is made sendable (a lone surrogate, as in a file name quoted from
    ``os.listdir``, becomes U+FFFD): it may reach the model as a tool message, and
    observers as JSON.
    """

    def __init__(self, message: str, *, partial: AgentRun | None = None) -> None:
        message = sendable(message)
        super().__init__(message)
        self.message = message
        self.partial: AgentRun | None = partial


class ApprovalError(AgentError, ValueError):
    """A human-in-the-loop misuse: deciding on an unknown call or one that already ran, or
    on a run's read-only record; edited arguments that do not fit; resuming a
    conversation that cannot be resumed."""


class OutputValidationError(AgentError):
    """The model's structured output did not fit ``output_type``, retries exhausted;
    ``errors`` says why, ``text`` is the model's last answer."""

    def __init__(
        self, message: str, *, errors: str = "", text: str = "", partial: AgentRun | None = None
    ) -> None:
        super().__init__(message, partial=partial)
        self.errors = errors
        self.text = text


class ProviderError(AgentError):
    """The model provider failed: an HTTP error, a broken stream, a bad chunk.

    ``status_code`` is the HTTP status where there is one; ``retryable`` says
    whether trying again may help (rate limits, server errors, connection loss).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retryable: bool = False,
        partial: AgentRun | None = None,
    ) -> None:
        super().__init__(message, partial=partial)
        self.status_code = status_code
        self.retryable = retryable


class ToolError(AgentError):
    """A tool call failed; ``call_id`` and ``tool_name`` say which."""

    def __init__(
        self,
        message: str,
        *,
        call_id: str = "",
        tool_name: str = "",
        partial: AgentRun | None = None,
    ) -> None:
        super().__init__(message, partial=partial)
        self.call_id = call_id
        self.tool_name = tool_name


class ToolCancelled(ToolError):
    """The call was cancelled from its other side (a sub-agent's run was cancelled);
    the step, and the run, are cancelled with it."""


class UnknownToolError(ToolError):
    """The model called a tool the agent does not have."""


class ToolArgumentsError(ToolError):
    """A call's arguments are not JSON (or are nested too deeply to read), or do not fit
    the tool's schema; the tool never ran."""


class ToolExecutionError(ToolError):
    """The tool raised; the original exception is ``__cause__``."""


class ToolOutputError(ToolError):
    """The tool ran, but what it returned (or reported as progress) cannot be turned
    into JSON: bytes that are not UTF-8 text, a dict that holds itself, ... The message
    names the type; the original exception is ``__cause__``."""


class ToolTimeoutError(ToolError):
    """The tool did not finish within its timeout."""


class ToolsFailed(AgentError):
    """Several tool calls failed (``JoinPolicy.JOIN_ALL``); ``errors`` lists them in call order."""

    def __init__(self, errors: Sequence[ToolError], *, partial: AgentRun | None = None) -> None:
        summary = "; ".join(f"{e.tool_name} ({e.call_id}): {e.message}" for e in errors)
        super().__init__(f"{len(errors)} tool call(s) failed: {summary}", partial=partial)
        self.errors: tuple[ToolError, ...] = tuple(errors)
