"""What the protocol encoders (AI SDK, AG-UI) share: dispatch on the event's type, the
calls a resumed run picks up, and the Rx operator over an encoder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from reactivex import Observable, abc

from rxagent.errors import ApprovalError
from rxagent.events import AgentEvent, RunStarted
from rxagent.messages import ToolCall

__all__ = ["Encoder", "encoder_operator", "resumed_calls"]

T = TypeVar("T")


class Encoder(Generic[T]):
    """Turns a run's events into a protocol's items: ``feed(event)``, then ``close()``.

    ``feed`` calls the method ``_on_<event type>`` (``_on_text_delta``, ...), when the
    encoder has one, with the event and the list to append items to. ``start`` is the
    index of the first event fed (``_index`` is the index of the event being fed).
    """

    def __init__(self, start: int = 0) -> None:
        self._index = start - 1

    def feed(self, event: AgentEvent) -> list[T]:
        """The items for ``event``."""
        self._index += 1
        out: list[T] = []
        self._before(event, out)
        handler: Callable[[AgentEvent, list[T]], None] | None = getattr(
            self, "_on_" + event.type, None
        )
        if handler is not None:
            handler(event, out)
        return out

    def close(self) -> list[T]:
        """The items that end the stream."""
        return []

    def _before(self, event: AgentEvent, out: list[T]) -> None:
        """Called before each event's own method."""


def resumed_calls(event: RunStarted) -> dict[str, ToolCall]:
    """The calls of the paused turn a run resumes (its input's open turn), by id."""
    try:
        turn = event.input.open_turn()
    except ApprovalError:
        return {}
    return {call.id: call for call in turn.assistant.tool_calls} if turn is not None else {}


def encoder_operator(
    make: Callable[[], Encoder[T]],
) -> Callable[[Observable[AgentEvent]], Observable[T]]:
    """The operator that feeds each subscription's own encoder (``make()``)::

    source: --e1------e2--|
    result: --a,b-----c---d--|     (d: what close() gives)
    """

    def operator(source: Observable[AgentEvent]) -> Observable[T]:
        def subscribe(
            observer: abc.ObserverBase[T], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            encoder = make()

            def on_next(event: AgentEvent) -> None:
                for item in encoder.feed(event):
                    observer.on_next(item)

            def on_completed() -> None:
                for item in encoder.close():
                    observer.on_next(item)
                observer.on_completed()

            return source.subscribe(on_next, observer.on_error, on_completed, scheduler=scheduler)

        return Observable(subscribe)

    return operator
