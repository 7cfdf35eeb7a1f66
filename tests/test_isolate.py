"""ops.isolate: a slow observer behind a bounded buffer never slows the run."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from reactivex import operators as rx_ops
from reactivex.testing import TestScheduler

import rxagent as ra
from rxagent.ops import ObserverOverflow, Overflow
from rxagent.state import RunState, RunStatus


class Slow:
    """An observer that blocks on its first item until the test lets it go."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.items: list[Any] = []
        self.error: Exception | None = None
        self.ended = threading.Event()
        self.threads: set[str] = set()

    def on_next(self, item: Any) -> None:
        self.threads.add(threading.current_thread().name)
        self.items.append(item)
        self.gate.wait(10)

    def on_error(self, error: Exception) -> None:
        self.error = error
        self.ended.set()

    def on_completed(self) -> None:
        self.ended.set()


def pieces(n: int) -> ra.Run:
    return ra.Agent(ra.ScriptedProvider([[f"t{i} " for i in range(n)]])).run("go")


async def test_a_blocked_observer_does_not_hold_up_the_run() -> None:
    run = pieces(50)
    slow = Slow()
    run.pipe(ra.ops.isolate(5)).subscribe(slow)
    fast: list[str] = []
    run.subscribe(lambda e: fast.append(e.type))
    # The run ends while the slow observer is stuck on its first event.
    result = await asyncio.wait_for(ra.collect_final(run), 5)
    assert result.text.startswith("t0 t1") and not slow.ended.is_set()
    assert fast == [e.type for e in run.events]  # the fast observer missed nothing
    slow.gate.set()
    assert await asyncio.to_thread(slow.ended.wait, 5)
    assert 1 < len(slow.items) <= 6 and slow.items[-1] == run.events[-1]
    assert threading.current_thread().name not in slow.threads  # delivered off the loop


async def test_drop_oldest_keeps_the_newest_events_and_the_end() -> None:
    # A TestScheduler holds the deliveries until the test lets them run.
    deliveries = TestScheduler()
    run = pieces(50)
    seen: list[Any] = []
    ended: list[str] = []
    run.pipe(ra.ops.isolate(5, Overflow.DROP_OLDEST, scheduler=deliveries)).subscribe(
        seen.append, lambda e: ended.append(repr(e)), lambda: ended.append("completed")
    )
    await asyncio.wait_for(ra.collect_final(run), 5)
    assert seen == [] and ended == []  # the run did not wait for this observer
    deliveries.start()
    assert seen == list(run.events)[-5:] and ended == ["completed"]


async def test_keep_latest_after_a_fold_shows_the_latest_state() -> None:
    deliveries = TestScheduler()
    run = pieces(30)
    seen: list[RunState] = []
    run.pipe(
        rx_ops.scan(RunState.apply, RunState()),
        ra.ops.isolate(1, Overflow.KEEP_LATEST, scheduler=deliveries),
    ).subscribe(seen.append)
    result = await asyncio.wait_for(ra.collect_final(run), 5)
    deliveries.start()
    (latest,) = seen
    assert latest.status is RunStatus.COMPLETED and latest.result == result
    assert latest.text == result.text and latest.events == len(run.events)


async def test_fail_gives_up_on_the_observer_and_the_run_goes_on() -> None:
    deliveries = TestScheduler()
    run = pieces(40)
    seen: list[Any] = []
    errors: list[Exception] = []
    everything: list[Any] = []
    run.subscribe(everything.append)  # another observer: the run is not left alone
    run.pipe(ra.ops.isolate(3, Overflow.FAIL, scheduler=deliveries)).subscribe(
        seen.append, errors.append
    )
    result = await asyncio.wait_for(ra.collect_final(run), 5)
    deliveries.start()
    (error,) = errors
    assert isinstance(error, ObserverOverflow) and "3 item(s) behind" in str(error)
    assert seen == [] and result.text.count("t") == 40 and everything == list(run.events)


def test_a_buffer_must_hold_something() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ra.ops.isolate(0)
