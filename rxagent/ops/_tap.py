"""``tap``: tee every event to an observer or a function, which cannot break the run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from reactivex import Observable, abc

__all__ = ["tap"]

_T = TypeVar("_T")

log = logging.getLogger("rxagent")


def tap(
    target: abc.ObserverBase[_T] | Callable[[_T], Any],
) -> Callable[[Observable[_T]], Observable[_T]]:
    """Call ``target`` with every item (and the end) and pass everything on unchanged.

    ``target`` is a function of an item, or an observer (anything with
    ``on_next``; its ``on_error`` and ``on_completed`` are called too, where it
    has them). An exception raised by the target is logged on the ``rxagent``
    logger and does not reach the stream: a broken UI view never stops a run::

        source: --a--b--|
        target:   a  b  |
        result: --a--b--|
    """
    on_next: Callable[[_T], Any]
    on_error: Callable[[Exception], Any] | None = None
    on_completed: Callable[[], Any] | None = None
    if callable(getattr(target, "on_next", None)):
        on_next = target.on_next  # type: ignore[union-attr]
        on_error = getattr(target, "on_error", None)
        on_completed = getattr(target, "on_completed", None)
    elif callable(target):
        on_next = target
    else:
        raise TypeError(f"tap() takes an observer or a function, got {target!r}")

    def safely(fn: Callable[..., Any] | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("a tap raised; the stream goes on without it")

    def operator(source: Observable[_T]) -> Observable[_T]:
        def subscribe(
            observer: abc.ObserverBase[_T], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            def next_(item: _T) -> None:
                safely(on_next, item)
                observer.on_next(item)

            def error_(error: Exception) -> None:
                safely(on_error, error)
                observer.on_error(error)

            def completed_() -> None:
                safely(on_completed)
                observer.on_completed()

            return source.subscribe(next_, error_, completed_, scheduler=scheduler)

        return Observable(subscribe)

    return operator
