"""Record a session to a cassette, replay it byte for byte, and fail clearly when it differs."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest

import rxagent as ra
from rxagent import testing as t
from rxagent.events import StepRetry, TextDelta
from rxagent.providers.openai import BadRequest, StreamInterrupted
from tests.helpers import collect

SECRET = "sk-test-do-not-leak-0123456789"


@ra.tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_recorded_session_replays_to_the_same_run(tmp_path: Path) -> None:
    cassette = tmp_path / "session.jsonl"
    script = [
        ["Adding. ", t.call("add", {"a": 2, "b": 3}), t.usage(20, 8)],
        t.rate_limited(retry_after=0.01),
        ["2 + 3 = ", "5."],
    ]
    async with t.LoopbackServer(script) as server:
        provider = t.record(server.provider(api_key=SECRET), cassette)
        recorded = await collect(ra.Agent(provider, tools=[add]).run("2 + 3?"))
    assert recorded.error is None, recorded.error
    first = recorded.events[-1].run

    exchanges = lines(cassette)
    assert [e["response"]["status"] for e in exchanges] == [200, 429, 200]
    assert all(e["request"]["endpoint"] == "/chat/completions" for e in exchanges)
    assert exchanges[0]["request"]["body"]["messages"] == [{"role": "user", "content": "2 + 3?"}]
    assert exchanges[0]["request"]["headers"]["authorization"] == "REDACTED"
    assert exchanges[1]["response"]["headers"]["retry-after"] == "0.01"
    assert SECRET not in cassette.read_text()

    async with t.LoopbackServer.from_cassette(cassette) as replay:
        replayed = await collect(ra.Agent(replay.provider(), tools=[add]).run("2 + 3?"))
        assert replay.cassette is not None and replay.cassette.mismatches == []
    assert replayed.error is None, replayed.error
    again = replayed.events[-1].run
    assert again.text == first.text == "2 + 3 = 5." and again.messages == first.messages
    assert again.usage == first.usage and again.tool_calls == 1
    assert [e.text for e in replayed.of(TextDelta)] == [e.text for e in recorded.of(TextDelta)]
    assert len(replayed.of(StepRetry)) == len(recorded.of(StepRetry)) == 1


async def test_the_replay_sends_the_recorded_bytes_in_the_recorded_pieces(tmp_path: Path) -> None:
    cassette = tmp_path / "bytes.jsonl"
    async with t.LoopbackServer([["Hé", "llo ", "wörld"]]) as server:
        await ra.collect_final(ra.Agent(t.record(server.provider(), cassette)).run("hi"))
    (exchange,) = lines(cassette)
    recorded = exchange["response"]["body"].encode()
    assert sum(exchange["response"]["chunks"]) == len(recorded)

    with t.LoopbackServer.from_cassette(cassette) as replay:
        connection = http.client.HTTPConnection("127.0.0.1", replay.port, timeout=5)
        body = json.dumps(exchange["request"]["body"])
        connection.request(
            "POST", "/v1/chat/completions", body, {"content-type": "application/json"}
        )
        answer = connection.getresponse()
        pieces = []
        while piece := answer.read1(65536):
            pieces.append(piece)
        connection.close()
    assert answer.status == 200 and answer.getheader("content-type", "").startswith("text/event")
    assert b"".join(pieces) == recorded


async def test_a_request_that_differs_from_the_recording_fails_clearly(tmp_path: Path) -> None:
    cassette = tmp_path / "differs.jsonl"
    async with t.LoopbackServer([["four"]]) as server:
        await ra.collect_final(ra.Agent(t.record(server.provider(), cassette)).run("2 + 2?"))

    async with t.LoopbackServer.from_cassette(cassette) as replay:
        got = await collect(ra.Agent(replay.provider()).run("3 + 3?"))
        assert replay.cassette is not None
        (mismatch,) = replay.cassette.mismatches
    assert isinstance(got.error, BadRequest) and got.error.status_code == 400
    assert 'body.messages[0].content is "3 + 3?", recorded "2 + 2?"' in str(got.error)
    assert mismatch in str(got.error) and "differs from the one" in mismatch


async def test_a_stream_that_broke_breaks_again_on_replay(tmp_path: Path) -> None:
    cassette = tmp_path / "broken.jsonl"
    async with t.LoopbackServer([["Hel", "lo", t.disconnect()]]) as server:
        got = await collect(ra.Agent(t.record(server.provider(), cassette)).run("hi"))
    assert isinstance(got.error, StreamInterrupted)
    (exchange,) = lines(cassette)
    assert exchange["ended"] != "completed" and "Hel" in exchange["response"]["body"]

    async with t.LoopbackServer.from_cassette(cassette) as replay:
        again = await collect(ra.Agent(replay.provider()).run("hi"))
    assert isinstance(again.error, StreamInterrupted)
    assert again.error.partial is not None and again.error.partial.text == "Hello"


async def test_a_responses_api_session_records_and_replays(tmp_path: Path) -> None:
    cassette = tmp_path / "responses.jsonl"
    options: dict[str, Any] = {"api_key": SECRET, "first_byte_timeout": 5.0}
    async with t.LoopbackServer(
        [[t.reasoning("Sum."), t.call("add", {"a": 1, "b": 2})], ["3"]]
    ) as server:
        provider = t.record(
            ra.OpenAIResponsesProvider("m", base_url=server.url, **options), cassette
        )
        first = await ra.collect_final(ra.Agent(provider, tools=[add]).run("1 + 2?"))
    assert [e["request"]["endpoint"] for e in lines(cassette)] == ["/responses", "/responses"]
    assert SECRET not in cassette.read_text()

    async with t.LoopbackServer.from_cassette(cassette) as replay:
        provider = ra.OpenAIResponsesProvider("m", base_url=replay.url, **options)
        again = await ra.collect_final(ra.Agent(provider, tools=[add]).run("1 + 2?"))
    assert again.text == first.text == "3" and again.messages == first.messages


def test_record_needs_an_openai_provider(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="OpenAIProvider or OpenAIResponsesProvider"):
        t.record(ra.ScriptedProvider([["hi"]]), tmp_path / "x.jsonl")
