"""rxagent.redis on a private redis-server (loopback), offline (ScriptedProvider).

    python benchmarks/bench_redis.py [--redis URL] [--seconds S] [--runs N]

1. Latency: a publisher appends events at 5,000 a second (each carrying its emission
   time); an observer in another process follows the run (``rxagent.redis.follow``)
   and measures emission-to-receipt. Goal: p99 <= 5 ms.
2. Throughput: the events per second one process publishes, through ``EventLog``
   alone and through a ``Worker`` running a 200,000-delta run. Goal: >= 50,000/s.
3. Scaling: short runs (one step, a few deltas) per second with 1, 2 and 4 worker
   processes (``rxagent worker --processes N``), submitted all at once.
4. Cancel: from this process, of a run streaming on a worker process, to the observed
   ``RunCompleted(stop="cancelled")``. Goal: <= 100 ms.

Without ``--redis`` it starts a redis-server of its own (persistence on, as the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as redis

import rxagent as ra
from rxagent import scripted as s
from rxagent.events import RunStarted, StepStarted, TextDelta
from rxagent.redis import EventLog, LogSettings, RunQueue, Worker, follow, new_run_id, observe
from rxagent.redis._scripts import Scripts

HERE = Path(__file__).resolve().parent


def _short(request: ra.ProviderRequest) -> s.Turn:
    return ["Short ", "answer ", "number ", "one.", s.usage(10, 4)]


def _stream(request: ra.ProviderRequest) -> s.Turn:
    content = request.messages[-1].content
    n = int(content) if isinstance(content, str) and content.isdigit() else 1000
    return [x for i in range(n) for x in (f"w{i} ", s.delay(0.001))]


def _many(request: ra.ProviderRequest) -> s.Turn:
    return ["x"] * 200_000


#: The agents of the worker processes (``rxagent worker bench_redis:AGENTS``).
AGENTS = {
    "short": ra.Agent(ra.ScriptedProvider(_short)),
    "stream": ra.Agent(ra.ScriptedProvider(_stream)),
    "many": ra.Agent(ra.ScriptedProvider(_many)),
}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def new_log(client: redis.Redis, run_id: str, **settings: Any) -> EventLog:
    """An EventLog for a run of our own (its metadata made, its lease taken)."""
    await client.hset(f"rxagent:run:{run_id}", mapping={"status": "queued", "last": "-1"})
    reply = await Scripts(client).acquire(
        keys=[f"rxagent:run:{run_id}"], args=["bench", "start", 0]
    )
    return EventLog(client, run_id, lease=reply[1].decode(), settings=LogSettings(**settings))


# -- 1. latency ----------------------------------------------------------------------------
async def latency(url: str, rate: int, seconds: float, flush_interval: float) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    run_id = f"latency-{new_run_id()}"
    log = await new_log(client, run_id, flush_interval=flush_interval)
    log.append(RunStarted(step=1, input=ra.Conversation.of("go")))
    log.append(StepStarted(step=1))
    await log.flush()
    observer = subprocess.Popen(  # noqa: ASYNC220 (started once, before measuring)
        [sys.executable, __file__, "--observe", url, run_id],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert observer.stdout is not None
    assert observer.stdout.readline().strip() == "ready"
    total = int(rate * seconds)
    started = time.perf_counter()
    for i in range(total):
        due = started + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        log.append(TextDelta(step=1, text=repr(time.time())))
    log.append(TextDelta(step=1, text="end"))
    await log.flush()
    line = await asyncio.to_thread(observer.stdout.readline)
    observer.wait()
    await client.aclose()
    found: dict[str, float] = json.loads(line)
    return found


async def observe_latency(url: str, run_id: str) -> None:
    client = redis.Redis.from_url(url)
    delays: list[float] = []
    print("ready", flush=True)
    async for _, event in follow(client, run_id):
        if isinstance(event, TextDelta):
            if event.text == "end":
                break
            delays.append((time.time() - float(event.text)) * 1000)
    await client.aclose()
    result = {
        "events": len(delays),
        "p50_ms": pct(delays, 50),
        "p99_ms": pct(delays, 99),
        "max_ms": max(delays),
    }
    print(json.dumps(result), flush=True)


# -- 2. throughput -------------------------------------------------------------------------
async def throughput_log(url: str, n: int) -> float:
    client = redis.Redis.from_url(url)
    log = await new_log(client, f"throughput-{new_run_id()}")
    log.append(RunStarted(step=1, input=ra.Conversation.of("go")))
    start = time.perf_counter()
    for i in range(n):
        log.append(TextDelta(step=1, text="x"))
        if i % 1000 == 999:
            await asyncio.sleep(0)  # a run's events come from the loop: let the writer run
    await log.flush()
    took = time.perf_counter() - start
    await client.aclose()
    return n / took


async def throughput_worker(url: str) -> float:
    client = redis.Redis.from_url(url)
    worker = Worker(client, {"many": AGENTS["many"]})
    task = asyncio.create_task(worker.run())
    queue = RunQueue(client)
    run_id = await queue.submit("many", "go")
    start = time.perf_counter()
    # No observer in this process (it would share the worker's CPU): watch the status.
    while not (await queue.info(run_id)).status.is_final:  # noqa: ASYNC110 (cheaper than an observer here)
        await asyncio.sleep(0.02)
    took = time.perf_counter() - start
    assert (await queue.info(run_id)).last_index == 200_000 + 3
    worker.stop()
    await task
    await client.aclose()
    return 200_000 / took


# -- 3. scaling ----------------------------------------------------------------------------
def start_workers(url: str, processes: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "rxagent", "worker", "bench_redis:AGENTS", "--redis", url]
    options = ["--processes", str(processes), "--log-level", "WARNING"]
    return subprocess.Popen([*command, *options], cwd=HERE)


async def until_joined(client: redis.Redis, n: int) -> None:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("rxagent:control")
    joined = 0
    while joined < n:
        message = await pubsub.get_message(timeout=10)
        if message is not None and "joined" in json.loads(message["data"]):
            joined += 1
    await pubsub.aclose()


async def runs_per_second(url: str, processes: int, runs: int) -> float:
    client = redis.Redis.from_url(url, max_connections=1000)
    joined = asyncio.create_task(until_joined(client, processes))
    await asyncio.sleep(0.1)  # subscribed before the workers start
    pool = start_workers(url, processes)
    await joined
    queue = RunQueue(client)
    start = time.perf_counter()
    ids = [await queue.submit("short", "hi") for _ in range(runs)]
    results = await asyncio.gather(*(ra.collect_final(observe(client, r)) for r in ids))
    took = time.perf_counter() - start
    assert all(r.text == "Short answer number one." for r in results)
    pool.send_signal(signal.SIGTERM)
    pool.wait()
    await client.aclose()
    return runs / took


# -- 4. cancel -----------------------------------------------------------------------------
async def cancel_latency(url: str, times: int) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    joined = asyncio.create_task(until_joined(client, 1))
    await asyncio.sleep(0.1)
    pool = start_workers(url, 1)
    await joined
    queue = RunQueue(client)
    took: list[float] = []
    for _ in range(times):
        run_id = await queue.submit("stream", "5000")
        asked = 0.0
        async for _, event in follow(client, run_id):
            if isinstance(event, TextDelta) and not asked:
                asked = time.perf_counter()
                await queue.cancel(run_id)
            if event.type == "run_completed":
                assert event.run.stop == "cancelled"  # type: ignore[union-attr]
                took.append((time.perf_counter() - asked) * 1000)
    pool.send_signal(signal.SIGTERM)
    pool.wait()
    await client.aclose()
    return {"p50_ms": pct(took, 50), "p99_ms": pct(took, 99), "max_ms": max(took)}


async def main(args: argparse.Namespace) -> None:
    url = args.redis
    server = None
    if url is None:
        from rxagent.redis.testing import RedisServer

        server = RedisServer().start()
        url = server.url
    try:
        print(f"redis at {url}; {os.cpu_count()} CPU(s)")
        for interval in args.flush_interval:
            found = await latency(url, 5000, args.seconds, interval)
            print(
                f"1. latency at 5,000 events/s over {found['events']} events, flush_interval "
                f"{interval * 1000:g} ms: p50 {found['p50_ms']:.2f} ms, "
                f"p99 {found['p99_ms']:.2f} ms, max {found['max_ms']:.2f} ms (goal: p99 <= 5 ms)"
            )
        if args.only == "latency":
            return
        raw = await throughput_log(url, 200_000)
        full = await throughput_worker(url)
        print(
            f"2. one process publishes {raw:,.0f} events/s through EventLog, "
            f"{full:,.0f} events/s as a Worker running an agent (goal: >= 50,000/s)"
        )
        rates = {n: await runs_per_second(url, n, args.runs) for n in (1, 2, 4)}
        print(
            f"3. {args.runs} short runs: "
            + ", ".join(f"{n} worker(s) {r:,.0f} runs/s" for n, r in rates.items())
            + f" (x{rates[2] / rates[1]:.2f} with 2, x{rates[4] / rates[1]:.2f} with 4)"
        )
        cancel = await cancel_latency(url, 20)
        print(
            f"4. cancel from another process: p50 {cancel['p50_ms']:.1f} ms, "
            f"p99 {cancel['p99_ms']:.1f} ms (goal: <= 100 ms)"
        )
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis", help="a Redis server (default: start a private one)")
    parser.add_argument("--seconds", type=float, default=3.0, help="latency test length")
    parser.add_argument("--runs", type=int, default=600, help="runs per scaling test")
    parser.add_argument(
        "--flush-interval",
        type=float,
        nargs="+",
        default=[LogSettings().flush_interval],
        help="EventLog flush intervals to measure the latency with (seconds)",
    )
    parser.add_argument("--only", choices=["latency"], help="run only this part")
    parser.add_argument("--observe", nargs=2, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.observe:
        asyncio.run(observe_latency(*parsed.observe))
    else:
        asyncio.run(main(parsed))
