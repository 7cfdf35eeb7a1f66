"""CPU per streamed token: the openai SDK's typed stream against OpenAIProvider + Agent.

    python benchmarks/bench_openai.py [--tokens N] [--repeat R] [--runs K] [--run-tokens M]

Everything runs in one process: the loopback server (rxagent.testing) streams
from a thread of its own, and the client side runs on the main thread's event
loop, so the main thread's CPU time (``time.thread_time``) is the client's cost
alone, with nothing of the server's in it.

1. Streams N tokens (default 20,000), one chunk each, in R interleaved rounds
   (default 5; a, c, b in each, so that the machine's drift hits all alike), and
   prints the median client CPU per token of
   (a) the SDK's typed stream, ``async for chunk in await create(stream=True)``
       (the baseline users know), and
   (b) ``OpenAIProvider`` + ``Agent`` with two observers (all of rxagent included),
   and the ratio b/a. For reference it also prints (c): the SDK's
   ``with_streaming_response`` read line by line with ``json.loads``, no events.
2. Starts K runs (default 200) of M tokens (default 200) at once and prints the
   total client CPU, the batch's wall time and the median time to first token:
   once on new connections (cold), once on the connections the pool kept (warm).
   ``--chunk-delay`` paces the server (seconds per token) for this part.

Figures move with the machine's load (the client and the server share its
cores and one GIL); compare a and b from the same run.

Targets: b/a <= 0.25; median time to first token < wall time / 10.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from openai import AsyncOpenAI

import rxagent as ra
from rxagent import testing as t
from rxagent.events import TextDelta
from rxagent.providers.openai import OpenAIProvider

TOKEN = "tok "
MESSAGES: list[Any] = [{"role": "user", "content": "stream, please"}]


async def typed_stream(client: AsyncOpenAI, server: t.LoopbackServer, n: int) -> float:
    server.push([TOKEN] * n)
    cpu = time.thread_time()
    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    text = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
    cpu = time.thread_time() - cpu
    assert len(text) == n
    return cpu


async def raw_lines(client: AsyncOpenAI, server: t.LoopbackServer, n: int) -> float:
    server.push([TOKEN] * n)
    cpu = time.thread_time()
    count = 0
    async with client.chat.completions.with_streaming_response.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ) as response:
        async for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    count += 1
    cpu = time.thread_time() - cpu
    assert count == n
    return cpu


async def agent_run(provider: OpenAIProvider, server: t.LoopbackServer, n: int) -> float:
    server.push([TOKEN] * n)
    run = ra.Agent(provider, policy=ra.policies.max_steps(1)).run("stream, please")
    counts = [0, 0]

    def first(event: ra.AgentEvent) -> None:
        counts[0] += 1

    def second(event: ra.AgentEvent) -> None:
        counts[1] += 1

    run.subscribe(first)
    run.subscribe(second)
    cpu = time.thread_time()
    result = await ra.collect_final(run)
    cpu = time.thread_time() - cpu
    assert result.text == TOKEN * n and counts[0] == counts[1] > n
    return cpu


async def batch(agent: ra.Agent, runs: int, tokens: int) -> tuple[float, float, float]:
    """Start ``runs`` runs at once; (client CPU, wall time, median time to first token)."""
    firsts: list[float] = []

    async def one(started: float) -> None:
        run = agent.run("stream, please")
        seen: list[float] = []

        def on_event(event: ra.AgentEvent) -> None:
            if not seen and type(event) is TextDelta:
                seen.append(time.monotonic() - started)

        run.subscribe(on_event)
        result = await ra.collect_final(run)
        assert result.text == TOKEN * tokens
        firsts.append(seen[0])

    cpu = time.thread_time()
    started = time.monotonic()
    await asyncio.gather(*(one(started) for _ in range(runs)))
    wall = time.monotonic() - started
    return time.thread_time() - cpu, wall, statistics.median(firsts)


async def concurrent_runs(runs: int, tokens: int, chunk_delay: float) -> None:
    with t.LoopbackServer(lambda _: [TOKEN] * tokens, chunk_delay=chunk_delay) as server:
        provider = server.provider(read_timeout=60.0)
        agent = ra.Agent(provider, policy=ra.policies.max_steps(1))
        await ra.collect_final(agent.run("warm up"))
        pace = f", server pace {chunk_delay * 1000:g} ms/token" if chunk_delay else ""
        print(f"{runs} concurrent runs x {tokens} tokens{pace}:")
        # Cold: every run opens a connection. Warm: the pool kept the SDK's default of
        # 100 keep-alive connections from the cold batch, as in a long-running service.
        for label in ("cold", "warm"):
            cpu, wall, ttft = await batch(agent, runs, tokens)
            print(
                f"  {label}: client CPU {cpu:.2f} s ({cpu / (runs * tokens) * 1e6:.1f} us/token), "
                f"wall {wall:.2f} s, median time to first token {ttft * 1000:.0f} ms "
                f"= wall / {wall / ttft:.1f} (target: below wall / 10)"
            )
        await provider.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--run-tokens", type=int, default=200)
    parser.add_argument(
        "--chunk-delay", type=float, default=0.0, help="server pace for the concurrent runs"
    )
    args = parser.parse_args()
    n = args.tokens

    with t.LoopbackServer() as server:
        client = AsyncOpenAI(api_key="x", base_url=server.url, max_retries=0)
        provider = server.provider()
        # Warm up: imports, the SDK's platform probe, connection pools.
        await typed_stream(client, server, 200)
        await raw_lines(client, server, 200)
        await agent_run(provider, server, 200)
        # Interleaved rounds: the machine's drift (other load, CPU steal) hits all alike.
        a: list[float] = []
        b: list[float] = []
        c: list[float] = []
        for _ in range(args.repeat):
            a.append(await typed_stream(client, server, n))
            c.append(await raw_lines(client, server, n))
            b.append(await agent_run(provider, server, n))
        await client.close()
        await provider.aclose()

    def per_token(xs: list[float]) -> str:
        return f"{statistics.median(xs) / n * 1e6:7.1f} us  (min {min(xs) / n * 1e6:.1f})"

    ratios = [y / x for x, y in zip(a, b, strict=True)]
    print(f"{n} tokens, client CPU per token (median of {args.repeat} interleaved rounds):")
    print(f"  (a) SDK typed stream, async for:               {per_token(a)}")
    print(f"  (b) OpenAIProvider + Agent, two observers:     {per_token(b)}")
    print(f"  (c) for reference: SDK lines + json.loads:     {per_token(c)}")
    print(
        f"  b/a = {statistics.median(ratios):.3f} (median of the rounds' ratios; "
        f"range {min(ratios):.3f}-{max(ratios):.3f}; target <= 0.25)"
    )
    await concurrent_runs(args.runs, args.run_tokens, args.chunk_delay)


if __name__ == "__main__":
    asyncio.run(main())
