"""``isolate``: a slow observer behind a bounded buffer, off the run's hot path."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable, SingleAssignmentDisposable
from reactivex.scheduler import ThreadPoolScheduler

from rxagent.errors import AgentError

__all__ = ["ObserverOverflow", "Overflow", "isolate"]

_T = TypeVar("_T")


class Overflow(StrEnum):
    """What :func:`isolate` does when its buffer is full and another item arrives."""

    #: Drop the oldest buffered item: the observer sees the most recent ``size`` items.
    DROP_OLDEST = "drop_oldest"
    #: Drop everything buffered but the newest item: the observer catches up at once.
    #: With ``size=1`` after a ``scan``, it always gets the latest state.
    KEEP_LATEST = "keep_latest"
    #: Give up on the observer: it gets ``ObserverOverflow`` and is unsubscribed (from a
    #: run it was the only observer of, that cancels the run, as any last unsubscribe).
    FAIL = "fail"


class ObserverOverflow(AgentError):
    """An isolated observer fell more than its buffer behind (``Overflow.FAIL``)."""


_shared: ThreadPoolScheduler | None = None
_shared_lock = threading.Lock()


def _pool() -> ThreadPoolScheduler:
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ThreadPoolScheduler(max_workers=8)
        return _shared


class _End:
    __slots__ = ("error",)

    def __init__(self, error: Exception | None) -> None:
        self.error = error


def isolate(
    size: int = 256,
    overflow: Overflow | str = Overflow.DROP_OLDEST,
    *,
    scheduler: abc.SchedulerBase | None = None,
) -> Callable[[Observable[_T]], Observable[_T]]:
    """Deliver to what follows through a bounded buffer, on ``scheduler``.

    Observers of a run are called synchronously, on the run's event loop: that is
    Rx, and it is what keeps a fast observer exact and cheap. A slow one (a UI
    that redraws, a socket that blocks) then slows the run and everything else on
    the loop. ``isolate`` puts it behind a buffer of ``size`` items that is drained
    on ``scheduler`` (default: a shared pool of 8 worker threads), one item at a
    time and in order, so the source never waits for it::

        source:   -a-b-c-d-e-f-|
        result:   -a----c-----ef|        (a slow observer, DROP_OLDEST, size 2)

    When the buffer is full, ``overflow`` says what gives (see :class:`Overflow`);
    the end of the stream (``on_completed``/``on_error``) is never dropped. A
    dropped event is lost to this observer only. For a view that wants the latest
    state of a run rather than every event, fold first and keep the latest::

        run.pipe(
            ops.scan(RunState.apply, RunState()),
            ra.ops.isolate(1, Overflow.KEEP_LATEST),
        ).subscribe(redraw)

    With the default scheduler the observer is called on a worker thread.
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size!r}")
    policy = Overflow(overflow)

    def operator(source: Observable[_T]) -> Observable[_T]:
        def subscribe(
            observer: abc.ObserverBase[_T], default: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            clock = scheduler or _pool()
            lock = threading.Lock()
            queue: deque[Any] = deque()
            data = 0  # how many items (not ends) the queue holds
            draining = False
            over = False
            upstream = SingleAssignmentDisposable()

            def drain(_: abc.SchedulerBase, __: Any = None) -> None:
                nonlocal draining, data
                while True:
                    with lock:
                        if not queue:
                            draining = False
                            return
                        item = queue.popleft()
                        if not isinstance(item, _End):
                            data -= 1
                    if isinstance(item, _End):
                        if item.error is None:
                            observer.on_completed()
                        else:
                            observer.on_error(item.error)
                        return
                    observer.on_next(item)

            def push(item: Any) -> None:
                nonlocal draining, data, over
                with lock:
                    if over:
                        return
                    if isinstance(item, _End):
                        over = True
                    elif data >= size:
                        if policy is Overflow.FAIL:
                            over = True
                            queue.clear()
                            data = 0
                            item = _End(
                                ObserverOverflow(
                                    f"the observer fell more than {size} item(s) behind"
                                )
                            )
                            upstream.dispose()
                        elif policy is Overflow.KEEP_LATEST:
                            queue.clear()
                            data = 0
                        else:
                            queue.popleft()
                            data -= 1
                    if not isinstance(item, _End):
                        data += 1
                    queue.append(item)
                    if draining:
                        return
                    draining = True
                clock.schedule(drain)

            upstream.disposable = source.subscribe(
                push,
                lambda error: push(_End(error)),
                lambda: push(_End(None)),
                scheduler=default,
            )

            def stop() -> None:
                nonlocal over
                with lock:
                    over = True
                    queue.clear()

            return CompositeDisposable(upstream, Disposable(stop))

        return Observable(subscribe)

    return operator
