"""``collect_final``: the finished run, as one item."""

from __future__ import annotations

from collections.abc import Callable

from reactivex import Observable, abc

from rxagent.errors import AgentError
from rxagent.events import AgentEvent, AgentRun, RunCompleted

__all__ = ["collect_final", "missing_end"]


def missing_end() -> AgentError:
    """The error of a stream of run events that completed without ``RunCompleted``."""
    return AgentError("the stream ended without a RunCompleted event")


def collect_final() -> Callable[[Observable[AgentEvent]], Observable[AgentRun]]:
    """The ``AgentRun`` of the ``RunCompleted`` event, emitted when the stream completes::

        source: --Step--Text--...--RunCompleted(run)--|
        result: --------------------------------------run|

    A stream that completes without ``RunCompleted`` fails with ``AgentError``;
    errors pass through. Each subscription gets an ``AgentRun`` whose ``messages``
    are its own writable copy (the event's run is a record that never changes).
    """

    def operator(source: Observable[AgentEvent]) -> Observable[AgentRun]:
        def subscribe(
            observer: abc.ObserverBase[AgentRun], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            final: AgentRun | None = None

            def on_next(event: AgentEvent) -> None:
                nonlocal final
                if type(event) is RunCompleted:
                    final = event.run

            def on_completed() -> None:
                if final is None:
                    observer.on_error(missing_end())
                else:
                    observer.on_next(final.editable())
                    observer.on_completed()

            return source.subscribe(on_next, observer.on_error, on_completed, scheduler=scheduler)

        return Observable(subscribe)

    return operator
