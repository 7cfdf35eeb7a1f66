"""OpenAIProvider through the real openai SDK against the loopback server."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
from reactivex.testing import TestScheduler

import rxagent as ra
from rxagent import testing as t
from rxagent.events import (
    ReasoningDelta,
    StepRetry,
    TextDelta,
    ToolArgsDelta,
    ToolCallEnded,
    ToolCallStarted,
    UsageDelta,
)
from rxagent.providers.base import Finish, ToolCallReady
from rxagent.providers.openai import (
    AuthenticationError,
    BadRequest,
    ConnectionFailed,
    MalformedStream,
    OpenAIProvider,
    RateLimitError,
    RetryPolicy,
    ServerError,
    StreamError,
    StreamInterrupted,
    StreamStalled,
)
from tests.helpers import Gauge, collect
from tests.sse import (
    delta,
    lookup,
    request,
    sse,
)


@pytest.fixture
def server(loopback_server: t.LoopbackServer) -> t.LoopbackServer:
    return loopback_server  # (the rxagent.testing pytest plugin's)


# -- streaming ---------------------------------------------------------------------------
async def test_text_streams_chunk_by_chunk(server: t.LoopbackServer) -> None:
    gate = t.Gate()
    server.push(["Hel", "lo", gate, " world"])
    run = ra.Agent(server.provider()).run("hi")
    loop = asyncio.get_running_loop()
    first = loop.create_future()
    texts: list[str] = []

    def on_event(event: ra.AgentEvent) -> None:
        if isinstance(event, TextDelta):
            texts.append(event.text)
            if not first.done():
                first.set_result([p for p in server.requests[0].sent if " world" in p])

    run.subscribe(on_event)
    # The first delta reaches the observer while the server holds the last one back.
    assert await asyncio.wait_for(first, 5) == []
    assert not gate.is_open
    gate.open()
    result = await asyncio.wait_for(ra.collect_final(run), 5)
    assert texts == ["Hel", "lo", " world"]
    assert result.text == "Hello world"


async def test_a_tool_starts_while_later_calls_still_stream(server: t.LoopbackServer) -> None:
    # A call is complete when the next one starts: "a" can run while "c" is held back.
    gate = t.Gate()
    server.push(
        [
            "Three lookups. ",
            t.call("lookup", {"key": "a"}),
            t.call("lookup", {"key": "b"}),
            gate,
            t.call("lookup", {"key": "c"}),
        ],
        ["A, B and C."],
    )
    run = ra.Agent(server.provider(), tools=[lookup]).run("go")
    ended = asyncio.get_running_loop().create_future()

    def on_event(event: ra.AgentEvent) -> None:
        if isinstance(event, ToolCallStarted) and not ended.done():
            ended.set_result(gate.is_open)

    run.subscribe(on_event)
    assert await asyncio.wait_for(ended, 5) is False  # started before call c was sent
    gate.open()
    result = await asyncio.wait_for(ra.collect_final(run), 5)
    assert result.text == "A, B and C." and result.tool_calls == 3


async def test_four_calls_in_fragments_over_two_steps_capped_and_in_order(
    server: t.LoopbackServer,
) -> None:
    gauge = Gauge()
    # The first call of each step is the slowest, so the ends happen out of call order.
    sleeps = {"a": 0.06, "b": 0.01, "c": 0.03, "d": 0.0}

    @ra.tool
    async def fetch(key: str) -> str:
        """Fetch a key slowly."""
        with gauge:
            await asyncio.sleep(sleeps[key[0]])
        return f"value of {key}"

    def tool_step(step: int) -> list[t.Item]:
        return [
            f"Step {step}. ",
            *(t.call("fetch", {"key": f"{k}{step}"}, fragments=4) for k in "abcd"),
        ]

    server.push(tool_step(1), tool_step(2), ["Done."])
    run = ra.Agent(server.provider(), tools=[fetch], max_tool_concurrency=2).run("fetch all")
    got = await collect(run)
    assert got.error is None, got.error
    result = got.events[-1].run

    assert result.steps == 3 and result.tool_calls == 8 and result.text == "Done."
    assert gauge.peak == 2
    for step in (1, 2):
        ids = [f"call_loopback_{step}_{n}" for n in (1, 2, 3, 4)]
        args = [e for e in got.of(ToolArgsDelta) if e.step == step]
        assert [len([a for a in args if a.call_id == i]) for i in ids] == [4, 4, 4, 4]
        ends = [e for e in got.of(ToolCallEnded) if e.step == step]
        assert [e.call_id for e in ends] == ids  # call order, not finishing order
        assert [e.output for e in ends] == [f"value of {k}{step}" for k in "abcd"]

        # The next request carries the assistant's calls and the results in call order.
        sent = server.requests[step].messages
        assistant = next(m for m in reversed(sent) if m["role"] == "assistant")
        assert [c["id"] for c in assistant["tool_calls"]] == ids
        assert [json.loads(c["function"]["arguments"]) for c in assistant["tool_calls"]] == [
            {"key": f"{k}{step}"} for k in "abcd"
        ]
        tools = [m for m in sent if m["role"] == "tool"][-4:]
        assert [m["tool_call_id"] for m in tools] == ids
        assert [m["content"] for m in tools] == [f"value of {k}{step}" for k in "abcd"]
    assert ra.validate_conversation(result.messages) == []


async def test_usage_is_summed_across_steps(server: t.LoopbackServer) -> None:
    server.push(
        [t.call("lookup", {"key": "a"}), t.usage(100, 7)],
        ["A.", t.usage(130, 2)],
    )
    run = ra.Agent(server.provider(), tools=[lookup]).run("go")
    got = await collect(run)
    result = got.events[-1].run
    assert [(u.step, u.prompt_tokens, u.completion_tokens) for u in got.of(UsageDelta)] == [
        (1, 100, 7),
        (2, 130, 2),
    ]
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (230, 9)


async def test_the_recorded_request_carries_schemas_instructions_and_options(
    server: t.LoopbackServer,
) -> None:
    server.push(["ok"])
    provider = server.provider(
        model="my-model",
        temperature=0.2,
        max_tokens=50,
        tool_choice="auto",
        parallel_tool_calls=False,
        response_format={"type": "text"},
        top_k=5,  # not an SDK parameter: sent in the body as it is
    )
    agent = ra.Agent(provider, tools=[lookup], instructions="Be terse.", options={"seed": 7})
    await ra.collect_final(agent.run("hi"))

    sent = server.requests[0]
    assert sent.model == "my-model" and sent.stream
    assert sent.messages == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "hi"},
    ]
    assert sent.tools == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look a key up.",
                "parameters": lookup.parameters,
            },
        }
    ]
    assert sent.options == {
        "temperature": 0.2,
        "max_tokens": 50,
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "response_format": {"type": "text"},
        "top_k": 5,
        "seed": 7,
    }
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sent.headers["accept"] == "text/event-stream"
    assert sent.headers["authorization"] == "Bearer loopback"
    assert sent.headers["x-stainless-retry-count"] == "0"


async def test_two_observers_make_one_request_per_step(server: t.LoopbackServer) -> None:
    server.push([t.call("lookup", {"key": "a"})], ["A."])
    run = ra.Agent(server.provider(), tools=[lookup]).run("go")
    first: list[ra.AgentEvent] = []
    second: list[ra.AgentEvent] = []
    run.subscribe(first.append)
    run.subscribe(second.append)
    result = await ra.collect_final(run)
    assert len(server.requests) == result.steps == 2
    assert first == second == list(run.events)


async def test_reasoning_deltas_under_either_field_name(server: t.LoopbackServer) -> None:
    server.push([t.reasoning("Think"), t.reasoning("ing.", field="reasoning"), "Answer."])
    run = ra.Agent(server.provider()).run("go")
    got = await collect(run)
    assert [e.text for e in got.of(ReasoningDelta)] == ["Think", "ing."]
    last = got.events[-1].run.last_message
    assert last is not None and last.reasoning == "Thinking." and last.content == "Answer."


# -- wire variants -----------------------------------------------------------------------
async def test_calls_sharing_an_index_are_split_by_their_ids(server: t.LoopbackServer) -> None:
    # Some servers (Ollama's OpenAI API) send each call whole, all with index 0.
    def whole(call_id: str, key: str) -> dict[str, Any]:
        function = {"name": "lookup", "arguments": json.dumps({"key": key})}
        return delta(tool_calls=[{"index": 0, "id": call_id, "function": function}])

    server.push(sse(whole("x1", "a"), whole("x2", "b"), delta("tool_calls")))
    got = await collect(server.provider().stream(request()))
    assert got.error is None
    assert got.of(ToolCallReady) == [
        ToolCallReady("x1", "lookup", '{"key": "a"}'),
        ToolCallReady("x2", "lookup", '{"key": "b"}'),
    ]
    assert got.events[-1] == Finish("tool_calls")


async def test_cumulative_usage_is_counted_once(server: t.LoopbackServer) -> None:
    # vLLM's continuous usage stats: the running total in every chunk.
    chunks = [
        {**delta(content=w), "usage": {"prompt_tokens": 10, "completion_tokens": n}}
        for n, w in enumerate(["a", "b", "c"], 1)
    ]
    server.push(sse(*chunks, delta("stop")))
    got = await collect(server.provider().stream(request()))
    usage = got.of(UsageDelta)
    assert sum(u.prompt_tokens for u in usage) == 10
    assert sum(u.completion_tokens for u in usage) == 3


async def test_a_plain_json_answer_still_gives_events(server: t.LoopbackServer) -> None:
    # A server that ignores stream=true and answers one chat.completion object.
    completion = {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hi.",
                    "tool_calls": [
                        {"id": "c1", "function": {"name": "lookup", "arguments": '{"key": "a"}'}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    server.push(t.response(completion))
    got = await collect(server.provider().stream(request()))
    assert got.error is None
    assert [type(e).__name__ for e in got.events] == [
        "TextDelta",
        "ToolArgsDelta",
        "ToolCallReady",
        "UsageDelta",
        "Finish",
    ]


async def test_the_end_without_done_after_the_finish_is_accepted(
    server: t.LoopbackServer,
) -> None:
    server.push(sse(delta(content="ok"), delta("stop"), done=False))
    got = await collect(server.provider().stream(request()))
    assert got.error is None and got.events[-1] == Finish("stop")


# -- faults ------------------------------------------------------------------------------
class RecordingScheduler(TestScheduler):
    """A TestScheduler that remembers every relative wait it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def schedule_relative(self, duetime: Any, action: Any, state: Any = None) -> Any:
        self.waits.append(float(duetime))
        return super().schedule_relative(duetime, action, state)


