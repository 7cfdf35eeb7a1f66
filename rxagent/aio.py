"""Bridges between asyncio and Rx, and the event loop a run lives on.

* :func:`from_async_iterable` turns an async iterable (an async generator, say)
  into an Observable: subscribing starts a task on the event loop, disposing the
  subscription cancels that task and closes the generator.
* :func:`to_async_iterable` turns an Observable into an async iterator, so
  ``async for item in to_async_iterable(source)`` works; leaving the loop early
  disposes the subscription.

Everything rxagent does runs on one asyncio event loop: the loop running in the
thread that subscribes, or, when no loop runs there (a plain script), a shared
background loop that rxagent starts in a daemon thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from reactivex import Observable, Observer, abc
from reactivex.disposable import Disposable
from reactivex.scheduler.eventloop import AsyncIOScheduler

__all__ = [
    "DirectObservable",
    "background_loop",
    "current_loop",
    "from_async_iterable",
    "to_async_iterable",
]

_T = TypeVar("_T")

log = logging.getLogger("rxagent")

_bg_lock = threading.Lock()
_bg_loop: asyncio.AbstractEventLoop | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The shared event loop rxagent runs on when the caller has none (started on first use)."""
    global _bg_loop
    with _bg_lock:
        if _bg_loop is None or _bg_loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=serve, name="rxagent-loop", daemon=True).start()
            ready.wait()
            _bg_loop = loop
        return _bg_loop


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or ``None``."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def current_loop() -> asyncio.AbstractEventLoop:
    """The loop running in this thread, else the shared background loop."""
    return running_loop() or background_loop()


_schedulers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncIOScheduler] = (
    weakref.WeakKeyDictionary()
)


def loop_scheduler(loop: asyncio.AbstractEventLoop | None = None) -> AsyncIOScheduler:
    """The Rx scheduler of ``loop`` (default: the loop running here, else the background
    loop): the clock rxagent's timers use when no scheduler is given."""
    loop = loop or current_loop()
    scheduler = _schedulers.get(loop)
    if scheduler is None:
        scheduler = _schedulers[loop] = AsyncIOScheduler(loop)
    return scheduler


async def sleep_on(scheduler: abc.SchedulerBase | None, seconds: float) -> None:
    """Wait ``seconds`` by ``scheduler``'s clock (the event loop's when ``None``), so that
    a test can drive the wait in virtual time (``reactivex.testing.TestScheduler``)."""
    if scheduler is None:
        await asyncio.sleep(seconds)
        return
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def done() -> None:
        if not future.done():
            future.set_result(None)

    def fire(_: abc.SchedulerBase, __: Any = None) -> None:
        loop.call_soon_threadsafe(done)

    timer = scheduler.schedule_relative(seconds, fire)
    try:
        await future
    finally:
        timer.dispose()


