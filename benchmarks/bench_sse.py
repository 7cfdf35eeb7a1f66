"""Time to read one long Server-Sent Events line: linear in its length, not quadratic.

    python benchmarks/bench_sse.py [--sizes 4 16 32] [--block 65536]

For each size (MB) one chunk whose ``content`` is that long is read
(1) by the provider's SSE decoder alone, fed in ``--block``-byte reads (as a
network delivers them), and (2) end to end: OpenAIProvider through the real
openai SDK against the loopback server. It prints the seconds each took and the
time per MB, which should stay about the same from size to size.

Before issue 8 the buffered line was rebuilt and re-split on every read:
4 MB took 0.15 s, 16 MB 1.9 s and 32 MB 8.6 s. Target: 32 MB in under 0.5 s
through the decoder, and seconds per MB about flat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from rxagent import testing as t
from rxagent.aio import to_async_iterable
from rxagent.events import TextDelta
from rxagent.messages import UserMessage
from rxagent.providers.base import ProviderRequest
from rxagent.providers.openai._assembly import ChunkAssembler
from rxagent.providers.openai._wire import SSEDecoder


def body(size: int) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": {"content": "x" * size}, "finish_reason": None}]}
    return f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()


def decoder_alone(data: bytes, block: int) -> float:
    started = time.perf_counter()
    decoder = SSEDecoder(len(data) + 1)
    parser = ChunkAssembler(step=1)
    texts = 0
    for i in range(0, len(data), block):
        for event, payload in decoder.feed(data[i : i + block]):
            texts += sum(len(c.text) for c in parser.feed(payload, event) if type(c) is TextDelta)
    elapsed = time.perf_counter() - started
    assert texts == len(data) - 98, texts
    return elapsed


async def end_to_end(server: t.LoopbackServer, size: int) -> float:
    server.push([t.raw(body(size))])
    provider = server.provider(max_event_size=size + 1024)
    request = ProviderRequest(messages=(UserMessage(content="long"),))
    started = time.perf_counter()
    text = 0
    async for chunk in to_async_iterable(provider.stream(request)):
        if type(chunk) is TextDelta:
            text += len(chunk.text)
    elapsed = time.perf_counter() - started
    await provider.aclose()
    assert text == size, text
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 32])
    parser.add_argument("--block", type=int, default=65536)
    args = parser.parse_args()
    print(f"one SSE line of N MB, read in {args.block}-byte blocks:")
    with t.LoopbackServer() as server:
        for mb in args.sizes:
            size = mb * 1_000_000
            alone = decoder_alone(body(size), args.block)
            whole = await end_to_end(server, size)
            print(
                f"  {mb:3d} MB: decoder {alone:6.3f} s ({alone / mb * 1000:5.1f} ms/MB), "
                f"provider end to end {whole:6.3f} s ({whole / mb * 1000:5.1f} ms/MB)"
            )


if __name__ == "__main__":
    asyncio.run(main())