async def test_a_429_is_retried_after_its_retry_after(server: t.LoopbackServer) -> None:
    # Virtual time: the backoff's clock is a TestScheduler; the server asks for 30 s.
    server.push(t.rate_limited(retry_after=30), ["ok"])
    clock = RecordingScheduler()
    run = ra.Agent(server.provider(scheduler=clock)).run("go")
    retried = asyncio.Event()
    run.subscribe(lambda e: e.type == "step_retry" and retried.set())
    result_task = asyncio.ensure_future(ra.collect_final(run))
    await asyncio.wait_for(retried.wait(), 5)
    assert clock.waits == [30.0] and len(server.requests) == 1  # it waits: the server's delay
    clock.advance_by(30)
    result = await asyncio.wait_for(result_task, 5)
    assert result.text == "ok" and len(server.requests) == 2
    retries = [e for e in run.events if isinstance(e, StepRetry)]
    assert [(r.step, r.attempt) for r in retries] == [(1, 1)]
    assert "429" in retries[0].error and "retry after 30 s" in retries[0].error


async def test_5xx_and_hang_ups_are_retried_each_with_a_step_retry(
    server: t.LoopbackServer,
) -> None:
    server.push(t.server_error("boom"), t.hang_up(), [t.stall()], ["fine"])
    provider = server.provider(retry=RetryPolicy(max_retries=3, base_delay=0.001), read_timeout=0.3)
    got = await collect(ra.Agent(provider).run("go"))
    assert got.error is None
    retries = got.of(StepRetry)
    assert [r.attempt for r in retries] == [1, 2, 3]
    assert "HTTP 500" in retries[0].error and "boom" in retries[0].error
    assert "could not reach" in retries[1].error
    assert "stalled" in retries[2].error
    assert got.events[-1].run.text == "fine"
    assert len(server.requests) == 4


