"""Several agents at once in an asyncio application, their events routed to consumers.

Three agents (a weather desk, a calculator and a news reader whose feed breaks) run
concurrently on one event loop, with no notebook in sight. Their events are tagged
with the agent's name, merged, and routed with plain Rx operators:

* a token printer: the text pieces, as they arrive, interleaved across agents;
* a tool log: each tool call's start and end;
* a usage counter: a ``scan`` over the usage reports, per agent;
* a JSON-lines recorder: every event into ``<out>/<agent>.jsonl``, handed over through
  an ``asyncio.Queue`` to a writer task (where a websocket or a message bus would go).

A failed run is just more data here: ``ra.ops.materialize()`` turns its error into a
``RunFailed`` event, so one agent failing neither stops the others nor the app.

Offline (scripted models), so it runs anywhere::

    python examples/asyncio_app.py --out runs/
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import reactivex as rx
from reactivex import Observable
from reactivex import operators as rx_ops

import rxagent as ra
from rxagent import events
from rxagent import scripted as s
from rxagent.events import AgentEvent


@dataclass(frozen=True)
class Tagged:
    """An event and the agent it came from."""

    agent: str
    event: AgentEvent


# -- the agents ------------------------------------------------------------------------
@ra.tool
async def get_weather(city: str) -> dict[str, Any]:
    """Current weather for a city."""
    await asyncio.sleep(0.05)  # a web service
    return {"city": city, "sky": "sunny" if city == "Paris" else "rainy"}


@ra.tool
def multiply(a: int, b: int) -> int:
    """Multiply two numbers."""
    return a * b


@ra.tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@ra.tool
async def headlines(source: str) -> list[str]:
    """Today's headlines from a news source."""
    await asyncio.sleep(0.03)
    if source == "wire":
        raise ConnectionError("the wire service is down")
    return [f"{source}: all quiet"]


def build_agents() -> dict[str, tuple[ra.Agent, str]]:
    """Each agent with its question."""
    weather = ra.Agent(
        ra.ScriptedProvider(
            [
                [
                    "Checking ",
                    "Paris and Oslo. ",
                    s.call("get_weather", {"city": "Paris"}),
                    s.call("get_weather", {"city": "Oslo"}),
                    s.usage(30, 12),
                ],
                ["Paris is sunny, ", "Oslo is rainy.", s.usage(55, 9)],
            ],
            chunk_delay=0.01,
        ),
        tools=[get_weather],
    )
    calculator = ra.Agent(
        ra.ScriptedProvider(
            [
                ["First ", "6 times 7. ", s.call("multiply", {"a": 6, "b": 7}), s.usage(20, 8)],
                ["Then ", "add 8. ", s.call("add", {"a": 42, "b": 8}), s.usage(35, 8)],
                ["The answer ", "is 50.", s.usage(48, 5)],
            ],
            chunk_delay=0.01,
        ),
        tools=[multiply, add],
    )
    news = ra.Agent(
        ra.ScriptedProvider(
            [
                [
                    "Reading ",
                    "the news. ",
                    s.call("headlines", {"source": "local"}),
                    s.call("headlines", {"source": "wire"}),
                    s.usage(25, 10),
                ],
                ["(never reached)"],
            ],
            chunk_delay=0.01,
        ),
        tools=[headlines],
        join=ra.JoinPolicy.FAIL_FAST,  # the wire's failure fails this run
    )
    return {
        "weather": (weather, "Weather in Paris and Oslo?"),
        "calculator": (calculator, "What is 6 * 7 + 8?"),
        "news": (news, "Any news?"),
    }


# -- the consumers ---------------------------------------------------------------------
def say(agent: str, kind: str, detail: str) -> None:
    print(f"[{agent}] {kind} {detail}", flush=True)


def print_token(item: Tagged) -> None:
    assert isinstance(item.event, events.TextDelta)
    say(item.agent, "text", json.dumps(item.event.text))


