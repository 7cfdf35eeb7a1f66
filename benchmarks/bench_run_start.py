"""What it costs to start and finish a run (ScriptedProvider, a one-token answer).

    python benchmarks/bench_run_start.py [--runs N] [--concurrent C ...]

1. N runs one after another: CPU per run.
2. C runs at once (default 250 and 4,000): CPU per run.

Targets (issue 9): at most 0.1 ms of CPU per sequential run, and at most 1.5x that per
run with 4,000 at once.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time

import rxagent as ra

AGENT = ra.Agent(ra.ScriptedProvider(lambda request: ["hi"]), policy=ra.policies.max_steps(1))


async def sequential(n: int) -> float:
    for _ in range(100):  # warm up
        await ra.collect_final(AGENT.run("go"))
    cpu = time.process_time()
    for _ in range(n):
        await ra.collect_final(AGENT.run("go"))
    return (time.process_time() - cpu) / n


async def concurrent(n: int) -> float:
    cpu = time.process_time()
    await asyncio.gather(*(ra.collect_final(AGENT.run("go")) for _ in range(n)))
    return (time.process_time() - cpu) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--concurrent", type=int, nargs="*", default=[250, 4000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    seq = [asyncio.run(sequential(args.runs)) for _ in range(args.repeat)]
    print(f"sequential: median {statistics.median(seq) * 1e3:.3f} ms CPU per run (target <= 0.1)")
    for c in args.concurrent:
        gc.collect()
        per = [asyncio.run(concurrent(c)) for _ in range(args.repeat)]
        ratio = statistics.median(per) / statistics.median(seq)
        print(
            f"{c} at once: median {statistics.median(per) * 1e3:.3f} ms CPU per run "
            f"({ratio:.2f}x sequential; target <= 1.5x)"
        )


if __name__ == "__main__":
    main()