async def test_retries_exhausted_fail_with_the_status_and_the_partial_run(
    server: t.LoopbackServer,
) -> None:
    server.push(*[t.server_error("still down", code=503)] * 3)
    got = await collect(ra.Agent(server.provider()).run("go"))
    error = got.error
    assert isinstance(error, ServerError) and isinstance(error, ra.ProviderError)
    assert error.status_code == 503 and error.retryable and error.server_message == "still down"
    assert "HTTP 503" in str(error) and "still down" in str(error)
    assert len(got.of(StepRetry)) == 2 and len(server.requests) == 3
    assert error.partial is not None and ra.validate_conversation(error.partial.messages) == []


@pytest.mark.parametrize(
    ("answer", "kind", "status"),
    [
        (t.status(400, "model 'x' does not exist"), BadRequest, 400),
        (t.status(401, "Incorrect API key provided"), AuthenticationError, 401),
        (t.rate_limited(retry_after=120), RateLimitError, 429),  # longer than max_retry_after
    ],
)
async def test_errors_a_retry_cannot_help_are_not_retried(
    server: t.LoopbackServer, answer: t.Status, kind: type[Exception], status: int
) -> None:
    server.push(answer)
    got = await collect(ra.Agent(server.provider()).run("go"))
    assert isinstance(got.error, kind)
    assert got.error.status_code == status
    assert got.error.server_message == answer.message
    assert got.of(StepRetry) == [] and len(server.requests) == 1


