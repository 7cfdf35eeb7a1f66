"""``text``: the assistant's text pieces as strings."""

from __future__ import annotations

from collections.abc import Callable

from reactivex import Observable, abc

from rxagent.events import AgentEvent, TextDelta

__all__ = ["text"]


def text() -> Callable[[Observable[AgentEvent]], Observable[str]]:
    """The text of every ``TextDelta``, in order; other events are dropped::

    source: --Step--Text("Hel")--Tool...--Text("lo")--Run--|
    result: --------"Hel"-----------------"lo"-------------|
    """

    def operator(source: Observable[AgentEvent]) -> Observable[str]:
        def subscribe(
            observer: abc.ObserverBase[str], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            def on_next(event: AgentEvent) -> None:
                if type(event) is TextDelta:
                    observer.on_next(event.text)

            return source.subscribe(
                on_next, observer.on_error, observer.on_completed, scheduler=scheduler
            )

        return Observable(subscribe)

    return operator
