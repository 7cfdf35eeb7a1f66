"""The test cases of tower-llm's streaming module, ported to rxagent's operators."""

from __future__ import annotations

import asyncio
import time

import pytest
import reactivex as rx

import rxagent as ra
from rxagent import ops
from rxagent import scripted as s
from rxagent.events import (
    RunCompleted,
    StepCompleted,
    TextDelta,
    ToolCallEnded,
    ToolCallStarted,
)
from tests.helpers import STEP_ONLY, Gauge, collect


async def test_step_invokes_tool_and_finishes() -> None:
    provider = ra.ScriptedProvider([["Hello ", "world", s.call("echo", {"x": 1}, id="call_1")]])

    @ra.tool
    def echo(x: int) -> dict[str, bool]:
        """Echo."""
        return {"ok": True}

    got = await collect(rx.just("hi").pipe(ops.step(provider, tools=[echo])))

    assert got.completed and got.error is None
    (end,) = got.of(ToolCallEnded)
    assert end.call_id == "call_1"
    assert end.output == {"ok": True}
    (done,) = got.of(StepCompleted)
    outcome = done.outcome
    assert len(outcome.messages) >= 2  # the assistant message and the tool message
    assert outcome.invoked_tools == ("echo",)
    assert outcome.messages[0].content == "Hello world"
    assert ra.validate_conversation(outcome.messages, STEP_ONLY) == []
    # StepCompleted is the step's last event.
    assert got.events[-1] is done


async def test_loop_runs_until_policy() -> None:
    provider = ra.ScriptedProvider([["ok"]])
    step = ops.step(provider)
    got = await collect(rx.just("hi").pipe(ops.loop(step, ra.policies.until_no_tool_calls())))

    run = got.events[-1]
    assert isinstance(run, RunCompleted)
    assert run.run.steps == 1
    assert run.run.stop is ra.StopReason.NO_TOOL_CALLS
    assert ra.validate_conversation(run.run.messages) == []
    assert provider.calls == 1


async def test_loop_keeps_stepping_while_the_policy_says_go() -> None:
    provider = ra.ScriptedProvider([[s.call("noop")], [s.call("noop")], ["done"]])

    @ra.tool
    def noop() -> str:
        """Nothing."""
        return "ok"

    got = await collect(
        rx.just("hi").pipe(ops.loop(ops.step(provider, tools=[noop]), ra.DEFAULT_POLICY))
    )
    run = got.events[-1].run
    assert run.steps == 3 and provider.calls == 3
    assert [e.step for e in got.of(StepCompleted)] == [1, 2, 3]
    # Each request carried the conversation so far.
    assert [len(r.messages) for r in provider.requests] == [1, 3, 5]


async def test_tap_receives_every_event() -> None:
    provider = ra.ScriptedProvider([["a", "b"]])
    log: list[ra.AgentEvent] = []
    pipeline = rx.just("hi").pipe(
        ops.loop(ops.step(provider), ra.policies.max_steps(1)), ops.tap(log.append)
    )
    got = await collect(pipeline)

    assert log  # the tap saw events ...
    assert log == got.events  # ... exactly the stream's, in the same order, nothing buffered
    assert [e.text for e in log if isinstance(e, TextDelta)] == ["a", "b"]


async def test_tap_takes_an_observer_and_never_breaks_the_stream() -> None:
    class Broken:
        def __init__(self) -> None:
            self.seen = 0
            self.completed = False

        def on_next(self, _: object) -> None:
            self.seen += 1
            raise RuntimeError("UI bug")

        def on_completed(self) -> None:
            self.completed = True

    broken = Broken()
    provider = ra.ScriptedProvider([["a", "b"]])
    got = await collect(
        rx.just("hi").pipe(ops.loop(ops.step(provider), ra.policies.max_steps(1)), ops.tap(broken))
    )
    assert got.completed and broken.completed
    assert broken.seen == len(got.events)


async def test_instructions_are_injected_in_the_request() -> None:
    provider = ra.ScriptedProvider([["ok"], ["ok"]])
    await collect(rx.just("hi").pipe(ops.step(provider, instructions="INSTR")))
    first = provider.requests[0].messages
    assert first[0] == ra.SystemMessage(content="INSTR")
    assert first[1] == ra.UserMessage(content="hi")

    # A system message the conversation has is replaced, not duplicated.
    convo = [ra.SystemMessage(content="old"), ra.UserMessage(content="hi")]
    got = await collect(
        rx.just(convo).pipe(ops.loop(ops.step(provider, instructions="INSTR"), ra.DEFAULT_POLICY))
    )
    sent = provider.requests[1].messages
    assert [m.content for m in sent if isinstance(m, ra.SystemMessage)] == ["INSTR"]
    # The instructions go to the model, not into the run's conversation.
    assert got.events[-1].run.messages[0] == ra.SystemMessage(content="old")


async def test_parallel_tools_preserve_call_order() -> None:
    provider = ra.ScriptedProvider([[s.call("slow", id="c1"), s.call("fast", id="c2")]])
    finished: list[str] = []

    @ra.tool
    async def slow() -> dict[str, str]:
        """Slow."""
        await asyncio.sleep(0.04)
        finished.append("slow")
        return {"label": "slow"}

    @ra.tool
    async def fast() -> dict[str, str]:
        """Fast."""
        await asyncio.sleep(0.005)
        finished.append("fast")
        return {"label": "fast"}

    got = await collect(rx.just("hi").pipe(ops.step(provider, tools=[slow, fast])))

    assert finished == ["fast", "slow"]  # they really overlapped, the fast one first ...
    assert [e.call_id for e in got.of(ToolCallEnded)] == ["c1", "c2"]  # ... ends in call order
    (done,) = got.of(StepCompleted)
    tool_ids = [m.tool_call_id for m in done.outcome.messages if isinstance(m, ra.ToolMessage)]
    assert tool_ids == ["c1", "c2"]
    assert ra.validate_conversation(done.outcome.messages, STEP_ONLY) == []