def log_tool(item: Tagged) -> None:
    event = item.event
    if isinstance(event, events.ToolCallStarted):
        say(item.agent, "tool", f"{event.name} {json.dumps(event.arguments)} started")
    elif isinstance(event, events.ToolCallEnded):
        outcome = f"failed: {event.error}" if event.error else f"-> {json.dumps(event.output)}"
        say(item.agent, "tool", f"{event.name} {outcome}")


def count_usage(totals: dict[str, ra.Usage], item: Tagged) -> dict[str, ra.Usage]:
    assert isinstance(item.event, events.UsageDelta)
    usage = ra.Usage(
        prompt_tokens=item.event.prompt_tokens, completion_tokens=item.event.completion_tokens
    )
    return {**totals, item.agent: totals.get(item.agent, ra.Usage()) + usage}


async def record_jsonl(queue: asyncio.Queue[Tagged | None], out: Path) -> dict[str, int]:
    """Write each agent's events to its own JSON-lines file; returns lines per agent."""
    files: dict[str, Any] = {}
    written: dict[str, int] = {}
    try:
        while (item := await queue.get()) is not None:
            if item.agent not in files:
                files[item.agent] = (out / f"{item.agent}.jsonl").open("w", encoding="utf-8")
            files[item.agent].write(events.dumps(item.event) + "\n")
            written[item.agent] = written.get(item.agent, 0) + 1
    finally:
        for file in files.values():
            file.close()
    return written


def of_type(*kinds: type[Any]) -> Callable[[Tagged], bool]:
    return lambda item: isinstance(item.event, kinds)


# -- the application -------------------------------------------------------------------
async def main(out: Path) -> int:
    """Run the agents at once, route their events, report; ``out`` must exist."""
    runs = {name: agent.run(question) for name, (agent, question) in build_agents().items()}

    def tagged_events(name: str, run: ra.Run) -> Observable[Tagged]:
        # materialize(): a failure becomes a RunFailed event, so the merge goes on.
        return run.pipe(ra.ops.materialize(), rx_ops.map(lambda event: Tagged(name, event)))

    # Each consumer subscribes to this on its own: a Run is shared (one provider call per
    # step, however many observers) and replays what a later subscriber missed.
    everything: Observable[Tagged] = rx.merge(*(tagged_events(n, r) for n, r in runs.items()))

    totals: dict[str, ra.Usage] = {}
    queue: asyncio.Queue[Tagged | None] = asyncio.Queue()
    recorder = asyncio.create_task(record_jsonl(queue, out))

    def keep_totals(latest: dict[str, ra.Usage]) -> None:
        totals.update(latest)

    subscriptions = [
        everything.pipe(rx_ops.filter(of_type(events.TextDelta))).subscribe(print_token),
        everything.pipe(
            rx_ops.filter(of_type(events.ToolCallStarted, events.ToolCallEnded))
        ).subscribe(log_tool),
        everything.pipe(
            rx_ops.filter(of_type(events.UsageDelta)), rx_ops.scan(count_usage, seed={})
        ).subscribe(keep_totals),
        everything.subscribe(queue.put_nowait, on_completed=lambda: queue.put_nowait(None)),
    ]

    results = await asyncio.gather(
        *(ra.collect_final(run) for run in runs.values()), return_exceptions=True
    )
    written = await recorder
    for subscription in subscriptions:
        subscription.dispose()

    for name, result in zip(runs, results, strict=True):
        if isinstance(result, BaseException):
            say(name, "failed", f"{type(result).__name__}: {result}")
        else:
            say(name, "done", f"{result.stop.value}, {result.steps} steps: {result.text!r}")
    for name in runs:
        usage = totals.get(name, ra.Usage())
        say(name, "usage", f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion")
    for name, count in sorted(written.items()):
        say(name, "recorded", f"{count} events in {out / (name + '.jsonl')}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("runs"), help="where the .jsonl go")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    return asyncio.run(main(args.out))


if __name__ == "__main__":
    sys.exit(cli())
