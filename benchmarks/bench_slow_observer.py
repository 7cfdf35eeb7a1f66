"""A slow observer, with and without ``ra.ops.isolate``.

    python benchmarks/bench_slow_observer.py

Run A streams 200 text deltas; an observer of A takes 5 ms per event (it blocks, as
a UI that redraws or a socket that waits would). Run B, unrelated, streams 20 pieces
10 ms apart on the same event loop. Prints the wall time of each run: with no slow
observer, with the slow observer subscribed directly (Rx's synchronous default), and
with it behind ``isolate`` (DROP_OLDEST, and KEEP_LATEST after a fold).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from reactivex import Observable
from reactivex import operators as rx_ops

import rxagent as ra
from rxagent.ops import Overflow
from rxagent.state import RunState


def slow(_: Any) -> None:
    time.sleep(0.005)


async def timed(run: ra.Run, started: float) -> float:
    await ra.collect_final(run)
    return time.perf_counter() - started


async def scenario(attach: Callable[[ra.Run], None] | None) -> tuple[float, float]:
    a = ra.Agent(ra.ScriptedProvider([[f"t{i} " for i in range(200)]]))
    b = ra.Agent(ra.ScriptedProvider([[f"u{i} " for i in range(20)]], chunk_delay=0.01))
    started = time.perf_counter()
    run_a, run_b = a.run("A"), b.run("B")
    if attach is not None:
        attach(run_a)
    ta, tb = await asyncio.gather(timed(run_a, started), timed(run_b, started))
    return ta, tb


def direct(run: ra.Run) -> None:
    run.subscribe(slow)


def isolated(run: ra.Run) -> None:
    run.pipe(ra.ops.isolate()).subscribe(slow)


def latest_state(run: ra.Run) -> None:
    states: Observable[RunState] = run.pipe(rx_ops.scan(RunState.apply, RunState()))
    states.pipe(ra.ops.isolate(1, Overflow.KEEP_LATEST)).subscribe(slow)


async def main() -> None:
    for name, attach in [
        ("no slow observer", None),
        ("slow observer, direct", direct),
        ("slow observer, isolate()", isolated),
        ("slow observer, scan + isolate(1, KEEP_LATEST)", latest_state),
    ]:
        ta, tb = await scenario(attach)
        print(f"{name:<46} run A {ta * 1000:7.0f} ms   unrelated run B {tb * 1000:7.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
