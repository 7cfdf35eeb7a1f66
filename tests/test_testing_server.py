"""rxagent.testing: the loopback server speaks the wire format the SDK expects."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator

import openai
import pytest

import rxagent as ra
from rxagent import testing as t
from rxagent.providers.openai import BadRequest

pytest_plugins = ["pytester"]


@pytest.fixture
def server() -> Iterator[t.LoopbackServer]:
    with t.LoopbackServer() as server:
        yield server


def sdk(server: t.LoopbackServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="x", base_url=server.url, max_retries=0)


async def test_the_sdks_typed_stream_reads_it(server: t.LoopbackServer) -> None:
    server.push(["Hel", "lo", t.call("lookup", {"key": "a"}, id="c1", fragments=3)])
    client = sdk(server)
    stream = await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    await client.close()

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello"
    fragments = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert len(fragments) == 4  # the opening fragment, then three pieces of arguments
    assert (fragments[0].id, fragments[0].function and fragments[0].function.name) == (
        "c1",
        "lookup",
    )
    assert all(f.id is None and f.index == 0 for f in fragments[1:])
    arguments = "".join((f.function.arguments or "") for f in fragments if f.function)
    assert json.loads(arguments) == {"key": "a"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


async def test_a_request_that_does_not_stream_gets_one_completion(
    server: t.LoopbackServer,
) -> None:
    server.push(["Hi ", "there.", t.call("lookup", {"key": "a"}), t.usage(9, 4)])
    client = sdk(server)
    completion = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    await client.close()
    message = completion.choices[0].message
    assert message.content == "Hi there."
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage is not None and completion.usage.total_tokens == 13


async def test_it_records_every_request_and_lists_its_model(server: t.LoopbackServer) -> None:
    server.push(["ok"])
    client = sdk(server)
    models = await client.models.list()
    await client.chat.completions.create(
        model="m",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        temperature=0.5,
        extra_headers={"x-test": "yes"},
    )
    await client.close()
    assert [m.id for m in models.data] == ["loopback"]
    (sent,) = await server.requests_received(1)
    assert sent.system_prompt == "Be brief." and sent.last_user_message == "hi"
    assert sent.options == {"temperature": 0.5} and sent.headers["x-test"] == "yes"
    assert await sent.ended() == "completed"


async def test_a_request_with_no_turn_left_gets_a_400_that_says_so(
    server: t.LoopbackServer,
) -> None:
    with pytest.raises(BadRequest, match="no scripted turn for request 1"):
        await ra.collect_final(ra.Agent(server.provider()).run("hi"))


async def test_a_script_function_answers_from_the_request() -> None:
    def echo(request: t.RecordedRequest) -> t.Turn:
        if request.last_user_message == "fail":
            raise RuntimeError("no echo today")
        return ["You said: ", request.last_user_message or ""]

    async with t.LoopbackServer(echo) as server:
        result = await ra.collect_final(ra.Agent(server.provider()).run("hello"))
        assert result.text == "You said: hello"
        with pytest.raises(BadRequest, match="the script failed: RuntimeError: no echo today"):
            await ra.collect_final(ra.Agent(server.provider()).run("fail"))


async def test_chunk_delay_spaces_the_chunks() -> None:
    async with t.LoopbackServer([["a", "b", "c", "d", "e"]], chunk_delay=0.03) as server:
        started = time.monotonic()
        result = await ra.collect_final(ra.Agent(server.provider()).run("hi"))
        assert result.text == "abcde"
        assert time.monotonic() - started >= 5 * 0.03 * 0.9


def test_it_works_from_plain_sync_code() -> None:
    gate = t.Gate()
    with t.LoopbackServer([["one ", gate, "two"]]) as server:
        run = ra.Agent(server.provider()).run("hi")
        run.subscribe(lambda _: None)
        (sent,) = server.wait_for_requests(1)
        assert gate.wait_reached(5) and not gate.is_open
        assert sent.outcome == "pending"
        gate.open()
        assert run.result(timeout=5).text == "one two"
        assert sent.wait_ended() == "completed"


def test_keep_alive_chunked_event_streams_over_one_connection(server: t.LoopbackServer) -> None:
    server.push(["first"], ["second"])
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    bodies = []
    for _ in range(2):
        body = json.dumps({"model": "m", "messages": [], "stream": True})
        connection.request(
            "POST", "/v1/chat/completions", body, {"content-type": "application/json"}
        )
        answer = connection.getresponse()
        assert answer.status == 200 and answer.getheader("content-type", "").startswith(
            "text/event-stream"
        )
        bodies.append(answer.read().decode())
    connection.close()
    for body, word in zip(bodies, ["first", "second"], strict=True):
        events = [e for e in body.split("\n\n") if e]
        assert all(e.startswith("data: ") for e in events)
        assert events[-1] == "data: [DONE]" and word in body


def test_stopping_the_server_ends_a_stalled_answer() -> None:
    server = t.LoopbackServer([["a", t.stall()]]).start()
    run = ra.Agent(server.provider()).run("hi")
    run.subscribe(lambda _: None)
    (sent,) = server.wait_for_requests(1)
    server.stop()
    assert sent.wait_ended() in ("stopped", "disconnected")
    with pytest.raises(ra.ProviderError):
        run.result(timeout=5)


def test_status_answers_carry_an_openai_error_body(server: t.LoopbackServer) -> None:
    server.push(t.rate_limited(retry_after=2))
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("POST", "/v1/chat/completions", "{}", {"content-type": "application/json"})
    answer = connection.getresponse()
    assert answer.status == 429 and answer.getheader("retry-after") == "2"
    assert json.loads(answer.read())["error"]["type"] == "rate_limit_exceeded"
    connection.close()


def test_the_pytest_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        """
        import rxagent as ra
        from rxagent import testing as t

        def test_with_the_fixtures(loopback_server, loopback_provider):
            loopback_server.push(["Hello", t.usage(3, 1)])
            result = ra.Agent(loopback_provider).run_sync("hi", timeout=10)
            assert result.text == "Hello"
            assert loopback_server.requests[0].last_user_message == "hi"
        """
    )
    # -p works whether or not the pytest11 entry point is installed (it has the same name).
    result = pytester.runpytest_inprocess("-p", "rxagent.testing.pytest_plugin")
    result.assert_outcomes(passed=1)
