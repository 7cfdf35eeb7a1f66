"""ScriptedProvider: an offline, deterministic model for tests, demos and notebooks.

Each provider turn plays the next script: plain strings are text pieces, and
the helpers here add tool calls (their arguments streamed in fragments),
usage, reasoning, structured values, pauses and failures::

    from rxagent import scripted as s

    provider = ra.ScriptedProvider([
        ["Let me look. ", s.call("get_weather", {"city": "Paris"}), s.usage(12, 5)],
        ["It is ", "sunny."],
    ])

A turn may also be a function of the request (for answers that depend on the
conversation), and the whole script may be one such function. The provider
records every request it receives in ``requests``, so a test can assert what the
model was sent. The same items script :class:`rxagent.testing.LoopbackServer`,
so one script can be played offline here or over HTTP through the real SDK.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from reactivex import Observable

from rxagent.aio import from_async_iterable
from rxagent.errors import ProviderError
from rxagent.events import (
    ReasoningDelta,
    StepRetry,
    Structured,
    TextDelta,
    ToolArgsDelta,
    UsageDelta,
)
from rxagent.providers.base import Finish, ProviderChunk, ProviderRequest, ToolCallReady

__all__ = [
    "Call",
    "Delay",
    "Fail",
    "Hang",
    "Reasoning",
    "Retry",
    "ScriptItem",
    "ScriptedProvider",
    "StructuredValue",
    "Turn",
    "UsageReport",
    "call",
    "delay",
    "fail",
    "hang",
    "reasoning",
    "retry",
    "structured",
    "usage",
]


@dataclass(frozen=True)
class Call:
    """A tool call; its JSON arguments stream in ``fragments`` pieces."""

    name: str
    arguments: str
    id: str | None = None
    fragments: int = 2


@dataclass(frozen=True)
class UsageReport:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Delay:
    seconds: float


@dataclass(frozen=True)
class Hang:
    """The stream stalls here until it is disposed."""


@dataclass(frozen=True)
class Fail:
    """The stream fails here with ``error``."""

    error: Exception


@dataclass(frozen=True)
class Reasoning:
    """A piece of reasoning text; ``field`` is the delta field the loopback server sends
    it in (``reasoning_content``, or ``reasoning`` as some servers name it)."""

    text: str
    field: str = "reasoning_content"


@dataclass(frozen=True)
class StructuredValue:
    value: Any
    partial: bool = False


@dataclass(frozen=True)
class Retry:
    """A ``StepRetry`` event, as a provider that retries a turn emits it."""

    error: str
    attempt: int = 1


ScriptItem: TypeAlias = (
    str | Call | UsageReport | Delay | Hang | Fail | Reasoning | StructuredValue | Retry
)
Turn: TypeAlias = str | Sequence[ScriptItem] | Callable[[ProviderRequest], "Turn"]


def call(
    name: str,
    arguments: Mapping[str, Any] | str | None = None,
    *,
    id: str | None = None,
    fragments: int = 2,
) -> Call:
    """A tool call; ``arguments`` is a mapping (sent as JSON) or raw text (sent as is)."""
    text = arguments if isinstance(arguments, str) else json.dumps(dict(arguments or {}))
    return Call(name, text, id, max(1, fragments))


def usage(prompt_tokens: int, completion_tokens: int) -> UsageReport:
    return UsageReport(prompt_tokens, completion_tokens)


def delay(seconds: float) -> Delay:
    return Delay(seconds)


def hang() -> Hang:
    return Hang()


def fail(error: Exception | str) -> Fail:
    return Fail(error if isinstance(error, Exception) else ProviderError(error))


def reasoning(text: str, *, field: str = "reasoning_content") -> Reasoning:
    return Reasoning(text, field)


def structured(value: Any, *, partial: bool = False) -> StructuredValue:
    return StructuredValue(value, partial)


def retry(error: str, attempt: int = 1) -> Retry:
    return Retry(error, attempt)


class ScriptedProvider:
    """A provider that plays scripted turns, one per request, and records the requests.

    ``chunk_delay`` (seconds) waits between chunks, to look like a network.
    Asking for more turns than the script has fails the step with a
    ``ProviderError`` that says so.
    """

    #: The ``gen_ai.provider.name`` of tracing (``rxagent.otel``).
    provider_name = "rxagent.scripted"

    def __init__(
        self,
        turns: Iterable[Turn] | Callable[[ProviderRequest], Turn],
        *,
        chunk_delay: float = 0.0,
    ) -> None:
        self._respond: Callable[[ProviderRequest], Turn] | None = None
        self._turns: list[Turn] = []
        if callable(turns):
            self._respond = turns
        else:
            self._turns = list(turns)
        self.chunk_delay = chunk_delay
        #: Every request received, in order.
        self.requests: list[ProviderRequest] = []

    @property
    def calls(self) -> int:
        """How many requests the provider has received."""
        return len(self.requests)

    def stream(self, request: ProviderRequest) -> Observable[ProviderChunk]:
        def play() -> AsyncIterator[ProviderChunk]:
            index = len(self.requests)
            self.requests.append(request)
            return self._play(request, index)

        return from_async_iterable(play)

    def _turn_for(self, request: ProviderRequest, index: int) -> Sequence[ScriptItem]:
        turn: Turn
        if self._respond is not None:
            turn = self._respond(request)
        elif index < len(self._turns):
            turn = self._turns[index]
        else:
            raise ProviderError(
                f"ScriptedProvider has no turn for request {index + 1} "
                f"(its script has {len(self._turns)} turn(s))"
            )
        while callable(turn):
            turn = turn(request)
        return [turn] if isinstance(turn, str) else turn

    async def _play(self, request: ProviderRequest, index: int) -> AsyncIterator[ProviderChunk]:
        step = request.step
        made_calls = 0
        for n, item in enumerate(self._turn_for(request, index)):
            if self.chunk_delay and n:
                await asyncio.sleep(self.chunk_delay)
            elif n % 256 == 255:
                await asyncio.sleep(0)  # a long script still lets the loop breathe
            if isinstance(item, str):
                yield TextDelta(step=step, text=item)
            elif isinstance(item, Call):
                call_id = item.id or f"call_{index + 1}_{made_calls + 1}"
                made_calls += 1
                for piece in _split(item.arguments, item.fragments):
                    yield ToolArgsDelta(step=step, call_id=call_id, name=item.name, delta=piece)
                yield ToolCallReady(call_id, item.name, item.arguments)
            elif isinstance(item, UsageReport):
                yield UsageDelta(
                    step=step,
                    prompt_tokens=item.prompt_tokens,
                    completion_tokens=item.completion_tokens,
                )
            elif isinstance(item, Delay):
                await asyncio.sleep(item.seconds)
            elif isinstance(item, Hang):
                await asyncio.Event().wait()
            elif isinstance(item, Fail):
                raise item.error
            elif isinstance(item, Reasoning):
                yield ReasoningDelta(step=step, text=item.text)
            elif isinstance(item, StructuredValue):
                yield Structured(step=step, value=item.value, partial=item.partial)
            elif isinstance(item, Retry):
                yield StepRetry(step=step, attempt=item.attempt, error=item.error)
            else:
                raise TypeError(f"not a script item: {item!r}")
        yield Finish("tool_calls" if made_calls else "stop")


def _split(text: str, pieces: int) -> list[str]:
    if pieces <= 1 or len(text) <= 1:
        return [text]
    size = -(-len(text) // pieces)
    return [text[i : i + size] for i in range(0, len(text), size)]
