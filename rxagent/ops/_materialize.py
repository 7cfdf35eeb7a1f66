"""``materialize``: a run's failure as a ``RunFailed`` event instead of ``on_error``."""

from __future__ import annotations

from collections.abc import Callable

from reactivex import Observable, abc

from rxagent.errors import AgentError
from rxagent.events import AgentEvent, RunFailed

__all__ = ["materialize"]


def materialize() -> Callable[[Observable[AgentEvent]], Observable[AgentEvent]]:
    """Turn ``on_error`` into a ``RunFailed`` event followed by completion.

    For UIs and logs that want a failure as data (a JSON line, a row)::

        source: --Step--Text--X(ToolError)
        result: --Step--Text--RunFailed--|

    ``RunFailed.partial`` is the error's partial run, where it has one.
    """

    def operator(source: Observable[AgentEvent]) -> Observable[AgentEvent]:
        def subscribe(
            observer: abc.ObserverBase[AgentEvent], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            last_step = 0

            def on_next(event: AgentEvent) -> None:
                nonlocal last_step
                last_step = event.step
                observer.on_next(event)

            def on_error(error: Exception) -> None:
                observer.on_next(
                    RunFailed(
                        step=last_step,
                        error_type=type(error).__name__,
                        message=str(error),
                        partial=error.partial if isinstance(error, AgentError) else None,
                    )
                )
                observer.on_completed()

            return source.subscribe(on_next, on_error, observer.on_completed, scheduler=scheduler)

        return Observable(subscribe)

    return operator
