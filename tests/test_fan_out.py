"""Tool fan-out: early start, streaming tools, bad input, join policies, and properties."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

import pytest
import reactivex as rx
from hypothesis import given
from hypothesis import strategies as st
from pydantic import Field
from reactivex import Observable
from reactivex.testing import TestScheduler

import rxagent as ra
from rxagent import ops
from rxagent import scripted as s
from rxagent.events import (
    StepCompleted,
    ToolArgsDelta,
    ToolCallEnded,
    ToolCallStarted,
    ToolProgress,
)
from tests.helpers import Gauge, collect


@ra.tool
def add(a: int, b: Annotated[int, Field(ge=0)] = 0) -> int:
    """Add two numbers."""
    return a + b


async def test_a_call_starts_while_the_model_still_streams_later_calls() -> None:
    provider = ra.ScriptedProvider(
        [[s.call("add", {"a": 1}, id="first"), s.delay(0.1), s.call("add", {"a": 2}, id="second")]]
    )
    got = await collect(rx.just("go").pipe(ops.step(provider, tools=[add])))
    order = [
        (e.type, e.call_id)
        for e in got.events
        if isinstance(e, ToolArgsDelta | ToolCallStarted | ToolCallEnded)
    ]
    first_end = order.index(("tool_call_ended", "first"))
    second_args = order.index(("tool_args_delta", "second"))
    # The first call ran and ended before the model began the second call's arguments.
    assert first_end < second_args
    assert [e.output for e in got.of(ToolCallEnded)] == [1, 2]


async def test_an_early_fast_end_still_waits_for_call_order() -> None:
    @ra.tool
    async def nap(seconds: float) -> float:
        """Sleep."""
        await asyncio.sleep(seconds)
        return seconds

    provider = ra.ScriptedProvider(
        [[s.call("nap", {"seconds": 0.08}, id="slow"), s.call("nap", {"seconds": 0}, id="fast")]]
    )
    got = await collect(rx.just("go").pipe(ops.step(provider, tools=[nap])))
    slow, fast = got.of(ToolCallEnded)
    assert (slow.call_id, fast.call_id) == ("slow", "fast")  # emitted in call order ...
    assert fast.at < slow.at  # ... though `at` shows the fast one really ended first


async def test_streaming_tools_emit_progress_then_the_result() -> None:
    @ra.tool
    async def count_up(n: int) -> AsyncIterator[int]:
        """Count, streaming."""
        for i in range(n):
            yield i
            await asyncio.sleep(0)

    @ra.tool
    def ticks(n: int) -> Observable[str]:
        """Ticks as an Observable."""
        return rx.from_iterable([f"tick {i}" for i in range(n)])

    provider = ra.ScriptedProvider([[s.call("count_up", {"n": 3}), s.call("ticks", {"n": 2})]])
    got = await collect(rx.just("go").pipe(ops.step(provider, tools=[count_up, ticks])))
    # Progress is live (the two calls' progress may interleave), in order per call.
    progress = got.of(ToolProgress)
    assert [e.data for e in progress if e.call_id == "call_1_1"] == [0, 1]
    assert [e.data for e in progress if e.call_id == "call_1_2"] == ["tick 0"]
    assert [e.output for e in got.of(ToolCallEnded)] == [2, "tick 1"]
    done = got.of(StepCompleted)[0].outcome
    assert [m.content for m in done.messages if isinstance(m, ra.ToolMessage)] == ["2", "tick 1"]


BAD_CALLS = [
    pytest.param(s.call("nope", {}), ra.UnknownToolError, "unknown tool 'nope'", id="unknown"),
    pytest.param(s.call("add", '{"a": 1,'), ra.ToolArgumentsError, "not valid JSON", id="not-json"),
    pytest.param(
        s.call("add", {"a": "one"}), ra.ToolArgumentsError, "a: Input should be", id="schema"
    ),
    pytest.param(
        s.call("add", {"a": 1, "b": -1}), ra.ToolArgumentsError, "b: Input should be", id="range"
    ),
    pytest.param(
        s.call("add", {"a": 1, "c": 2}), ra.ToolArgumentsError, "c: Extra inputs", id="extra"
    ),
    pytest.param(s.call("add", "[1, 2]"), ra.ToolArgumentsError, "JSON object", id="not-object"),
    pytest.param(
        s.call("add", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ra.ToolArgumentsError,
        "arguments for tool 'add' are nested too deeply to read",
        id="too-deep",
    ),
    pytest.param(
        s.call("blob"),
        ra.ToolOutputError,
        "tool 'blob' returned bytes that are not UTF-8 text",
        id="binary-output",
    ),
    pytest.param(
        s.call("cycle"),
        ra.ToolOutputError,
        "tool 'cycle' returned a dict that cannot be turned into JSON: Circular reference",
        id="circular-output",
    ),
    pytest.param(s.call("explode"), ra.ToolExecutionError, "ZeroDivisionError", id="raises"),
    pytest.param(s.call("hangs"), ra.ToolTimeoutError, "timed out after 0.05s", id="timeout"),
]


@ra.tool
def explode() -> float:
    """Divide by zero."""
    return 1 / 0


@ra.tool(timeout=0.05)
async def hangs() -> str:
    """Never finishes."""
    await asyncio.Event().wait()
    return "never"


@ra.tool
def blob() -> bytes:
    """Raw bytes of a PNG."""
    return b"\x89PNG\r\n\x1a\n"


@ra.tool
def cycle() -> dict[str, object]:
    """A dict that holds itself."""
    out: dict[str, object] = {"name": "loop"}
    out["self"] = out
    return out


TOOLS = [add, explode, hangs, blob, cycle]


@pytest.mark.parametrize(("bad", "kind", "text"), BAD_CALLS)
async def test_bad_calls_are_reported_to_the_model(
    bad: s.Call, kind: type[ra.ToolError], text: str
) -> None:
    provider = ra.ScriptedProvider([[bad], ["Sorry, let me fix that."]])
    agent = ra.Agent(provider, tools=TOOLS, join=ra.JoinPolicy.REPORT_TO_MODEL)
    run = agent.run("go")
    result = await asyncio.wait_for(ra.collect_final(run), 5)

    (end,) = [e for e in run.events if isinstance(e, ToolCallEnded)]
    assert end.error is not None and text in end.error
    if kind is not ra.ToolExecutionError:
        assert "raised" not in end.error  # only a tool that ran can be blamed for raising
    # The model was told, as a tool message it can read, and answered.
    tool_message = provider.requests[1].messages[-1]
    assert isinstance(tool_message, ra.ToolMessage) and tool_message.is_error
    assert text in tool_message.content and tool_message.content.startswith("Error: ")
    assert result.text == "Sorry, let me fix that."
    assert result.messages.tool_calls()[0].status is ra.ToolCallStatus.FAILED
    assert ra.validate_conversation(result.messages) == []


@pytest.mark.parametrize(("bad", "kind", "text"), BAD_CALLS)
@pytest.mark.parametrize("join", [ra.JoinPolicy.FAIL_FAST, ra.JoinPolicy.JOIN_ALL])
async def test_bad_calls_fail_the_run_with_a_clear_tool_error(
    bad: s.Call, kind: type[ra.ToolError], text: str, join: ra.JoinPolicy
) -> None:
    provider = ra.ScriptedProvider([["Trying. ", bad]])
    agent = ra.Agent(provider, tools=TOOLS, join=join)
    with pytest.raises(ra.AgentError) as raised:
        await asyncio.wait_for(ra.collect_final(agent.run("go")), 5)
    error = raised.value
    if join is ra.JoinPolicy.JOIN_ALL:
        assert isinstance(error, ra.ToolsFailed)
        (error,) = error.errors
    assert isinstance(error, kind) and text in str(error)
    assert error.tool_name == bad.name and error.call_id == "call_1_1"
    partial = raised.value.partial
    assert partial is not None and partial.stop is ra.StopReason.ERROR
    assert partial.text == "Trying. "
    assert ra.validate_conversation(partial.messages) == []


async def test_outputs_that_are_not_json_are_output_errors_not_the_tools_raising() -> None:
    @ra.tool
    def utf8_bytes() -> bytes:
        """Text, as bytes."""
        return "d\u00e9j\u00e0 vu".encode()

    @ra.tool
    async def ticks() -> AsyncIterator[object]:
        """Progress that cannot be JSON, more progress, then nothing: the call is stopped."""
        yield b"\xff\xfe"
        yield "tick"
        await asyncio.Event().wait()
        yield "never"

    provider = ra.ScriptedProvider(
        [[s.call("utf8_bytes", id="u"), s.call("ticks", id="t"), s.call("cycle", id="c")], ["ok"]]
    )
    run = ra.Agent(provider, tools=[utf8_bytes, ticks, cycle]).run("go")
    await asyncio.wait_for(ra.collect_final(run), 5)
    ends = {e.call_id: e for e in run.events if isinstance(e, ToolCallEnded)}
    assert ends["u"].output == "d\u00e9j\u00e0 vu" and ends["u"].error is None
    assert ends["t"].error == (
        "tool 'ticks' reported progress as bytes that are not UTF-8 text; return str, "
        "or encode binary data as text yourself (base64)"
    )
    assert ends["c"].error is not None and ends["c"].error.startswith(
        "tool 'cycle' returned a dict that cannot be turned into JSON"
    )
    assert provider.requests[1].messages[-1].content.startswith("Error: tool 'cycle' returned")


async def test_an_unknown_tool_never_runs_and_never_starts() -> None:
    provider = ra.ScriptedProvider([[s.call("nope"), s.call("add", {"a": 1})], ["ok"]])
    run = ra.Agent(provider, tools=[add]).run("go")
    await ra.collect_final(run)
    assert [e.name for e in run.events if isinstance(e, ToolCallStarted)] == ["add"]
    assert [e.name for e in run.events if isinstance(e, ToolCallEnded)] == ["nope", "add"]
    assert "available tools: add" in provider.requests[1].messages[2].content


async def test_agent_wide_tool_timeout_applies_to_tools_without_their_own() -> None:
    # Virtual time: the timeouts' clock is a TestScheduler the test advances.
    clock = TestScheduler()
    release = threading.Event()
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    @ra.tool
    def slow_sync() -> str:
        """Blocks its thread until released."""
        loop.call_soon_threadsafe(started.set)
        release.wait(10)
        return "late"

    @ra.tool(timeout=90)
    async def patient() -> str:
        """Has a timeout of its own, longer than the agent's."""
        await asyncio.Event().wait()
        return "never"

    provider = ra.ScriptedProvider([[s.call("slow_sync"), s.call("patient")], ["ok"]])
    agent = ra.Agent(provider, tools=[slow_sync, patient], tool_timeout=30, scheduler=clock)
    run = agent.run("go")
    result_task = asyncio.ensure_future(ra.collect_final(run))
    await asyncio.wait_for(started.wait(), 5)
    clock.advance_by(29.9)
    assert not [e for e in run.events if isinstance(e, ToolCallEnded)]
    clock.advance_by(0.2)  # 30 s: the agent-wide timeout; the tool's own 90 s still runs
    clock.advance_by(60)  # 90 s
    result = await asyncio.wait_for(result_task, 5)
    assert not release.is_set()  # the run did not wait for the blocked thread
    release.set()
    ends = [e.error for e in run.events if isinstance(e, ToolCallEnded)]
    assert ends == [
        "tool 'slow_sync' timed out after 30s",
        "tool 'patient' timed out after 90s",
    ]
    assert result.text == "ok" and ra.validate_conversation(result.messages) == []


