"""rxagent.web under load: server CPU per delivered event, and the latency SSE adds.

    python benchmarks/bench_web.py [--clients 100] [--tokens 20000] [--runs 200]
                                   [--run-tokens 500] [--rate 1000]

The server (the app of rxagent.web on uvicorn, one process) runs in a subprocess, so
its CPU time (from /proc) is the server's alone; the clients run in this process,
each an SSE reader of rxagent's native encoding. The model is a provider that emits
text deltas whose text is the time they were emitted, so a client computes, for
every event, the time from emission (in the run) to its arrival (on the client).

1. Burst: ``--clients`` clients on one run of ``--tokens`` tokens, emitted as fast as
   the provider can. Server CPU per delivered event per client = the server's CPU
   time over the run / (events x clients); also with the run alone (no client)
   subtracted.
2. Paced: the same, the tokens emitted at ``--rate`` per second: p50/p99 latency.
3. Many runs: ``--runs`` runs at once, one client each, ``--run-tokens`` tokens each
   at ``--rate / 10`` per second per run: CPU per delivered event, p50/p99 latency.

Goals (issue 10): <= 15 us of server CPU per event per client (native encoding);
p99 added latency <= 20 ms under that load on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from reactivex import Observable

ROOT = Path(__file__).resolve().parent.parent
TIMESTAMP = re.compile(rb'"text":"([0-9.]+) "')


# -- the server side (a subprocess) ------------------------------------------------------
class ClockProvider:
    """Emits ``tokens`` text deltas, each the time it was emitted, ``rate`` a second
    (0: as fast as it can). The request's user message says ``<tokens> <rate>``."""

    def stream(self, request: Any) -> Observable[Any]:
        from rxagent.aio import from_async_iterable
        from rxagent.events import TextDelta
        from rxagent.providers.base import Finish

        tokens, rate = (float(x) for x in str(request.messages[-1].content).split())
        step = request.step

        async def play() -> AsyncIterator[Any]:
            started = time.perf_counter()
            for i in range(int(tokens)):
                if rate:
                    due = started + i / rate
                    if due > time.perf_counter():
                        await asyncio.sleep(due - time.perf_counter())
                elif i % 256 == 255:
                    await asyncio.sleep(0)
                yield TextDelta(step=step, text=f"{time.time():.6f} ")
            yield Finish("stop")

        return from_async_iterable(play)


def serve() -> None:
    import rxagent as ra
    from rxagent.web import create_app
    from rxagent.web.server import serve as serve_app

    agent = ra.Agent(ClockProvider(), policy=ra.policies.max_steps(1))  # type: ignore[arg-type]
    app = create_app({"clock": agent}, page=False)
    serve_app(app, port=0, on_ready=lambda url: print(url, flush=True))


