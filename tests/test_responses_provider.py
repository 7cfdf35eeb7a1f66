"""OpenAIResponsesProvider through the real openai SDK against the loopback server's
``/v1/responses``, and its parser on Responses API streams captured from real servers
(tests/fixtures/responses, with their sources)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import openai
import pytest

import rxagent as ra
from rxagent import testing as t
from rxagent.events import ReasoningDelta, StepRetry, TextDelta, ToolArgsDelta, UsageDelta
from rxagent.messages import AssistantMessage, SystemMessage, ToolCall, ToolMessage, UserMessage
from rxagent.providers.base import Finish, ProviderRequest, ToolCallReady
from rxagent.providers.openai import (
    MalformedStream,
    RateLimitError,
    StreamError,
    StreamInterrupted,
    StreamStalled,
)
from rxagent.providers.openai._wire import SSEDecoder
from rxagent.providers.responses._assembly import ResponsesAssembler
from tests.helpers import collect
from tests.sse import lookup

FIXTURES = Path(__file__).parent / "fixtures" / "responses"


@pytest.fixture
def server(loopback_server: t.LoopbackServer) -> t.LoopbackServer:
    return loopback_server  # (the rxagent.testing pytest plugin's)


def responses(server: t.LoopbackServer, **options: Any) -> ra.OpenAIResponsesProvider:
    settings: dict[str, Any] = {
        "base_url": server.url,
        "api_key": "loopback",
        "retry": ra.RetryPolicy(base_delay=0.001, max_delay=0.02),
        "first_byte_timeout": 5.0,
        "read_timeout": 5.0,
    }
    return ra.OpenAIResponsesProvider("loopback", **{**settings, **options})


def ask(*messages: Any, tools: tuple[Any, ...] = ()) -> ProviderRequest:
    given = tuple(UserMessage(content=m) if isinstance(m, str) else m for m in messages)
    return ProviderRequest(messages=given, tools=tools)


# -- the loopback server speaks the Responses API ------------------------------------------
async def test_the_sdks_typed_stream_and_response_read_the_loopback_server(
    server: t.LoopbackServer,
) -> None:
    server.push(
        [t.reasoning("Hm."), "Hel", "lo", t.call("lookup", {"key": "a"}, id="c1"), t.usage(7, 3)],
        ["Whole ", "answer."],
    )
    client = openai.AsyncOpenAI(api_key="x", base_url=server.url, max_retries=0)
    stream = await client.responses.create(model="m", input="hi", stream=True)
    events = [event async for event in stream]
    whole = await client.responses.create(model="m", input="hi")
    await client.close()

    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    final = events[-1].response  # type: ignore[union-attr]
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    assert final.output_text == "Hello"
    call = final.output[2]
    assert (call.call_id, call.name, json.loads(call.arguments)) == ("c1", "lookup", {"key": "a"})  # type: ignore[union-attr]
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (
        7,
        3,
    )
    assert whole.output_text == "Whole answer." and whole.status == "completed"
    assert server.requests[0].last_user_message == "hi"


async def test_an_agent_with_a_tool_over_the_responses_api(server: t.LoopbackServer) -> None:
    server.push(
        [t.reasoning("Look it up."), "Looking. ", t.call("lookup", {"key": "a"}), t.usage(20, 5)],
        ["It is ", "A.", t.usage(30, 2)],
    )
    agent = ra.Agent(responses(server), tools=[lookup], instructions="Be terse.")
    got = await collect(agent.run("What is a?"))
    assert got.error is None, got.error
    result = got.events[-1].run
    assert result.text == "It is A." and result.tool_calls == 1
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (50, 7)
    assert [e.text for e in got.of(ReasoningDelta)] == ["Look it up."]
    assert "".join(e.delta for e in got.of(ToolArgsDelta)) == '{"key": "a"}'

    first, second = server.requests
    assert first.path.endswith("/responses") and first.api == "responses"
    assert first.body["input"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "What is a?"},
    ]
    assert first.body["tools"][0]["name"] == "lookup" and first.body["tools"][0]["strict"] is False
    call_id = "call_loopback_1_1"
    # The turn goes back as it came: its reasoning item first (kept in the conversation),
    # then the text, the call and its output.
    assert second.body["input"][2:] == [
        {
            "id": "rs_loopback_1_1",
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "Look it up."}],
        },
        {"role": "assistant", "content": "Looking. "},
        {
            "type": "function_call",
            "call_id": call_id,
            "name": "lookup",
            "arguments": '{"key": "a"}',
        },
        {"type": "function_call_output", "call_id": call_id, "output": "A"},
    ]
    assert ra.validate_conversation(result.messages) == []


async def test_reasoning_items_are_kept_and_sent_back(server: t.LoopbackServer) -> None:
    server.push([t.reasoning("Plan: look up a."), t.call("lookup", {"key": "a"}, id="c1")], ["ok"])
    provider = responses(server, store=False)
    got = await collect(provider.stream(ask("go", tools=(lookup.spec,))))
    assert got.error is None, got.error
    finish = got.events[-1]
    assert isinstance(finish, Finish) and finish.reason == "tool_calls"
    assert finish.data is not None
    data = finish.data["openai.responses"]
    assert data["response_id"] == "resp_loopback_1"
    (item,) = data["reasoning"]
    assert item["type"] == "reasoning" and item["encrypted_content"].startswith("loopback-")
    assert server.requests[0].body["include"] == ["reasoning.encrypted_content"]

    # The next turn sends the reasoning back, before the call it led to.
    call = ToolCall(id="c1", name="lookup", arguments='{"key": "a"}')
    history = (
        UserMessage(content="go"),
        AssistantMessage(tool_calls=(call,), provider_data=dict(finish.data)),
        ToolMessage(tool_call_id="c1", content="A"),
    )
    await collect(provider.stream(ask(*history, tools=(lookup.spec,))))
    sent = server.requests[1].body["input"]
    assert [i.get("type") or i["role"] for i in sent] == [
        "user",
        "reasoning",
        "function_call",
        "function_call_output",
    ]
    assert sent[1] == item


async def test_an_agent_sends_its_reasoning_back_on_the_next_turn(
    server: t.LoopbackServer,
) -> None:
    server.push([t.reasoning("Plan."), t.call("lookup", {"key": "a"})], ["done"])
    result = await ra.collect_final(ra.Agent(responses(server), tools=[lookup]).run("go"))
    assert result.text == "done"
    kinds = [i.get("type") or i["role"] for i in server.requests[1].body["input"]]
    assert kinds == ["user", "reasoning", "function_call", "function_call_output"]


async def test_stateful_turns_send_previous_response_id_and_only_what_is_new(
    server: t.LoopbackServer,
) -> None:
    server.push(["fine"])
    history = (
        SystemMessage(content="Be terse."),
        UserMessage(content="hi"),
        AssistantMessage(
            content="hello", provider_data={"openai.responses": {"response_id": "resp_9"}}
        ),
        UserMessage(content="how are you?"),
    )
    got = await collect(responses(server, stateful=True).stream(ask(*history)))
    assert got.error is None, got.error
    body = server.requests[0].body
    assert body["previous_response_id"] == "resp_9"
    assert body["instructions"] == "Be terse."
    assert body["input"] == [{"role": "user", "content": "how are you?"}]


async def test_chat_option_names_are_translated(server: t.LoopbackServer) -> None:
    server.push(["{}"])
    schema = {"name": "answer", "schema": {"type": "object"}, "strict": True}
    provider = responses(
        server,
        max_tokens=50,
        reasoning_effort="low",
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        response_format={"type": "json_schema", "json_schema": schema},
        temperature=0.2,
    )
    await collect(provider.stream(ask("go", tools=(lookup.spec,))))
    options = server.requests[0].options
    assert options["max_output_tokens"] == 50 and "max_tokens" not in options
    assert options["reasoning"] == {"effort": "low"}
    assert options["tool_choice"] == {"type": "function", "name": "lookup"}
    assert options["text"] == {"format": {"type": "json_schema", **schema}}
    assert options["temperature"] == 0.2


async def test_a_length_limit_ends_as_incomplete(server: t.LoopbackServer) -> None:
    server.push(["cut", t.finish("length")])
    got = await collect(responses(server).stream(ask("go")))
    assert got.error is None and got.events[-1].reason == "length"
    assert '"type":"response.incomplete"' in server.requests[0].sent[-1]


# -- the same faults, the same errors ---------------------------------------------------
async def test_a_429_is_retried_with_a_step_retry(server: t.LoopbackServer) -> None:
    server.push(t.rate_limited(retry_after=0.01), ["ok"])
    got = await collect(ra.Agent(responses(server)).run("go"))
    assert got.error is None and got.events[-1].run.text == "ok"
    assert [r.attempt for r in got.of(StepRetry)] == [1]


async def test_status_errors_are_not_retried_when_a_retry_cannot_help(
    server: t.LoopbackServer,
) -> None:
    server.push(t.status(429, "quota", retry_after=120))
    got = await collect(ra.Agent(responses(server)).run("go"))
    assert isinstance(got.error, RateLimitError) and got.error.server_message == "quota"


@pytest.mark.parametrize(
    ("fault", "kind", "words"),
    [
        (t.error_event("The model is overloaded"), StreamError, "overloaded"),
        (t.disconnect(), StreamInterrupted, "broke"),
        (t.malformed(), MalformedStream, "not JSON"),
        (t.keep_alive(every=0.02), StreamStalled, "no data for 0.3 s"),
    ],
)
async def test_faults_after_output_fail_with_the_partial_run(
    server: t.LoopbackServer, fault: t.Item, kind: type[Exception], words: str
) -> None:
    server.push(["Hi", fault])
    got = await collect(ra.Agent(responses(server, read_timeout=0.3)).run("go"))
    assert isinstance(got.error, kind) and words in str(got.error)
    assert got.error.partial is not None and got.error.partial.text == "Hi"
    assert len(server.requests) == 1


async def test_a_stream_that_ends_before_completed_is_interrupted(
    server: t.LoopbackServer,
) -> None:
    delta = {"type": "response.output_text.delta", "item_id": "m", "delta": "Hi"}
    server.push(t.response(f"data: {json.dumps(delta)}\n\n", content_type="text/event-stream"))
    got = await collect(responses(server, retry=ra.RetryPolicy(max_retries=0)).stream(ask("go")))
    assert isinstance(got.error, StreamInterrupted)
    assert "ended before response.completed" in str(got.error)


# -- real streams, captured by other projects ----------------------------------------------
def sse_of(path: Path) -> bytes:
    """A fixture as the bytes of an event stream (JSON-lines fixtures framed as SSE)."""
    raw = path.read_bytes()
    if path.suffix == ".sse":
        return raw
    return b"".join(b"data: " + line + b"\n\n" for line in raw.splitlines() if line.strip())


def assemble(body: bytes, seed: int = 0) -> list[Any]:
    """Every chunk of the responses in ``body``, read in random pieces (as a network would)."""
    rng = random.Random(seed)
    decoder = SSEDecoder(1 << 24, "OpenAIResponsesProvider")
    out: list[Any] = []
    parser = ResponsesAssembler(step=1)
    i = 0
    while i < len(body):
        n = rng.randint(1, 700)
        for event, payload in decoder.feed(body[i : i + n]):
            if parser.done and payload != "[DONE]":  # several responses: the next one
                parser = ResponsesAssembler(step=1)
            out.extend(parser.feed(payload, event))
        i += n
    out.extend(parser.end("fixture"))
    return out


def text_of(chunks: list[Any], kind: type[Any] = TextDelta) -> str:
    return "".join(c.text for c in chunks if isinstance(c, kind))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_captured_gpt_4o_function_call_then_text(seed: int) -> None:
    call = assemble(sse_of(FIXTURES / "openai-gpt-4o-function-call.sse"), seed)
    assert [c for c in call if isinstance(c, ToolCallReady)] == [
        ToolCallReady("call_kL0PCQV7M2WMoVX8V8OtYSAL", "get_capital", '{"country":"France"}')
    ]
    assert "".join(c.delta for c in call if isinstance(c, ToolArgsDelta)) == '{"country":"France"}'
    assert [(u.prompt_tokens, u.completion_tokens) for u in call if isinstance(u, UsageDelta)] == [
        (255, 16)
    ]
    assert call[-1].reason == "tool_calls"
    assert call[-1].data == {
        "openai.responses": {"response_id": "resp_67e554a155508191900ee113293c4c830794405d35281ae2"}
    }
    text = assemble(sse_of(FIXTURES / "openai-gpt-4o-text.sse"), seed)
    assert text_of(text) == "The capital of France is Paris."
    assert text[-1] == Finish("stop", text[-1].data)


def test_captured_openrouter_raw_reasoning_with_a_comment_and_done() -> None:
    chunks = assemble(sse_of(FIXTURES / "openrouter-gpt-oss-reasoning-text.sse"))
    reasoning = text_of(chunks, ReasoningDelta)
    assert (
        reasoning
        == 'The user asks: "What is 2+2?" They expect a straightforward answer: 4. Just answer 4.'
    )
    assert text_of(chunks) == "4"
    assert [
        (u.prompt_tokens, u.completion_tokens) for u in chunks if isinstance(u, UsageDelta)
    ] == [(78, 37)]
    (item,) = chunks[-1].data["openai.responses"]["reasoning"]
    assert item["type"] == "reasoning" and item["content"][0]["type"] == "reasoning_text"


def test_captured_gpt_5_1_reasoning_summary_encrypted_content_and_calls() -> None:
    chunks = assemble(sse_of(FIXTURES / "openai-gpt-5.1-codex-max-reasoning.jsonl"))
    finishes = [c for c in chunks if isinstance(c, Finish)]
    assert [f.reason for f in finishes] == ["tool_calls", "tool_calls", "tool_calls", "stop"]
    calls = [(c.name, json.loads(c.arguments)) for c in chunks if isinstance(c, ToolCallReady)]
    assert calls == [
        ("calculator", {"a": 12, "b": 7, "op": "add"}),
        ("calculator", {"a": 19, "b": 3, "op": "multiply"}),
        ("calculator", {"a": 57, "b": 10, "op": "multiply"}),
    ]
    assert text_of(chunks, ReasoningDelta).startswith(
        "**Calculating step-by-step using calculator**"
    )
    (item,) = finishes[0].data["openai.responses"]["reasoning"]  # type: ignore[index]
    assert item["id"].startswith("rs_") and item["encrypted_content"].startswith("gAAAAA")
    assert "570" in text_of(chunks)


def test_captured_error_event_is_a_stream_error_that_no_retry_helps() -> None:
    with pytest.raises(StreamError) as caught:
        assemble(sse_of(FIXTURES / "openai-gpt-5-nano-error.jsonl"))
    assert "You exceeded your current quota" in str(caught.value)
    assert caught.value.code == "insufficient_quota" and not caught.value.retryable


@pytest.mark.parametrize(
    "name",
    [
        "openai-gpt-4o-function-call.sse",
        "openrouter-gpt-oss-reasoning-text.sse",
        "openai-gpt-5.1-codex-max-reasoning.jsonl",
    ],
)
async def test_captured_streams_through_the_provider_over_http(
    server: t.LoopbackServer, name: str
) -> None:
    body = sse_of(FIXTURES / name)
    end = body.index(b"\n\n", body.index(b'"type":"response.completed"')) + 2
    server.push(t.response(body[:end], content_type="text/event-stream"))  # one response
    got = await collect(responses(server).stream(ask("go")))
    assert got.error is None, got.error
    assert got.events == assemble(body[:end])
    assert isinstance(got.events[-1], Finish)
