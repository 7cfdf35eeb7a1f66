"""Pipeline overhead and tool fan-out, offline (ScriptedProvider).

    python benchmarks/bench_pipeline.py [--events N] [--repeat R]

1. Streams N text deltas (default 100,000) from ScriptedProvider through Agent
   to two observers and prints the CPU time per event (all threads, the
   provider's own chunk construction included).
2. Runs 64 tool calls of 20 ms under max_tool_concurrency=8 (async tools and
   sync tools in worker threads) and prints the wall time of the step against
   the ideal 64 / 8 * 20 ms = 160 ms.

Targets on a 2-core machine: <= 8 us of CPU per event; fan-out within 10% of ideal.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import rxagent as ra
from rxagent import scripted as s


async def stream_events(n: int) -> tuple[float, int]:
    provider = ra.ScriptedProvider([["x"] * n])
    agent = ra.Agent(provider, policy=ra.policies.max_steps(1))
    run = agent.run("go")
    counts = [0, 0]

    def first(_: ra.AgentEvent) -> None:
        counts[0] += 1

    def second(_: ra.AgentEvent) -> None:
        counts[1] += 1

    run.subscribe(first)
    run.subscribe(second)
    cpu = time.process_time()
    result = await ra.collect_final(run)
    cpu = time.process_time() - cpu
    assert result.text == "x" * n and counts[0] == counts[1]
    return cpu, counts[0]


async def fan_out(calls: int, limit: int, millis: float, sync: bool) -> float:
    if sync:

        @ra.tool
        def work(i: int) -> int:
            """Sleep in a worker thread."""
            time.sleep(millis / 1000)
            return i

        tool = work
    else:

        @ra.tool
        async def work_async(i: int) -> int:
            """Sleep on the event loop."""
            await asyncio.sleep(millis / 1000)
            return i

        tool = work_async
    provider = ra.ScriptedProvider([[s.call(tool.name, {"i": i}) for i in range(calls)]])
    agent = ra.Agent(
        provider, tools=[tool], max_tool_concurrency=limit, policy=ra.policies.max_steps(1)
    )
    run = agent.run("go")
    result = await ra.collect_final(run)
    assert result.tool_calls == calls
    done = next(e for e in run.events if isinstance(e, ra.events.StepCompleted))
    return done.outcome.ended_at - done.outcome.started_at


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    await stream_events(1000)  # warm up
    per_event = []
    for _ in range(args.repeat):
        cpu, count = await stream_events(args.events)
        per_event.append(cpu / count * 1e6)
    print(
        f"streaming: {args.events} text deltas to 2 observers: "
        f"median {statistics.median(per_event):.2f} us CPU/event "
        f"(min {min(per_event):.2f}, max {max(per_event):.2f}; target <= 8)"
    )

    ideal = 64 / 8 * 20 / 1000
    for sync in (False, True):
        walls = [await fan_out(64, 8, 20, sync) for _ in range(args.repeat)]
        wall = statistics.median(walls)
        kind = "sync tools (threads)" if sync else "async tools"
        print(
            f"fan-out: 64 calls x 20 ms, max_tool_concurrency=8, {kind}: "
            f"median {wall * 1000:.1f} ms vs ideal {ideal * 1000:.0f} ms "
            f"(+{(wall / ideal - 1) * 100:.1f}%; target <= +10%)"
        )


if __name__ == "__main__":
    asyncio.run(main())