def call_on(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """Run ``fn`` on ``loop``: now if this thread runs it, else as soon as the loop can."""
    if running_loop() is loop:
        fn()
    else:
        loop.call_soon_threadsafe(fn)


def start_task(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
) -> Callable[[], None]:
    """Start ``coro`` on ``loop`` from any thread; returns a function that cancels it."""
    handle: asyncio.Task[None] | Any
    if running_loop() is loop:
        handle = loop.create_task(coro)
    else:
        handle = asyncio.run_coroutine_threadsafe(coro, loop)

    def cancel() -> None:
        handle.cancel()

    return cancel


class DirectObservable(Observable[_T]):
    """An Observable whose ``subscribe`` calls its subscribe function at once.

    ``Observable.subscribe`` wraps the observer in an auto-detaching observer and
    runs the subscription on the current thread's trampoline, which guards
    arbitrary sources against re-entrant and recursive subscriptions. rxagent's
    own sources that never emit while being subscribed (a task that starts later,
    a run that starts its first step) need neither, and every run subscribes to
    several: skipping them is a third of the cost of starting a run.
    """

    def subscribe(
        self,
        on_next: abc.ObserverBase[_T] | Callable[[_T], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
        on_completed: Callable[[], None] | None = None,
        *,
        scheduler: abc.SchedulerBase | None = None,
    ) -> abc.DisposableBase:
        if on_next is not None and not callable(on_next):
            return self._subscribe_core(on_next, scheduler)
        return self._subscribe_core(Observer(on_next, on_error, on_completed), scheduler)


class SourceCancelled(Exception):
    """An async iterable raised ``CancelledError`` that was not its task's own
    cancellation (it awaited something another party cancelled)."""


def from_async_iterable(
    source: AsyncIterable[_T] | Callable[[], AsyncIterable[_T]],
) -> Observable[_T]:
    """An Observable of the items of an async iterable.

    ``source`` is an async iterable, or a function that makes one (called on
    each subscription, so the Observable can be subscribed more than once).
    Each subscription iterates on the event loop in a task of its own;
    disposing the subscription cancels the task and closes the iterator::

        source:  async for ... yields a, b, c
        result:  --a--b--c--|
    """

    def subscribe(
        observer: abc.ObserverBase[_T], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        disposed = False

        async def pump() -> None:
            try:
                iterable = source() if callable(source) else source
                iterator = aiter(iterable)
            except Exception as error:  # making the iterable failed: that is its error
                if not disposed:
                    _notify(observer.on_error, error)
                return
            try:
                async for item in iterator:
                    if disposed:
                        return
                    observer.on_next(item)
            except asyncio.CancelledError as error:
                if disposed:
                    return
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this task is cancelled (the loop shuts down, say)
                # The source itself raised it (a tool awaited something that another
                # party cancelled): a failure of the source, or the stream would hang.
                failure = SourceCancelled(
                    f"the source was cancelled from within: it awaited something that was "
                    f"cancelled{f' ({error})' if str(error) else ''}"
                )
                failure.__cause__ = error
                _notify(observer.on_error, failure)
                return
            except Exception as error:
                if not disposed:
                    _notify(observer.on_error, error)
                return
            finally:
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()
                    except Exception:  # the generator's own cleanup failed
                        log.exception("closing an async iterator failed")
            if not disposed:
                _notify(observer.on_completed)

        cancel = start_task(current_loop(), pump())

        def dispose() -> None:
            nonlocal disposed
            disposed = True
            cancel()

        return Disposable(dispose)

    return DirectObservable(subscribe)


def _notify(fn: Callable[..., None], *args: Any) -> None:
    """Call an observer's ``on_error``/``on_completed`` from a task: what it raises has
    nowhere to go but the log (raised in the task, it would vanish unseen)."""
    try:
        fn(*args)
    except Exception:
        log.exception("an observer raised at the end of a stream; the error is logged here")


async def to_async_iterable(source: Observable[_T]) -> AsyncIterator[_T]:
    """Iterate an Observable with ``async for``; an error is raised at the ``async for``.

    Items are queued while the consumer is busy (nothing is dropped). Leaving
    the loop early (``break``, an exception, cancellation) disposes the
    subscription once the generator is closed; use ``contextlib.aclosing`` to
    close it at once.
    """
    loop = asyncio.get_running_loop()
    items: deque[_T] = deque()
    waiter: asyncio.Future[None] | None = None
    done = False
    failure: BaseException | None = None

    def wake() -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_next(item: _T) -> None:
        items.append(item)
        wake()

    def on_error(error: Exception) -> None:
        nonlocal done, failure
        done, failure = True, error
        wake()

    def on_completed() -> None:
        nonlocal done
        done = True
        wake()

    subscription = source.subscribe(
        lambda x: call_on(loop, lambda: on_next(x)),
        lambda e: call_on(loop, lambda: on_error(e)),
        lambda: call_on(loop, on_completed),
    )
    try:
        while True:
            while items:
                yield items.popleft()
            if done:
                if failure is not None:
                    raise failure
                return
            waiter = loop.create_future()
            await waiter
            waiter = None
    finally:
        subscription.dispose()