# -- the client side -----------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Reader(asyncio.Protocol):
    """A lean SSE reader (an asyncio protocol, no HTTP library): it sends a GET and, for
    every piece of the response, notes the latency of each text delta in it that was
    emitted after the reader connected (earlier ones are a replay, not live)."""

    def __init__(self, path: str, latencies: list[float]) -> None:
        self.path = path
        self.latencies = latencies
        self.events = 0
        self.tail = b""
        self.connected = float("inf")
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(f"GET {self.path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        self.connected = time.time()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        data = self.tail + data
        cut = data.rfind(b"\n\n") + 2  # whole messages only; the rest waits
        whole, self.tail = data[:cut], data[cut:]
        stamps = [float(s) for s in TIMESTAMP.findall(whole)]
        self.latencies.extend(now - s for s in stamps if s >= self.connected)
        self.events += whole.count(b"\nevent: ")
        if self.tail.endswith(b"\r\n0\r\n\r\n"):  # the end of the chunked body
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def read(url: str, path: str, latencies: list[float]) -> int:
    """Read a run's native stream to its end; the number of events it had."""
    host, port = url.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    transport, reader = await loop.create_connection(
        lambda: Reader(path, latencies), host, int(port)
    )
    try:
        await reader.done
    finally:
        transport.close()
    return reader.events


async def start(client: httpx.AsyncClient, tokens: int, rate: float) -> str:
    answer = await client.post("/runs", json={"agent": "clock", "input": f"{tokens} {rate}"})
    run_id: str = answer.json()["run_id"]
    return run_id


async def one_run(
    url: str, pid: int, clients: int, tokens: int, rate: float
) -> tuple[float, int, list[float]]:
    """``clients`` readers on one run: server CPU, events delivered, latencies."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        cpu = cpu_seconds(pid)
        run_id = await start(client, tokens, rate)
        latencies: list[float] = []
        path = f"/runs/{run_id}/events"
        counts = await asyncio.gather(*(read(url, path, latencies) for _ in range(clients)))
        cpu = cpu_seconds(pid) - cpu
    return cpu, sum(counts), latencies


async def many_runs(
    url: str, pid: int, runs: int, tokens: int, rate: float, *, live: bool = True
) -> tuple[float, int, list[float]]:
    """``runs`` runs at once, one reader each (with ``live=False``, reading each run only
    once it has ended): server CPU, events delivered, latencies."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        cpu = cpu_seconds(pid)
        ids = await asyncio.gather(*(start(client, tokens, rate) for _ in range(runs)))
        if not live:
            await asyncio.sleep(tokens / rate + 1)  # a benchmark may: let the runs end
        latencies: list[float] = []
        counts = await asyncio.gather(*(read(url, f"/runs/{i}/events", latencies) for i in ids))
        cpu = cpu_seconds(pid) - cpu
    return cpu, sum(counts), latencies


def percentiles(latencies: list[float]) -> str:
    if not latencies:
        return "no samples"
    ms = sorted(x * 1000 for x in latencies)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {ms[-1]:.1f} ms ({len(ms)} samples)"


async def load(args: argparse.Namespace, url: str, pid: int) -> None:
    one, _, _ = await one_run(url, pid, 1, args.tokens, 0)
    cpu, delivered, _ = await one_run(url, pid, args.clients, args.tokens, 0)
    events = delivered / max(1, args.clients)
    extra = (cpu - one) / (events * (args.clients - 1)) * 1e6
    print(
        f"1. burst: {args.clients} clients x {events:.0f} events: server CPU {cpu:.2f} s "
        f"({one:.2f} s with one client): {cpu / delivered * 1e6:.2f} us per event per "
        f"client ({extra:.2f} us for each client past the first)"
    )

    cpu, delivered, latencies = await one_run(url, pid, args.clients, args.tokens, args.rate)
    print(
        f"2. paced at {args.rate:.0f} tokens/s: {args.clients} clients x "
        f"{delivered / max(1, args.clients):.0f} events: server CPU "
        f"{cpu / delivered * 1e6:.2f} us per event per client; latency {percentiles(latencies)}"
    )

    per_run = args.rate / 10
    alone, _, _ = await many_runs(url, pid, args.runs, args.run_tokens, per_run, live=False)
    cpu, delivered, latencies = await many_runs(url, pid, args.runs, args.run_tokens, per_run)
    print(
        f"3. {args.runs} runs at once x {args.run_tokens} tokens at {per_run:.0f}/s, one "
        f"client each: server CPU {cpu / delivered * 1e6:.2f} us per delivered event, "
        f"{(cpu - alone) / delivered * 1e6:.2f} us of it for live delivery (the runs "
        f"themselves, read once they ended: {alone / delivered * 1e6:.2f} us); latency "
        f"{percentiles(latencies)}"
    )


def main(args: argparse.Namespace) -> None:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        load_average = os.getloadavg()[0]
        print(f"server {url} (pid {server.pid}), {os.cpu_count()} cores, load {load_average:.1f}")
        asyncio.run(load(args, url, server.pid))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--run-tokens", type=int, default=500)
    parser.add_argument("--rate", type=float, default=1000.0, help="tokens per second (part 2)")
    arguments = parser.parse_args()
    if arguments.serve:
        serve()
    else:
        main(arguments)
