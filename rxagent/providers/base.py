"""The provider protocol: a request in, an Observable of chunks out.

A provider's ``stream(request)`` returns a cold Observable: subscribing sends
the request, each chunk is emitted the moment it arrives, and disposing the
subscription cancels the request (closing the HTTP stream, for a remote model).

The chunks are the events a provider can know of, stamped with
``request.step`` (:class:`~rxagent.events.TextDelta`,
:class:`~rxagent.events.ReasoningDelta`, :class:`~rxagent.events.ToolArgsDelta`,
:class:`~rxagent.events.UsageDelta`, :class:`~rxagent.events.Structured`,
:class:`~rxagent.events.StepRetry`), plus two that only providers emit:
:class:`ToolCallReady` once a call's arguments are complete, and
:class:`Finish` with the finish reason. A provider that retries a turn emits
``StepRetry`` first and must not retry once it has emitted a ``ToolCallReady``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, runtime_checkable

from reactivex import Observable

from rxagent.events import (
    ReasoningDelta,
    StepRetry,
    Structured,
    TextDelta,
    ToolArgsDelta,
    UsageDelta,
)
from rxagent.messages import Message, to_openai_message
from rxagent.tools import ToolSpec

__all__ = ["Finish", "Provider", "ProviderChunk", "ProviderRequest", "ToolCallReady"]


@dataclass(frozen=True)
class ProviderRequest:
    """What the model is asked: messages, tools, options, and the step it is for."""

    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    #: Request options passed to the provider unchanged (temperature, tool_choice, ...).
    options: Mapping[str, Any] = field(default_factory=dict)
    step: int = 1

    def openai_messages(self) -> list[dict[str, Any]]:
        """The messages as OpenAI chat-completions dicts."""
        return [to_openai_message(m) for m in self.messages]

    def openai_tools(self) -> list[dict[str, Any]]:
        """The tools as OpenAI function tools."""
        return [t.to_openai() for t in self.tools]


@dataclass(frozen=True, slots=True)
class ToolCallReady:
    """A tool call whose arguments are complete (``arguments`` is the whole JSON text)."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Finish:
    """The provider's finish reason for the turn (``stop``, ``tool_calls``, ``length``, ...).

    ``data`` is what the provider needs back with this turn's assistant message on
    the next turn, opaque to rxagent (the Responses API's response id and reasoning
    items); the step keeps it in ``AssistantMessage.provider_data``.
    """

    reason: str | None
    data: Mapping[str, Any] | None = None


ProviderChunk: TypeAlias = (
    TextDelta
    | ReasoningDelta
    | ToolArgsDelta
    | UsageDelta
    | Structured
    | StepRetry
    | ToolCallReady
    | Finish
)


@runtime_checkable
class Provider(Protocol):
    """Anything with ``stream(request) -> Observable[ProviderChunk]``."""

    def stream(self, request: ProviderRequest) -> Observable[ProviderChunk]: ...
