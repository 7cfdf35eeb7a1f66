"""rxagent.testing: the loopback server speaks the wire format the SDK expects."""

from __future__ import annotations

import asyncio
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


def test_a_chunked_request_body_and_expect_100_continue(server: t.LoopbackServer) -> None:
    server.push(["ok"])
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.putrequest("POST", "/v1/chat/completions")
    connection.putheader("content-type", "application/json")
    connection.putheader("transfer-encoding", "chunked")
    connection.putheader("expect", "100-continue")
    connection.endheaders()
    for piece in (body[:10], body[10:]):
        connection.send(b"%x\r\n%s\r\n" % (len(piece), piece.encode()))
    connection.send(b"0\r\n\r\n")
    answer = connection.getresponse()
    assert answer.status == 200
    assert json.loads(answer.read())["choices"][0]["message"]["content"] == "ok"
    connection.close()
    assert server.requests[0].last_user_message == "hi"


def test_connection_close_and_a_request_that_is_not_http(server: t.LoopbackServer) -> None:
    import socket

    server.push(["ok"])
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        body = b'{"model": "m", "messages": []}'
        raw.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        received = b"".join(iter(lambda: raw.recv(65536), b""))  # until the server closes
    assert received.startswith(b"HTTP/1.1 200 ") and b'"content": "ok"' in received
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        received = b"".join(iter(lambda: raw.recv(65536), b""))
    assert received.startswith(b"HTTP/1.1 400 ") and b"not HTTP/1.1" in received
    assert len(server.requests) == 1


def test_keep_alive_and_no_response_faults(server: t.LoopbackServer) -> None:
    server.push(["a", t.keep_alive(every=0.01)], t.no_response())
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    body = json.dumps({"model": "m", "messages": [], "stream": True})
    connection.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    answer = connection.getresponse()
    seen = b""
    while seen.count(b": keep-alive\n\n") < 3:
        seen += answer.read1(65536)
    assert b'"content":"a"' in seen and b"[DONE]" not in seen
    connection.close()
    assert server.requests[0].wait_ended() == "disconnected"

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=0.3)
    connection.request("POST", "/v1/chat/completions", "{}", {"content-type": "application/json"})
    with pytest.raises(TimeoutError):
        connection.getresponse()
    connection.close()
    assert server.requests[1].wait_ended() == "disconnected"


async def test_scripted_provider_plays_gates_and_finish_reasons() -> None:
    gate = t.Gate()
    provider = ra.ScriptedProvider([["one ", gate, "two", t.finish("length")]])
    run = ra.Agent(provider).run("hi")
    texts: list[str] = []
    ends: list[str | None] = []

    def on_event(event: ra.AgentEvent) -> None:
        if isinstance(event, ra.events.TextDelta):
            texts.append(event.text)
        if isinstance(event, ra.events.StepCompleted):
            ends.append(event.outcome.finish_reason)

    run.subscribe(on_event)
    assert await asyncio.to_thread(gate.wait_reached, 5)
    assert texts == ["one "] and not gate.is_open  # the play waits at the gate
    gate.open()
    result = await asyncio.wait_for(ra.collect_final(run), 5)
    assert result.text == "one two" and ends == ["length"]


def test_importing_rxagent_does_not_import_openai() -> None:
    import subprocess
    import sys

    code = (
        "import sys, rxagent, rxagent.testing\n"
        "assert 'openai' not in sys.modules, sorted(sys.modules)\n"
        "rxagent.OpenAIProvider\n"
        "assert 'openai' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_an_http_1_0_client_gets_the_stream_until_the_connection_closes(
    server: t.LoopbackServer,
) -> None:
    import socket

    server.push(["Hel", "lo"])
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        body = b'{"model": "m", "messages": [], "stream": true}'
        raw.sendall(
            b"POST /v1/chat/completions HTTP/1.0\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        received = b"".join(iter(lambda: raw.recv(65536), b""))
    head, _, stream = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"chunked" not in head.lower()
    events = [e for e in stream.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    assert (
        "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events[:-2])
        == "Hello"
    )