async def test_a_tool_that_raises_a_tool_error_keeps_its_message() -> None:
    @ra.tool
    def picky(city: str) -> str:
        """Only knows Paris."""
        if city != "Paris":
            raise ra.ToolError(f"no weather for {city}; try Paris")
        return "sunny"

    provider = ra.ScriptedProvider([[s.call("picky", {"city": "Oslo"})], ["ok"]])
    run = ra.Agent(provider, tools=[picky]).run("go")
    await ra.collect_final(run)
    (end,) = [e for e in run.events if isinstance(e, ToolCallEnded)]
    assert end.error == "no weather for Oslo; try Paris"


# -- properties -----------------------------------------------------------------------

calls_strategy = st.lists(
    st.tuples(st.integers(min_value=0, max_value=4), st.booleans()),  # (millis, fails)
    min_size=1,
    max_size=8,
)


@given(
    calls=calls_strategy,
    limit=st.one_of(st.none(), st.integers(min_value=1, max_value=4)),
    join=st.sampled_from(list(ra.JoinPolicy)),
)
def test_fan_out_properties(
    calls: list[tuple[int, bool]], limit: int | None, join: ra.JoinPolicy
) -> None:
    asyncio.run(check_fan_out(calls, limit, join))


async def check_fan_out(
    calls: list[tuple[int, bool]], limit: int | None, join: ra.JoinPolicy
) -> None:
    gauge = Gauge()

    @ra.tool
    async def work(i: int, millis: int, fails: bool) -> int:
        """Work a while, maybe fail."""
        with gauge:
            await asyncio.sleep(millis / 1000)
        if fails:
            raise RuntimeError(f"call {i} failed")
        return i

    script = [
        s.call("work", {"i": i, "millis": ms, "fails": f}, id=f"c{i}")
        for i, (ms, f) in enumerate(calls)
    ]
    provider = ra.ScriptedProvider([script, ["done"]])
    agent = ra.Agent(provider, tools=[work], max_tool_concurrency=limit, join=join)
    run = agent.run("go")
    error: ra.AgentError | None = None
    try:
        result = await asyncio.wait_for(ra.collect_final(run), 10)
        conversation = result.messages
    except ra.AgentError as raised:
        error = raised
        assert raised.partial is not None
        conversation = raised.partial.messages

    ids = [f"c{i}" for i in range(len(calls))]
    started = [e.call_id for e in run.events if isinstance(e, ToolCallStarted)]
    ended = [e.call_id for e in run.events if isinstance(e, ToolCallEnded)]
    any_fails = any(f for _, f in calls)

    # The concurrency limit is never exceeded.
    assert gauge.peak <= (limit or len(calls))
    # Every call starts at most once and ends at most once; ends come in call order.
    assert len(set(started)) == len(started) and len(set(ended)) == len(ended)
    assert ended == sorted(ended, key=ids.index)
    assert set(ended) >= set(started) or join is ra.JoinPolicy.FAIL_FAST
    if join is ra.JoinPolicy.FAIL_FAST and any_fails:
        assert isinstance(error, ra.ToolError)
        # A started call either ended, or was cancelled (and marked so).
        statuses = {c.id: c.status for c in conversation.tool_calls()}
        for call_id in started:
            assert call_id in ended or statuses[call_id] is ra.ToolCallStatus.CANCELLED
    else:
        # Every call started and ended exactly once.
        assert started == ids and ended == ids
        if join is ra.JoinPolicy.JOIN_ALL and any_fails:
            assert isinstance(error, ra.ToolsFailed)
            assert [e.call_id for e in error.errors] == [
                f"c{i}" for i, (_, f) in enumerate(calls) if f
            ]
        else:
            assert error is None
    # The conversation, finished or partial, validates, tool messages in call order.
    assert ra.validate_conversation(conversation) == []
    answered = [m.tool_call_id for m in conversation if isinstance(m, ra.ToolMessage)]
    assert answered == ids
    # JSON round-trips.
    assert ra.Conversation.from_json(conversation.to_json()) == conversation
    assert json.loads(conversation.to_json())  # and is plain JSON