async def test_retry_after_ms_is_read(server: t.LoopbackServer) -> None:
    server.push(t.status(429, "slow down", retry_after_ms=150))
    got = await collect(ra.Agent(server.provider(retry=RetryPolicy(max_retries=0))).run("go"))
    assert isinstance(got.error, RateLimitError) and got.error.retry_after == pytest.approx(0.15)


async def test_connection_refused_is_retried_then_fails_clearly() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = OpenAIProvider(
        "m",
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key="x",
        retry=RetryPolicy(max_retries=2, base_delay=0.001),
    )
    got = await collect(ra.Agent(provider).run("go"))
    assert isinstance(got.error, ConnectionFailed) and got.error.retryable
    assert f"could not reach http://127.0.0.1:{port}/v1/chat/completions" in str(got.error)
    assert [r.attempt for r in got.of(StepRetry)] == [1, 2]


async def test_a_disconnect_after_output_fails_with_the_partial_run(
    server: t.LoopbackServer,
) -> None:
    server.push(["Hello ", "wor", t.disconnect()])
    got = await collect(ra.Agent(server.provider()).run("go"))
    error = got.error
    assert isinstance(error, StreamInterrupted) and "broke" in str(error)
    assert [e.text for e in got.of(TextDelta)] == ["Hello ", "wor"]
    assert error.partial is not None and error.partial.text == "Hello wor"
    assert ra.validate_conversation(error.partial.messages) == []
    assert len(server.requests) == 1  # not retried: output had begun


async def test_a_disconnect_after_output_is_retried_when_asked(server: t.LoopbackServer) -> None:
    server.push(["Hello ", "wor", t.disconnect()], ["Hi there."])
    provider = server.provider(retry=RetryPolicy(base_delay=0.001, mid_stream=True))
    got = await collect(ra.Agent(provider).run("go"))
    assert got.error is None
    assert [type(e).__name__ for e in got.events if type(e) in (TextDelta, StepRetry)] == [
        "TextDelta",
        "TextDelta",
        "StepRetry",
        "TextDelta",
    ]
    assert got.events[-1].run.text == "Hi there."  # the first attempt's text is dropped


async def test_no_retry_once_a_tool_call_was_complete(server: t.LoopbackServer) -> None:
    server.push(
        [t.call("lookup", {"key": "a"}), t.call("lookup", {"key": "b"}), t.disconnect()],
        ["never asked"],
    )
    provider = server.provider(retry=RetryPolicy(base_delay=0.001, mid_stream=True))
    got = await collect(ra.Agent(provider, tools=[lookup]).run("go"))
    assert isinstance(got.error, StreamInterrupted)
    assert [e.arguments for e in got.of(ToolCallStarted)] == [{"key": "a"}]  # it ran
    assert len(server.requests) == 1 and got.of(StepRetry) == []
    assert got.error.partial is not None
    assert ra.validate_conversation(got.error.partial.messages) == []


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        (t.malformed(), ["not JSON", "unterminated"]),
        (t.raw("this is not SSE\n\n"), ["not Server-Sent Events", "this is not SSE"]),
        (t.raw('data: {"choices": [{"index": 0, "delta": "oops"}]}\n\n'), ["wrong shape"]),
        (t.raw("data: [1, 2]\n\n"), ["not an object"]),
    ],
)
async def test_a_malformed_stream_is_a_clear_error(
    server: t.LoopbackServer, fault: t.Item, words: list[str]
) -> None:
    server.push(["Hi", fault, "never"])
    got = await collect(ra.Agent(server.provider()).run("go"))
    error = got.error
    assert isinstance(error, MalformedStream) and not error.retryable
    assert not isinstance(error, json.JSONDecodeError) and error.__cause__ is None
    for word in words:
        assert word in str(error)
    assert error.partial is not None and error.partial.text == "Hi"
    assert len(server.requests) == 1


