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
so one script can be played offline here or over HTTP through the real SDK:
:func:`play` is the one reading of a script's items, which both use.
"""

from __future__ import annotations

import asyncio
import json
import threading
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
    "Finish",
    "Gate",
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
    "finish",
    "hang",
    "play",
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


class Gate:
    """A point in a script where the play waits until the test calls :meth:`open`.

    Use it to check what a client does while the answer is still streaming::

        gate = s.Gate()
        provider = ra.ScriptedProvider([["first", gate, "last"]])  # or a LoopbackServer
        ...  # the first delta has arrived, the last has not been sent
        gate.open()

    ``reached`` says whether the play has got to the gate. Thread-safe, and
    usable from any event loop (the loopback server plays on a loop of its own).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = False
        self._reached = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def reached(self) -> bool:
        """Whether the play has arrived at the gate."""
        return self._reached.is_set()

    def wait_reached(self, timeout: float = 5.0) -> bool:
        """Block until the play arrives at the gate; ``False`` on timeout."""
        return self._reached.wait(timeout)

    def open(self) -> None:
        """Let the play go on past the gate (now and whenever it arrives later)."""
        with self._lock:
            self._open = True
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_settle, future)

    async def _pass(self) -> None:
        """Wait on the running loop until the gate is open."""
        self._reached.set()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._open:
                return
            self._waiters.append((loop, future))
        await future

    def __repr__(self) -> str:
        state = "open" if self._open else ("reached" if self.reached else "closed")
        return f"<Gate {state}>"


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


ScriptItem: TypeAlias = (
    str
    | Call
    | UsageReport
    | Delay
    | Hang
    | Fail
    | Reasoning
    | StructuredValue
    | Retry
    | Finish
    | Gate
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


def finish(reason: str) -> Finish:
    """The turn's finish reason, here (``stop``, ``tool_calls``, ``length``, ...); by default
    a turn ends with ``tool_calls`` when it made calls, else ``stop``."""
    return Finish(reason)


async def play(
    items: Iterable[Any],
    *,
    step: int = 1,
    call_ids: str = "call_",
    pace: float = 0.0,
    wire: bool = False,
) -> AsyncIterator[Any]:
    """The provider chunks a script's items stand for, streamed as a provider would.

    The one reading of the script vocabulary, shared by :class:`ScriptedProvider`
    and the loopback server: text, calls (arguments split into fragments, then a
    ``ToolCallReady``; a call without an id gets ``call_ids`` + its number),
    usage, reasoning, structured values, retries, and at the end a ``Finish``
    (unless the script gave one). Pauses are waited out here: ``delay``, a
    :class:`Gate`, ``hang`` (forever), and ``pace`` seconds before each chunk
    after the first; ``fail`` raises its error.

    With ``wire``, items whose form is the wire's pass through as they are: the
    faults the loopback server knows, and ``reasoning`` (the wire names its
    field); otherwise such an item is a ``TypeError``.
    """
    calls = 0
    finished = False
    sent = 0
    for item in items:
        kind = type(item)
        if kind is Delay:
            await asyncio.sleep(item.seconds)
            continue
        if kind is Gate:
            await item._pass()
            continue
        if kind is Hang:
            await asyncio.Event().wait()  # until the play is cancelled
        if kind is Fail:
            raise item.error
        if pace and sent:
            await asyncio.sleep(pace)
        elif sent % 256 == 255:
            await asyncio.sleep(0)  # a long script still lets the loop breathe
        sent += 1
        if kind is str:
            yield TextDelta(step=step, text=item)
        elif kind is Call:
            calls += 1
            call_id = item.id or f"{call_ids}{calls}"
            for n, piece in enumerate(_split(item.arguments, item.fragments)):
                if pace and n:
                    await asyncio.sleep(pace)
                yield ToolArgsDelta(step=step, call_id=call_id, name=item.name, delta=piece)
            yield ToolCallReady(call_id, item.name, item.arguments)
        elif kind is UsageReport:
            yield UsageDelta(
                step=step,
                prompt_tokens=item.prompt_tokens,
                completion_tokens=item.completion_tokens,
            )
        elif kind is Reasoning:
            yield item if wire else ReasoningDelta(step=step, text=item.text)
        elif kind is Finish:
            finished = True
            yield item
        elif kind is StructuredValue:
            yield Structured(step=step, value=item.value, partial=item.partial)
        elif kind is Retry:
            yield StepRetry(step=step, attempt=item.attempt, error=item.error)
        elif wire:
            yield item
        else:
            raise TypeError(f"not a script item: {item!r}")
    if not finished:
        yield Finish("tool_calls" if calls else "stop")


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
        def start() -> AsyncIterator[ProviderChunk]:
            index = len(self.requests)
            self.requests.append(request)
            try:
                items = self._turn_for(request, index)
            except Exception as error:  # the stream fails with it, as any other failure
                return _failing(error)
            return play(
                items,
                step=request.step,
                call_ids=f"call_{index + 1}_",
                pace=self.chunk_delay,
            )

        return from_async_iterable(start)

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


async def _failing(error: Exception) -> AsyncIterator[ProviderChunk]:
    raise error
    yield  # an async generator, for from_async_iterable


def _split(text: str, pieces: int) -> list[str]:
    if pieces <= 1 or len(text) <= 1:
        return [text]
    size = -(-len(text) // pieces)
    return [text[i : i + size] for i in range(0, len(text), size)]
