"""Wire compatibility and time bounds of OpenAIProvider (issue 8).

Each case is a shape a real OpenAI-compatible server sends (or a way a server
misbehaves), played by the loopback server through the real openai SDK and
OpenAIProvider; the chunk assembler is also checked directly, by a property
test over the shapes of tool-call fragments real servers use.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import rxagent as ra
from rxagent import testing as t
from rxagent.events import ReasoningDelta, StepRetry, TextDelta
from rxagent.providers.base import Finish, ToolCallReady
from rxagent.providers.openai import (
    ConnectionFailed,
    DeadlineExceeded,
    EventTooLarge,
    MalformedStream,
    RetryPolicy,
    StreamStalled,
)
from rxagent.providers.openai._assembly import ChunkAssembler
from rxagent.providers.openai._wire import SSEDecoder
from tests.helpers import collect
from tests.sse import (
    chunk_item,
    delta,
    lookup,
    request,
    sse,
)


@pytest.fixture
def server(loopback_server: t.LoopbackServer) -> t.LoopbackServer:
    return loopback_server  # (the rxagent.testing pytest plugin's)


# -- tool calls in the shapes servers send ------------------------------------------------
async def test_parallel_calls_with_empty_ids_and_no_index_stay_apart(
    server: t.LoopbackServer,
) -> None:
    # Gemini's OpenAI-compatible endpoint: two whole calls in one delta, "id": "", no index.
    calls = [
        {"id": "", "type": "function", "function": {"name": "lookup", "arguments": '{"key":"a"}'}},
        {"id": "", "type": "function", "function": {"name": "lookup", "arguments": '{"key":"b"}'}},
    ]
    server.push(sse(delta(tool_calls=calls), delta("tool_calls")), ["A and B."])
    got = await collect(ra.Agent(server.provider(), tools=[lookup]).run("go"))
    assert got.error is None, got.error
    result = got.events[-1].run
    assert result.tool_calls == 2 and result.text == "A and B."
    assistant = next(m for m in server.requests[1].messages if m.get("tool_calls"))
    assert [json.loads(c["function"]["arguments"]) for c in assistant["tool_calls"]] == [
        {"key": "a"},
        {"key": "b"},
    ]
    ids = [c["id"] for c in assistant["tool_calls"]]
    assert len(set(ids)) == 2 and all(ids)
    answers = [m for m in server.requests[1].messages if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in answers] == list(
        zip(ids, ["A", "B"], strict=True)
    )
    assert ra.validate_conversation(result.messages) == []


async def test_three_whole_calls_that_all_reuse_index_0(server: t.LoopbackServer) -> None:
    # Ollama and SGLang: each call whole, every one at index 0, each with its own id.
    def whole(call_id: str, key: str) -> dict[str, Any]:
        function = {"name": "lookup", "arguments": json.dumps({"key": key})}
        return delta(tool_calls=[{"index": 0, "id": call_id, "function": function}])

    server.push(sse(whole("x1", "a"), whole("x2", "b"), whole("x3", "c"), delta("tool_calls")))
    got = await collect(server.provider().stream(request()))
    assert got.error is None, got.error
    assert got.of(ToolCallReady) == [
        ToolCallReady("x1", "lookup", '{"key": "a"}'),
        ToolCallReady("x2", "lookup", '{"key": "b"}'),
        ToolCallReady("x3", "lookup", '{"key": "c"}'),
    ]


async def test_more_arguments_for_a_finished_call_are_still_an_error(
    server: t.LoopbackServer,
) -> None:
    # The sibling that must stay an error: index 0 comes back with neither id nor name.
    first = {"index": 0, "id": "x1", "function": {"name": "lookup", "arguments": "{}"}}
    second = {"index": 1, "id": "x2", "function": {"name": "lookup", "arguments": "{}"}}
    again = {"index": 0, "function": {"arguments": "{}"}}
    server.push(
        sse(delta(tool_calls=[first]), delta(tool_calls=[second]), delta(tool_calls=[again]))
    )
    got = await collect(server.provider().stream(request()))
    assert isinstance(got.error, MalformedStream)
    assert "tool call 0 got more arguments after it was complete" in str(got.error)


# -- content as a list of parts -----------------------------------------------------------
async def test_content_parts_give_text_and_reasoning(
    server: t.LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Mistral's reasoning models (Magistral): thinking parts, then text parts.
    thinking = {"type": "thinking", "thinking": [{"type": "text", "text": "Two and two. "}]}
    server.push(
        sse(
            delta(role="assistant", content=[thinking]),
            delta(content=[{"type": "thinking", "thinking": [{"type": "text", "text": "Four."}]}]),
            delta(content=[{"type": "reference", "reference_ids": [1]}]),
            delta(content=[{"type": "text", "text": "It is "}, {"type": "text", "text": "4."}]),
            delta("stop"),
        )
    )
    with caplog.at_level(logging.DEBUG, logger="rxagent.providers.openai"):
        got = await collect(ra.Agent(server.provider()).run("2 + 2?"))
    assert got.error is None, got.error
    assert [e.text for e in got.of(ReasoningDelta)] == ["Two and two. ", "Four."]
    assert [e.text for e in got.of(TextDelta)] == ["It is ", "4."]
    last = got.events[-1].run.last_message
    assert last.content == "It is 4." and last.reasoning == "Two and two. Four."
    assert "skipping a content part of type 'reference'" in caplog.text


async def test_content_parts_in_an_answer_that_does_not_stream(server: t.LoopbackServer) -> None:
    thinking = {"type": "thinking", "thinking": [{"type": "text", "text": "Hm."}]}
    message = {"role": "assistant", "content": [thinking, {"type": "text", "text": "Yes."}]}
    server.push(
        t.response({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})
    )
    got = await collect(server.provider().stream(request()))
    assert got.error is None, got.error
    assert got.of(TextDelta)[0].text == "Yes." and got.of(ReasoningDelta)[0].text == "Hm."


async def test_a_refusal_is_text_not_silence(server: t.LoopbackServer) -> None:
    server.push(sse(delta(refusal="I can't help with that."), delta("stop")))
    result = await ra.collect_final(ra.Agent(server.provider()).run("go"))
    assert result.text == "I can't help with that."


# -- the end of a stream ------------------------------------------------------------------
async def test_done_ends_the_answer_though_the_connection_stays_open(
    server: t.LoopbackServer,
) -> None:
    server.push(["Hello", t.finish("stop"), t.raw("data: [DONE]\n\n"), t.stall()])
    started = time.monotonic()
    got = await collect(ra.Agent(server.provider(read_timeout=30)).run("go"))
    assert got.error is None, got.error
    assert got.events[-1].run.text == "Hello"
    assert time.monotonic() - started < 10  # not the read timeout
    assert await server.requests[0].ended() == "disconnected"  # the client closed it


@pytest.mark.parametrize("after", [t.stall(), t.disconnect()], ids=["stall", "disconnect"])
async def test_a_finished_answer_is_kept_when_the_stream_breaks_after_it(
    server: t.LoopbackServer, after: t.Item
) -> None:
    # The finish reason and the usage came; then no [DONE]: silence, or a dropped connection.
    usage = {"prompt_tokens": 5, "completion_tokens": 1}
    server.push(["Hello", t.finish("stop"), chunk_item({"choices": [], "usage": usage}), after])
    got = await collect(ra.Agent(server.provider(read_timeout=0.3)).run("go"))
    assert got.error is None, got.error
    result = got.events[-1].run
    assert result.text == "Hello"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (5, 1)
    assert got.of(StepRetry) == []


# -- long events --------------------------------------------------------------------------
async def test_a_long_line_over_many_reads_arrives_whole(server: t.LoopbackServer) -> None:
    text = "é" * 300_000 + "!"  # two bytes a character: reads split characters too
    server.push([text])
    got = await collect(server.provider().stream(request()))
    assert got.error is None, got.error
    assert "".join(e.text for e in got.of(TextDelta)) == text


async def test_an_event_larger_than_the_cap_is_a_clear_error(server: t.LoopbackServer) -> None:
    server.push(["Hi", "x" * 5_000], ["Hi", t.raw("data: " + "y" * 5_000)])
    for _ in range(2):  # one whole line too long; one that never ends
        got = await collect(ra.Agent(server.provider(max_event_size=1_000)).run("go"))
        error = got.error
        assert isinstance(error, EventTooLarge) and isinstance(error, MalformedStream)
        assert "max_event_size=1000" in str(error)
        assert "OpenAIProvider(max_event_size=...)" in str(error)
        assert error.partial is not None and error.partial.text == "Hi"


# -- time bounds --------------------------------------------------------------------------
async def test_keep_alive_comments_are_not_progress(server: t.LoopbackServer) -> None:
    server.push(["Hi", t.keep_alive(every=0.02)])
    started = time.monotonic()
    got = await collect(ra.Agent(server.provider(read_timeout=0.3)).run("go"))
    error = got.error
    assert isinstance(error, StreamStalled) and "no data for 0.3 s" in str(error)
    assert "comment(s) since" in str(error) and "read_timeout" in str(error)
    assert time.monotonic() - started < 3
    assert error.partial is not None and error.partial.text == "Hi"
    assert await server.requests[0].ended() == "disconnected"


async def test_no_response_is_bounded_by_the_first_byte_timeout_and_the_retry_budget(
    server: t.LoopbackServer,
) -> None:
    server.push(*[t.no_response()] * 10)
    provider = server.provider(
        first_byte_timeout=0.2,
        retry=RetryPolicy(max_retries=10, base_delay=0.001, max_elapsed=0.5),
    )
    started = time.monotonic()
    got = await collect(ra.Agent(provider).run("go"))
    elapsed = time.monotonic() - started
    error = got.error
    assert isinstance(error, ConnectionFailed) and error.retryable
    assert "within first_byte_timeout=0.2 s" in str(error)
    # Attempts start at about 0, 0.2 and 0.4 s; a fourth would start after the budget.
    assert len(server.requests) == 3 and len(got.of(StepRetry)) == 2
    assert elapsed < 2
    for sent in server.requests:
        assert await sent.ended() == "disconnected"


async def test_the_whole_answer_is_bounded_by_the_total_timeout(server: t.LoopbackServer) -> None:
    server.push(["tick", *[x for _ in range(200) for x in (t.delay(0.02), "tick")]])
    provider = server.provider(total_timeout=0.4)
    got = await collect(ra.Agent(provider).run("go"))
    error = got.error
    assert isinstance(error, DeadlineExceeded) and not error.retryable
    assert "took longer than total_timeout=0.4 s" in str(error)
    assert error.partial is not None and error.partial.text.startswith("ticktick")
    assert got.of(StepRetry) == []


def test_the_default_retry_budget_is_bounded_in_wall_time() -> None:
    policy = RetryPolicy()
    assert policy.max_elapsed is not None and policy.max_elapsed <= 120
    assert policy.wait(1, elapsed=0.0) is not None
    assert policy.wait(1, elapsed=policy.max_elapsed) is None
    assert policy.wait(1, retry_after=30, elapsed=policy.max_elapsed - 10) is None
    assert RetryPolicy(max_elapsed=None).wait(1, elapsed=1e9) is not None
    with pytest.raises(ValueError, match="max_elapsed"):
        RetryPolicy(max_elapsed=-1)


def test_timeouts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="read_timeout"):
        ra.OpenAIProvider("m", base_url="http://127.0.0.1:1/v1", read_timeout=0)
    with pytest.raises(ValueError, match="max_event_size"):
        ra.OpenAIProvider("m", base_url="http://127.0.0.1:1/v1", max_event_size=0)


# -- the assembler, over the shapes of real servers ----------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
arguments = st.dictionaries(st.text(max_size=6), json_values, max_size=4)


@st.composite
def tool_call_streams(draw: st.DrawFn) -> tuple[list[tuple[str | None, str, Any]], bytes, str]:
    """N calls, the SSE bytes a server of some shape sends for them, and the shape."""
    calls = draw(
        st.lists(
            st.tuples(st.sampled_from(["lookup", "add", "search"]), arguments),
            min_size=1,
            max_size=5,
        )
    )
    shape = draw(st.sampled_from(["openai", "gemini", "ollama", "no_index", "named_pieces"]))
    with_ids = shape in ("ollama",) or draw(st.booleans())
    fragments: list[dict[str, Any]] = []
    expected: list[tuple[str | None, str, Any]] = []
    for n, (name, args) in enumerate(calls):
        text = json.dumps(args)
        call_id = f"id{n}" if with_ids else None
        expected.append((call_id, name, args))
        if shape in ("gemini", "ollama"):  # whole calls
            fragment: dict[str, Any] = {
                "type": "function",
                "id": call_id or "",
                "function": {"name": name, "arguments": text},
            }
            if shape == "ollama":
                fragment["index"] = 0
            fragments.append(fragment)
            continue
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=4)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) if a < b]
        for k, piece in enumerate(pieces):
            fragment = {"function": {"arguments": piece}}
            if shape != "no_index":
                fragment["index"] = n
            if k == 0 or shape == "named_pieces":
                fragment["function"]["name"] = name
            if k == 0 and call_id is not None:
                fragment["id"] = call_id
                fragment["type"] = "function"
            fragments.append(fragment)
    # Pack the fragments into deltas, several to a delta or one each.
    chunks: list[dict[str, Any]] = [delta(role="assistant", content="")]
    i = 0
    while i < len(fragments):
        size = draw(st.integers(1, 3))
        chunks.append(delta(tool_calls=fragments[i : i + size]))
        i += size
    chunks.append(delta("tool_calls"))
    body = "".join(f"data: {json.dumps(c, ensure_ascii=False)}\n\n" for c in chunks)
    return expected, (body + "data: [DONE]\n\n").encode(), shape


@given(stream=tool_call_streams(), data=st.data())
def test_any_split_of_valid_fragments_assembles_to_the_same_calls(
    stream: tuple[list[tuple[str | None, str, Any]], bytes, str], data: st.DataObject
) -> None:
    expected, body, _shape = stream
    cuts = sorted(data.draw(st.sets(st.integers(1, len(body) - 1), max_size=12)))
    blocks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    decoder = SSEDecoder(1 << 20)
    parser = ChunkAssembler(step=1)
    out: list[Any] = []
    for block in blocks:
        for event, payload in decoder.feed(block):
            out.extend(parser.feed(payload, event))
    out.extend(parser.end("http://test"))
    ready = [c for c in out if isinstance(c, ToolCallReady)]
    assert [(c.name, json.loads(c.arguments)) for c in ready] == [(n, a) for _, n, a in expected]
    for (call_id, _, _), got in zip(expected, ready, strict=True):
        if call_id is not None:
            assert got.call_id == call_id
    assert len({c.call_id for c in ready}) == len(ready)
    assert out[-1] == Finish("tool_calls")
    assert parser.done


@pytest.mark.parametrize(
    "after",
    [t.error_event("late"), t.malformed(), t.raw("not SSE\n\n")],
    ids=["error event", "malformed", "not SSE"],
)
async def test_what_comes_after_the_finish_reason_cannot_undo_the_answer(
    server: t.LoopbackServer, after: t.Item, caplog: pytest.LogCaptureFixture
) -> None:
    server.push(["Hello", t.finish("stop"), after])
    with caplog.at_level(logging.WARNING, logger="rxagent.providers.openai"):
        got = await collect(ra.Agent(server.provider()).run("go"))
    assert got.error is None, got.error
    assert got.events[-1].run.text == "Hello"
    assert "sent after its answer" in caplog.text