async def test_parallel_tool_error_propagates() -> None:
    provider = ra.ScriptedProvider([[s.call("good", id="g1"), s.call("bad", id="b1")]])

    @ra.tool
    def good() -> dict[str, str]:
        """Good."""
        return {}

    @ra.tool
    def bad() -> None:
        """Bad."""
        raise RuntimeError("boom")

    got = await collect(
        rx.just("hi").pipe(ops.step(provider, tools=[good, bad], join=ra.JoinPolicy.FAIL_FAST))
    )

    assert isinstance(got.error, ra.ToolExecutionError)
    assert "boom" in str(got.error) and got.error.call_id == "b1"
    assert isinstance(got.error.__cause__, RuntimeError)
    # The failed step ends with its partial outcome, marked with the error, then fails.
    (completed,) = got.of(StepCompleted)
    assert completed.outcome.error.startswith("ToolExecutionError") and got.events[-1] is completed
    assert ra.validate_conversation(got.error.partial.messages) == []


async def test_parallel_concurrency_limit_is_never_exceeded() -> None:
    gauge = Gauge()

    @ra.tool
    async def gate(i: int) -> int:
        """Gate."""
        with gauge:
            await asyncio.sleep(0.01)
        return i

    provider = ra.ScriptedProvider([[s.call("gate", {"i": i}) for i in range(8)]])
    got = await collect(
        rx.just("hi").pipe(ops.step(provider, tools=[gate], max_tool_concurrency=3))
    )
    assert got.completed
    assert gauge.peak == 3  # the limit is reached (the calls overlap) and never exceeded
    assert [e.output for e in got.of(ToolCallEnded)] == list(range(8))


async def test_fail_fast_does_not_emit_the_slow_tools_end() -> None:
    provider = ra.ScriptedProvider([[s.call("bad", id="b1"), s.call("slow", id="s1")]])
    cancelled = asyncio.Event()

    @ra.tool
    def bad() -> None:
        """Bad."""
        raise ValueError("boom")

    @ra.tool
    async def slow() -> dict[str, bool]:
        """Slow (longer than the seed's 40 ms, so that not waiting for it shows)."""
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"ok": True}

    started = time.monotonic()
    got = await collect(
        rx.just("hi").pipe(ops.step(provider, tools=[bad, slow], join=ra.JoinPolicy.FAIL_FAST))
    )
    assert isinstance(got.error, ra.ToolError)
    assert "s1" not in [e.call_id for e in got.of(ToolCallEnded)]
    assert [e.call_id for e in got.of(ToolCallEnded)] == ["b1"]
    await asyncio.wait_for(cancelled.wait(), 5)  # the slow tool was cancelled, not left running
    assert time.monotonic() - started < 2.5  # and the step did not wait for it
    partial = got.error.partial
    statuses = {c.id: c.status for c in partial.messages.tool_calls()}
    assert statuses == {"b1": ra.ToolCallStatus.FAILED, "s1": ra.ToolCallStatus.CANCELLED}
    assert ra.validate_conversation(partial.messages) == []


async def test_join_all_emits_successes_then_the_error() -> None:
    provider = ra.ScriptedProvider([[s.call("bad", id="b1"), s.call("slow", id="s1")]])

    @ra.tool
    def bad() -> None:
        """Bad."""
        raise ValueError("boom")

    @ra.tool
    async def slow() -> dict[str, bool]:
        """Slow."""
        await asyncio.sleep(0.02)
        return {"ok": True}

    got = await collect(
        rx.just("hi").pipe(
            ops.step(
                provider,
                tools=[bad, slow],
                join=ra.JoinPolicy.JOIN_ALL,
                max_tool_concurrency=1,
            )
        )
    )
    ends = got.of(ToolCallEnded)
    assert [e.call_id for e in ends] == ["b1", "s1"]
    assert ends[1].output == {"ok": True} and ends[1].error is None
    assert isinstance(got.error, ra.ToolsFailed)
    assert [e.call_id for e in got.error.errors] == ["b1"]
    # The error comes after every end, and the step's partial outcome.
    (completed,) = got.of(StepCompleted)
    assert completed.outcome.error.startswith("ToolsFailed")
    assert got.events[-2:] == [ends[-1], completed]
    assert ra.validate_conversation(got.error.partial.messages) == []


@pytest.mark.parametrize("limit", [None, 1, 2])
async def test_tool_call_started_marks_when_a_call_really_starts(limit: int | None) -> None:
    provider = ra.ScriptedProvider([[s.call("t", {"i": i}) for i in range(4)]])
    running: list[int] = []
    gauge = Gauge()

    @ra.tool
    async def t(i: int) -> int:
        """T."""
        with gauge:
            running.append(i)
            await asyncio.sleep(0.005)
        return i

    got = await collect(
        rx.just("x").pipe(ops.step(provider, tools=[t], max_tool_concurrency=limit))
    )
    starts = got.of(ToolCallStarted)
    assert [e.arguments["i"] for e in starts] == [0, 1, 2, 3]
    if limit == 1:
        # One after another: each start follows the previous end.
        kinds = [e.type for e in got.events if isinstance(e, ToolCallStarted | ToolCallEnded)]
        assert kinds == ["tool_call_started", "tool_call_ended"] * 4
    assert gauge.peak == (limit or 4)
