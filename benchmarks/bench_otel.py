"""What tracing (rxagent.otel) costs, offline (ScriptedProvider, the OpenTelemetry SDK).

    python benchmarks/bench_otel.py [--events N] [--repeat R]

1. Streams N text deltas (default 100,000) in one step through an agent, untraced and
   traced (``rxagent.otel.instrument``, an SDK ``TracerProvider`` exporting to memory),
   runs taken in turn, and prints the CPU time per event of each and the difference:
   what tracing adds to each event. Content capture off, then on.
2. The same run's events, recorded, replayed through ``rxagent.otel.traced()`` and through
   nothing: the operator's own cost per event, without the run's noise.
3. Runs 20 steps of 4 tool calls each (100 spans a run), untraced and traced, and prints
   what tracing adds per span (the SDK's span processing included).

Target: tracing adds at most 2 us of CPU per event with content capture off.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import reactivex as rx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import rxagent as ra
import rxagent.otel as otel
from rxagent import scripted as s


def tracer_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def cpu_of(agent: ra.Agent) -> tuple[float, int]:
    run = agent.run("go")
    cpu = time.process_time()
    await ra.collect_final(run)
    return time.process_time() - cpu, len(run.events)


def streaming_agent(n: int) -> ra.Agent:
    return ra.Agent(ra.ScriptedProvider([["x"] * n]), policy=ra.policies.max_steps(1))


@ra.tool
async def noop(i: int) -> int:
    """Return i."""
    return i


def tools_agent(steps: int, calls: int) -> ra.Agent:
    def answer(request: ra.ProviderRequest) -> list[Any]:
        if request.step > steps:
            return ["done"]
        return [s.call("noop", {"i": i}) for i in range(calls)]

    return ra.Agent(
        ra.ScriptedProvider(answer), tools=[noop], policy=ra.policies.max_steps(steps + 1)
    )


async def compare(
    make: Any, repeat: int, capture: bool
) -> tuple[list[float], list[float], int, int]:
    """CPU seconds of untraced and traced runs (taken in turn), events and spans a run."""
    plain_cpu: list[float] = []
    traced_cpu: list[float] = []
    events = spans = 0
    for _ in range(repeat):
        cpu, events = await cpu_of(make())
        plain_cpu.append(cpu)
        provider, exporter = tracer_provider()
        agent = otel.instrument(make(), tracer_provider=provider, capture_content=capture)
        cpu, _ = await cpu_of(agent)
        traced_cpu.append(cpu)
        spans = len(exporter.get_finished_spans())
        provider.shutdown()
    return plain_cpu, traced_cpu, events, spans


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    await compare(lambda: streaming_agent(1000), 2, False)  # warm up
    for capture in (False, True):
        plain, traced_, events, spans = await compare(
            lambda: streaming_agent(args.events), args.repeat, capture
        )
        base = statistics.median(plain) / events * 1e6
        with_tracing = statistics.median(traced_) / events * 1e6
        added = [(t - p) / events * 1e6 for p, t in zip(plain, traced_, strict=True)]
        print(
            f"streaming, {events} events, {spans} spans, content capture "
            f"{'on' if capture else 'off'}: untraced {base:.2f} us CPU/event, traced "
            f"{with_tracing:.2f}; tracing adds median {statistics.median(added):.2f} us/event "
            f"(min {min(added):.2f}, max {max(added):.2f}; target <= 2)"
        )

    run = streaming_agent(args.events).run("go")
    await ra.collect_final(run)
    recorded = list(run.events)
    provider, _ = tracer_provider()
    alone: list[float] = []
    for _ in range(args.repeat):
        cpu = time.process_time()
        rx.from_iterable(recorded).subscribe(lambda _: None)
        bare = time.process_time() - cpu
        cpu = time.process_time()
        rx.from_iterable(recorded).pipe(otel.traced(tracer_provider=provider)).subscribe(
            lambda _: None
        )
        alone.append((time.process_time() - cpu - bare) / len(recorded) * 1e6)
    print(
        f"traced() alone over {len(recorded)} recorded events: median "
        f"{statistics.median(alone):.2f} us CPU/event (min {min(alone):.2f}, max {max(alone):.2f})"
    )

    plain, traced_, events, spans = await compare(lambda: tools_agent(20, 4), args.repeat, False)
    added_per_span = [(t - p) / spans * 1e6 for p, t in zip(plain, traced_, strict=True)]
    print(
        f"tools, 20 steps x 4 calls ({events} events, {spans} spans): tracing adds median "
        f"{statistics.median(added_per_span):.1f} us CPU per span "
        f"(untraced run {statistics.median(plain) * 1e3:.1f} ms CPU, traced "
        f"{statistics.median(traced_) * 1e3:.1f} ms)"
    )


if __name__ == "__main__":
    asyncio.run(main())