async def test_empty_or_reused_provider_call_ids_are_renamed_everywhere() -> None:
    provider = ra.ScriptedProvider(
        [
            [s.call("add", {"a": 1}, id="x"), s.call("add", {"a": 2}, id="dup")],
            [s.call("add", {"a": 3}, id="x"), s.call("add", {"a": 4}, id="x")],
            ["done"],
        ]
    )
    run = ra.Agent(provider, tools=[add]).run("go")
    result = await ra.collect_final(run)

    per_call: dict[str, set[str]] = {}
    for e in run.events:
        if isinstance(e, ToolArgsDelta | ToolCallStarted | ToolCallEnded):
            per_call.setdefault(e.call_id, set()).add(e.type)
    # Every call id the events use names one call from its first fragment to its end.
    assert all(
        kinds == {"tool_args_delta", "tool_call_started", "tool_call_ended"}
        for kinds in per_call.values()
    )
    ids = [c.id for c in result.messages.tool_calls()]
    assert len(ids) == len(set(ids)) == 4 and ids[:2] == ["x", "dup"]
    assert [e.output for e in run.events if isinstance(e, ToolCallEnded)] == [1, 2, 3, 4]
    assert ra.validate_conversation(result.messages) == []


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


@contextlib.contextmanager
def tagged(call: ra.ToolCall) -> Iterator[None]:
    """A tool context: the call's request id, set while the call starts."""
    token = REQUEST_ID.set(f"req-{call.id}")
    try:
        yield
    finally:
        REQUEST_ID.reset(token)