async def test_an_error_event_mid_stream_fails_the_step(server: t.LoopbackServer) -> None:
    server.push(["Hi", t.error_event("The model is overloaded", type="server_error")])
    got = await collect(ra.Agent(server.provider()).run("go"))
    assert isinstance(got.error, StreamError) and got.error.retryable
    assert "The model is overloaded" in str(got.error)
    assert got.error.partial is not None and got.error.partial.text == "Hi"


async def test_an_error_event_before_output_is_retried(server: t.LoopbackServer) -> None:
    server.push([t.error_event("busy", type="server_error")], ["ok"])
    got = await collect(ra.Agent(server.provider()).run("go"))
    assert got.error is None and len(got.of(StepRetry)) == 1
    assert got.events[-1].run.text == "ok"


async def test_a_stall_after_output_is_bounded_by_the_read_timeout(
    server: t.LoopbackServer,
) -> None:
    server.push(["Hi", t.stall()])
    started = time.monotonic()
    got = await collect(ra.Agent(server.provider(read_timeout=0.3)).run("go"))
    assert isinstance(got.error, StreamStalled) and "no data for 0.3 s" in str(got.error)
    assert time.monotonic() - started < 3
    assert got.error.partial is not None and got.error.partial.text == "Hi"
    assert await server.requests[0].ended() == "disconnected"


async def test_a_stream_that_stops_before_done_is_interrupted(server: t.LoopbackServer) -> None:
    server.push(sse(delta(content="Hi"), done=False))
    got = await collect(ra.Agent(server.provider()).run("go"))
    assert isinstance(got.error, StreamInterrupted) and "ended before [DONE]" in str(got.error)


# -- cancellation ------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["cancel", "dispose"])
async def test_cancelling_closes_the_connection_at_once(server: t.LoopbackServer, how: str) -> None:
    server.push(["thinking...", t.stall()])
    run = ra.Agent(server.provider()).run("go")
    first = asyncio.get_running_loop().create_future()

    def on_event(event: ra.AgentEvent) -> None:
        if isinstance(event, TextDelta) and not first.done():
            first.set_result(None)

    subscription = run.subscribe(on_event)
    await asyncio.wait_for(first, 5)
    cancelled_at = time.monotonic()
    if how == "cancel":
        run.cancel()
    else:
        subscription.dispose()  # the last subscription: the run stops
    sent = server.requests[0]
    assert await sent.ended(2) == "disconnected"
    assert sent.ended_at is not None and sent.ended_at - cancelled_at < 0.2
    if how == "cancel":
        result = await ra.collect_final(run)
        assert result.stop == ra.StopReason.CANCELLED and result.text == "thinking..."


# -- configuration -----------------------------------------------------------------------
def test_it_reads_the_environment_like_the_sdk(
    server: t.LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    server.push(["ok"])
    provider = OpenAIProvider("env-model")
    assert provider.base_url.rstrip("/") == server.url
    assert ra.Agent(provider).run_sync("hi", timeout=10).text == "ok"
    assert server.requests[0].headers["authorization"] == "Bearer sk-from-env"

    monkeypatch.delenv("OPENAI_API_KEY")
    assert OpenAIProvider("m").base_url.rstrip("/") == server.url  # a local server needs no key
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAIProvider("m")


def test_one_provider_serves_several_event_loops(server: t.LoopbackServer) -> None:
    provider = server.provider()
    server.push(["one"], ["two"], ["three"])

    async def ask() -> str:
        return (await ra.collect_final(ra.Agent(provider).run("hi"))).text

    assert asyncio.run(ask()) == "one"
    assert asyncio.run(ask()) == "two"  # a new loop: the old pooled connection is not reused
    assert ra.Agent(provider).run_sync("hi", timeout=10).text == "three"


def test_the_retry_policy_backs_off_exponentially_with_jitter_and_a_cap() -> None:
    policy = RetryPolicy(max_retries=5, base_delay=1.0, max_delay=4.0, jitter=0.25)
    for retry, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 4.0)]:
        wait = policy.wait(retry)
        assert wait is not None and 0.75 * full <= wait <= full
    assert policy.wait(6) is None
    assert policy.wait(1, retry_after=30) == 30
    assert policy.wait(1, retry_after=61) is None
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)


def test_client_and_base_url_are_exclusive() -> None:
    from openai import AsyncOpenAI

    with pytest.raises(ValueError, match="not both"):
        OpenAIProvider("m", client=AsyncOpenAI(api_key="x"), base_url="http://127.0.0.1:1/v1")