async def test_tool_context_reaches_async_tools_and_sync_tools_in_threads() -> None:
    @ra.tool
    async def in_task() -> str:
        """Reads the context in its task."""
        return REQUEST_ID.get()

    @ra.tool
    def in_thread() -> str:
        """Reads the context in its worker thread."""
        return f"{REQUEST_ID.get()} on {threading.current_thread().name.split('_')[0]}"

    provider = ra.ScriptedProvider(
        [[s.call("in_task", id="a"), s.call("in_thread", id="b")], ["ok"]]
    )
    run = ra.Agent(provider, tools=[in_task, in_thread], tool_context=tagged).run("go")
    await ra.collect_final(run)
    outputs = [e.output for e in run.events if isinstance(e, ToolCallEnded)]
    assert outputs == ["req-a", "req-b on rxagent-tool"]
    assert REQUEST_ID.get() == "none"  # entered around each start, and left


async def test_tool_context_does_not_leak_into_what_follows_the_tool() -> None:
    # The step after a tool starts from the tool's callbacks: they run in the context
    # the call started in, so its provider request does not see the tool's context.
    @ra.tool
    async def in_task() -> str:
        """Reads the context in its task, after a pause."""
        await asyncio.sleep(0.001)
        return REQUEST_ID.get()

    seen: list[str] = []

    def second_turn(request: ra.ProviderRequest) -> list[str]:
        seen.append(REQUEST_ID.get())
        return ["done"]

    provider = ra.ScriptedProvider([[s.call("in_task", id="a")], second_turn])
    run = ra.Agent(provider, tools=[in_task], tool_context=tagged).run("go")
    await ra.collect_final(run)
    assert [e.output for e in run.events if isinstance(e, ToolCallEnded)] == ["req-a"]
    assert seen == ["none"]


async def test_a_tool_that_awaits_something_cancelled_fails_and_the_run_goes_on() -> None:
    # A CancelledError from inside the tool (not the run's cancellation) is a failure of
    # the tool, reported to the model: it used to leave the run waiting for ever.
    @ra.tool
    async def flaky() -> str:
        """Awaits a task that someone else cancels."""
        task = asyncio.ensure_future(asyncio.Event().wait())
        task.cancel()
        await task
        return "never"

    provider = ra.ScriptedProvider([[s.call("flaky", id="f")], ["It failed; sorry."]])
    run = ra.Agent(provider, tools=[flaky]).run("go")
    result = await asyncio.wait_for(ra.collect_final(run), 5)
    (end,) = [e for e in run.events if isinstance(e, ToolCallEnded)]
    assert end.error is not None and "cancelled from within" in end.error
    assert result.text == "It failed; sorry."
