"""A Run: one provider call per step for many observers, replay, cancellation, asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator

import pytest
from reactivex import Observable

import rxagent as ra
from rxagent import scripted as s
from rxagent.events import (
    RunCompleted,
    StepCompleted,
    TextDelta,
    ToolCallEnded,
    ToolCallStarted,
)
from rxagent.providers.base import ProviderChunk, ProviderRequest, ToolCallReady
from tests.helpers import collect


@ra.tool
async def lookup(key: str) -> str:
    """Look a key up."""
    await asyncio.sleep(0.01)
    return key.upper()


def two_step_agent(chunk_delay: float = 0.0) -> tuple[ra.Agent, ra.ScriptedProvider]:
    provider = ra.ScriptedProvider(
        [
            ["Looking ", "up. ", s.call("lookup", {"key": "a"}), s.call("lookup", {"key": "b"})],
            ["A and ", "B."],
        ],
        chunk_delay=chunk_delay,
    )
    return ra.Agent(provider, tools=[lookup]), provider


async def test_three_observers_one_provider_call_per_step_same_sequence() -> None:
    agent, provider = two_step_agent()
    run = agent.run("go")
    seen: list[list[ra.AgentEvent]] = [[], [], []]
    for log in seen:
        run.subscribe(log.append)
    result = await ra.collect_final(run)

    assert provider.calls == 2 == result.steps
    assert seen[0] == seen[1] == seen[2] == list(run.events)
    assert isinstance(seen[0][-1], RunCompleted)
    assert result.text == "A and B."


async def test_a_late_subscriber_sees_everything_then_the_live_events() -> None:
    agent, provider = two_step_agent(chunk_delay=0.005)
    run = agent.run("go")
    early: list[ra.AgentEvent] = []
    late: list[ra.AgentEvent] = []
    joined_at: list[int] = []

    def on_event(event: ra.AgentEvent) -> None:
        early.append(event)
        if isinstance(event, ToolCallStarted) and not joined_at:
            joined_at.append(len(early))
            run.subscribe(late.append)  # arrives mid-run

    run.subscribe(on_event)
    await ra.collect_final(run)

    assert joined_at and joined_at[0] < len(early)  # it really joined mid-run
    assert late == early
    assert provider.calls == 2


async def test_subscribing_after_the_end_replays_the_whole_run() -> None:
    agent, provider = two_step_agent()
    run = agent.run("go")
    first = await ra.collect_final(run)
    again = await collect(run)
    assert again.completed and again.events == list(run.events)
    assert again.events[-1].run == first
    assert provider.calls == 2  # the replay made no new request


async def test_an_observer_that_raises_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent, _ = two_step_agent()
    run = agent.run("go")
    broken_seen: list[ra.AgentEvent] = []

    def broken(event: ra.AgentEvent) -> None:
        broken_seen.append(event)
        if isinstance(event, TextDelta):
            raise RuntimeError("UI bug")

    good: list[ra.AgentEvent] = []
    run.subscribe(broken)
    run.subscribe(good.append)
    with caplog.at_level(logging.ERROR, logger="rxagent"):
        result = await ra.collect_final(run)

    assert good == list(run.events) and isinstance(good[-1], RunCompleted)
    assert result.stop is ra.StopReason.NO_TOOL_CALLS
    assert isinstance(broken_seen[-1], TextDelta)  # unsubscribed at its error
    assert "raised in on_next" in caplog.text


def cancellable_agent() -> tuple[ra.Agent, asyncio.Event, asyncio.Event]:
    tool_cancelled = asyncio.Event()
    tool_started = asyncio.Event()

    @ra.tool
    async def forever() -> str:
        """Never returns."""
        tool_started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            tool_cancelled.set()
            raise
        return "unreachable"

    provider = ra.ScriptedProvider([["Working ", s.call("forever"), s.hang()]])
    return ra.Agent(provider, tools=[forever]), tool_started, tool_cancelled


async def test_cancel_stops_tools_and_ends_with_a_cancelled_run() -> None:
    agent, tool_started, tool_cancelled = cancellable_agent()
    run = agent.run("go")
    after_end: list[ra.AgentEvent] = []
    ended = False

    def watch(event: ra.AgentEvent) -> None:
        nonlocal ended
        if ended:
            after_end.append(event)
        if isinstance(event, RunCompleted):
            ended = True

    run.subscribe(watch)
    final = asyncio.ensure_future(ra.collect_final(run))
    await asyncio.wait_for(tool_started.wait(), 5)
    run.cancel()
    result = await asyncio.wait_for(final, 5)

    assert result.stop is ra.StopReason.CANCELLED
    await asyncio.wait_for(tool_cancelled.wait(), 1)  # the tool was stopped, promptly
    assert isinstance(run.events[-1], RunCompleted) and not after_end
    assert ra.validate_conversation(result.messages) == []
    # What streamed before the cancel is kept.
    last = result.messages.last_assistant
    assert last is not None and last.content == "Working "
    assert [c.status for c in last.tool_calls] == [ra.ToolCallStatus.CANCELLED]
    cancelled_step = run.events[-2]
    assert isinstance(cancelled_step, StepCompleted) and cancelled_step.outcome.cancelled
    run.cancel()  # cancelling again is harmless
    assert run.events[-1] is not None and isinstance(run.events[-1], RunCompleted)


async def test_disposing_the_last_subscription_cancels_the_run() -> None:
    agent, tool_started, tool_cancelled = cancellable_agent()
    run = agent.run("go")
    subscription = run.subscribe(lambda _: None)
    await asyncio.wait_for(tool_started.wait(), 5)
    subscription.dispose()
    await asyncio.wait_for(tool_cancelled.wait(), 1)
    assert run.done
    late = await ra.collect_final(run)  # a later subscriber gets the replay, ending cancelled
    assert late.stop is ra.StopReason.CANCELLED


async def test_cancel_before_anyone_subscribed() -> None:
    agent, _ = two_step_agent()
    run = agent.run("go")
    run.cancel()
    result = await ra.collect_final(run)
    assert result.stop is ra.StopReason.CANCELLED
    assert result.messages == [ra.UserMessage(content="go")]


class ClosingProvider:
    """Streams one text piece, then stalls; records when its stream is closed."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.first_sent = asyncio.Event()

    def stream(self, request: ProviderRequest) -> Observable[ProviderChunk]:
        async def chunks() -> AsyncIterator[ProviderChunk]:
            try:
                yield TextDelta(step=request.step, text="partial")
                self.first_sent.set()
                await asyncio.Event().wait()
            finally:
                self.closed.set()

        return ra.from_async_iterable(chunks)


async def test_cancel_closes_the_provider_stream() -> None:
    provider = ClosingProvider()
    run = ra.Agent(provider).run("go")
    final = asyncio.ensure_future(ra.collect_final(run))
    await asyncio.wait_for(provider.first_sent.wait(), 5)
    run.cancel()
    await asyncio.wait_for(provider.closed.wait(), 1)
    result = await final
    assert result.stop is ra.StopReason.CANCELLED
    assert result.text == "partial"


async def test_async_for_iterates_the_events_and_break_disposes() -> None:
    agent, _ = two_step_agent()
    run = agent.run("go")
    types = [event.type async for event in run]
    assert types[:2] == ["run_started", "step_started"] and types[-1] == "run_completed"

    provider = ClosingProvider()
    run = ra.Agent(provider).run("go")
    async with contextlib.aclosing(ra.to_async_iterable(run)) as events:
        async for event in events:
            if isinstance(event, TextDelta):
                break
    # Leaving the loop disposed the only subscription, which cancelled the run.
    await asyncio.wait_for(provider.closed.wait(), 1)
    assert run.done and run.events[-1].run.stop is ra.StopReason.CANCELLED


async def test_async_for_raises_the_runs_error() -> None:
    provider = ra.ScriptedProvider([["half ", s.fail("connection reset")]])
    run = ra.Agent(provider).run("go")
    seen: list[str] = []
    with pytest.raises(ra.ProviderError, match="connection reset") as raised:
        async for event in run:
            seen.append(event.type)
    # The failed step still ends with its StepCompleted (the partial step), then the error.
    assert seen == ["run_started", "step_started", "text_delta", "step_completed"]
    assert raised.value.partial is not None
    assert raised.value.partial.text == "half "  # nothing streamed is lost
    assert ra.validate_conversation(raised.value.partial.messages) == []


async def test_from_async_iterable_disposal_cancels_the_task() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()
    closed = asyncio.Event()

    async def numbers() -> AsyncIterator[int]:
        try:
            yield 1
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        finally:
            closed.set()

    items: list[int] = []
    subscription = ra.from_async_iterable(numbers).subscribe(items.append)
    await asyncio.wait_for(started.wait(), 5)
    subscription.dispose()
    await asyncio.wait_for(cancelled.wait(), 1)
    await asyncio.wait_for(closed.wait(), 1)
    assert items == [1]


async def test_from_async_iterable_passes_items_errors_and_completion() -> None:
    async def good() -> AsyncIterator[int]:
        for i in range(3):
            yield i
            await asyncio.sleep(0)

    async def bad() -> AsyncIterator[int]:
        yield 1
        raise KeyError("gone")

    ok = await collect(ra.from_async_iterable(good))
    assert ok.events == [0, 1, 2] and ok.completed
    # The factory runs per subscription, so the Observable can be subscribed again.
    assert (await collect(ra.from_async_iterable(good))).events == [0, 1, 2]
    failed = await collect(ra.from_async_iterable(bad))
    assert failed.events == [1] and isinstance(failed.error, KeyError)


async def test_observers_run_on_the_loop_thread_and_sync_tools_in_workers() -> None:
    threads: set[str] = set()

    @ra.tool
    def where() -> str:
        """Which thread runs me."""
        return threading.current_thread().name

    provider = ra.ScriptedProvider([[s.call("where")], ["ok"]])
    run = ra.Agent(provider, tools=[where]).run("go")
    run.subscribe(lambda _: threads.add(threading.current_thread().name))
    await ra.collect_final(run)

    assert threads == {threading.current_thread().name}
    (end,) = [e for e in run.events if isinstance(e, ToolCallEnded)]
    assert end.output.startswith("rxagent-tool")


async def test_a_sync_tool_does_not_block_the_loop() -> None:
    release = threading.Event()

    @ra.tool
    def blocking() -> str:
        """Blocks its thread until released."""
        release.wait(5)
        return "released"

    provider = ra.ScriptedProvider([[s.call("blocking")], ["ok"]])
    run = ra.Agent(provider, tools=[blocking]).run("go")
    final = asyncio.ensure_future(ra.collect_final(run))
    # The loop keeps serving while the tool blocks its worker thread.
    for _ in range(5):
        await asyncio.sleep(0)
    assert not final.done()
    release.set()
    result = await asyncio.wait_for(final, 5)
    assert result.text == "ok"


def test_run_sync_in_a_plain_script() -> None:
    agent, provider = two_step_agent()
    result = agent.run_sync("go", timeout=10)
    assert result.text == "A and B." and provider.calls == 2


def test_subscribe_without_a_loop_uses_the_background_loop() -> None:
    agent, _ = two_step_agent()
    run = agent.run("go")
    texts: list[str] = []
    run.pipe(ra.ops.text()).subscribe(texts.append)
    result = run.result(timeout=10)
    assert "".join(texts) == "Looking up. A and B." == "Looking up. " + result.text


async def test_run_sync_refuses_to_block_a_running_loop() -> None:
    agent, _ = two_step_agent()
    with pytest.raises(RuntimeError, match="running event loop"):
        agent.run_sync("go")
    run = agent.run("go")
    run.subscribe(lambda _: None)
    with pytest.raises(RuntimeError, match="would block"):
        run.result()
    await ra.collect_final(run)


async def test_collect_final_of_a_stream_without_run_completed_is_an_error() -> None:
    import reactivex as rx

    with pytest.raises(ra.AgentError, match="without a RunCompleted"):
        await ra.collect_final(rx.empty())


async def test_collect_final_operator() -> None:
    agent, _ = two_step_agent()
    run = agent.run("go")
    got = await collect(run.pipe(ra.ops.collect_final()))
    assert len(got.events) == 1 and got.events[0].text == "A and B."


async def test_materialize_turns_a_failure_into_data() -> None:
    provider = ra.ScriptedProvider([["half ", s.fail("boom")]])
    got = await collect(ra.Agent(provider).run("go").pipe(ra.ops.materialize()))
    assert got.completed and got.error is None
    failed = got.events[-1]
    assert isinstance(failed, ra.events.RunFailed)
    assert failed.error_type == "ProviderError" and "boom" in failed.message
    assert failed.partial is not None and failed.partial.text == "half "


# -- cancellation at step boundaries, re-entrancy, threads and loops ---------------------


def looping_agent() -> tuple[ra.Agent, ra.ScriptedProvider, list[int]]:
    ran: list[int] = []

    @ra.tool
    def tick(i: int) -> int:
        """Tick."""
        ran.append(i)
        return i

    provider = ra.ScriptedProvider(lambda request: [s.call("tick", {"i": request.step})])
    return ra.Agent(provider, tools=[tick], policy=ra.policies.max_steps(5)), provider, ran


async def test_a_cancel_from_a_step_completed_handler_stops_before_the_next_step() -> None:
    agent, provider, ran = looping_agent()
    run = agent.run("go")
    run.subscribe(lambda e: isinstance(e, StepCompleted) and e.step == 1 and run.cancel())
    result = await ra.collect_final(run)
    assert result.stop is ra.StopReason.CANCELLED
    assert provider.calls == 1 and ran == [1]
    assert ra.validate_conversation(result.messages) == []


async def test_a_cancel_while_step_started_is_delivered_makes_no_provider_call() -> None:
    agent, provider, ran = looping_agent()
    run = agent.run("go")
    run.subscribe(lambda e: e.type == "step_started" and run.cancel())
    result = await ra.collect_final(run)
    assert result.stop is ra.StopReason.CANCELLED and provider.calls == 0 and ran == []
    assert result.messages == [ra.UserMessage(content="go")]


async def test_the_only_observer_leaving_at_a_step_boundary_cancels_the_run() -> None:
    from reactivex import operators as rx_ops

    agent, provider, ran = looping_agent()
    run = agent.run("go")
    first = await run.pipe(rx_ops.first(lambda e: e.type == "step_completed"))
    assert isinstance(first, StepCompleted)
    result = await ra.collect_final(run)  # the replay of what happened
    assert result.stop is ra.StopReason.CANCELLED
    assert provider.calls == 1 and ran == [1]


async def test_an_observer_that_cancels_mid_event_does_not_reorder_the_others() -> None:
    provider = ra.ScriptedProvider([["a", "b", "c", s.hang()]])
    run = ra.Agent(provider).run("go")
    seen_a: list[str] = []
    seen_b: list[str] = []

    def a(event: ra.AgentEvent) -> None:
        seen_a.append(getattr(event, "text", event.type))
        if getattr(event, "text", None) == "b":
            run.cancel()

    run.subscribe(a)
    run.subscribe(lambda event: seen_b.append(getattr(event, "text", event.type)))
    await ra.collect_final(run)
    assert (
        seen_a
        == seen_b
        == [
            "run_started",
            "step_started",
            "a",
            "b",
            "step_completed",
            "run_completed",
        ]
    )


def test_await_and_async_for_work_from_another_loop() -> None:
    agent, _ = two_step_agent(chunk_delay=0.002)
    run = agent.run("go")
    run.subscribe(lambda _: None)  # no loop here: the run lives on the background loop

    async def elsewhere() -> tuple[ra.AgentEvent, list[str]]:
        last = await asyncio.wait_for(run, 10)
        kinds = [event.type async for event in run]
        return last, kinds

    started = time.monotonic()
    last, kinds = asyncio.run(elsewhere())
    # Woken when the run ended (a future set from the wrong thread would sleep to the timeout).
    assert time.monotonic() - started < 5
    assert isinstance(last, RunCompleted) and last.run.text == "A and B."
    assert kinds[:2] == ["run_started", "step_started"] and kinds[-1] == "run_completed"


def test_a_finished_run_replays_after_its_loop_closed() -> None:
    agent, provider = two_step_agent()
    run = agent.run("go")
    first = asyncio.run(ra.collect_final(run))
    again = asyncio.run(ra.collect_final(run))  # the first loop is closed by now
    assert first == again == run.result()
    assert provider.calls == 2


def test_an_unfinished_run_whose_loop_is_gone_is_a_clear_error() -> None:
    agent, _ = cancellable_agent_plain()
    run = agent.run("go")

    async def start_and_leave() -> None:
        run.subscribe(lambda _: None)
        await asyncio.sleep(0)

    asyncio.run(start_and_leave())
    with pytest.raises(RuntimeError, match="no longer running"):
        run.result(timeout=5)


def cancellable_agent_plain() -> tuple[ra.Agent, ra.ScriptedProvider]:
    provider = ra.ScriptedProvider([["thinking", s.hang()]])
    return ra.Agent(provider), provider


class ThreadedProvider:
    """A provider that emits from a thread of its own (as a blocking client might)."""

    def __init__(self) -> None:
        self.turns = [
            [TextDelta(step=1, text="calling "), ToolCallReady("c1", "where_am_i", "{}")],
            [TextDelta(step=2, text="done")],
        ]

    def stream(self, request: ProviderRequest) -> Observable[ProviderChunk]:
        import reactivex as rx
        from reactivex.scheduler import NewThreadScheduler

        return rx.from_iterable(self.turns[request.step - 1], scheduler=NewThreadScheduler())


async def test_a_provider_emitting_from_another_thread_is_brought_to_the_loop() -> None:
    loop = asyncio.get_running_loop()
    tool_loops: list[object] = []

    @ra.tool
    async def where_am_i() -> str:
        """Which loop runs me."""
        tool_loops.append(asyncio.get_running_loop())
        return "here"

    threads: set[str] = set()
    run = ra.Agent(ThreadedProvider(), tools=[where_am_i]).run("go")
    run.subscribe(lambda _: threads.add(threading.current_thread().name))
    result = await asyncio.wait_for(ra.collect_final(run), 5)
    assert result.text == "done"
    assert threads == {threading.current_thread().name}
    assert tool_loops == [loop]


def test_async_for_over_a_run_on_another_thread() -> None:
    agent, _ = two_step_agent(chunk_delay=0.002)
    run = agent.run("go")
    run.subscribe(lambda _: None)  # lives on the background loop, events on its thread

    async def consume() -> list[str]:
        return [event.type async for event in ra.to_async_iterable(run)]

    kinds = asyncio.run(asyncio.wait_for(consume(), 10))
    assert kinds == [e.type for e in run.events]


async def test_an_observer_that_raises_at_the_end_is_logged_not_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An exception in an Rx callback run by an asyncio task must never vanish into
    # "Task exception was never retrieved": it is logged where a user looks.
    finished = asyncio.Event()

    async def numbers() -> AsyncIterator[int]:
        yield 1

    def on_completed() -> None:
        finished.set()
        raise RuntimeError("the view broke")

    with caplog.at_level(logging.ERROR, logger="rxagent"):
        ra.from_async_iterable(numbers).subscribe(lambda _: None, on_completed=on_completed)
        await asyncio.wait_for(finished.wait(), 1)
    logged = [r for r in caplog.records if r.name == "rxagent" and r.exc_info]
    assert [str(r.exc_info[1]) for r in logged if r.exc_info] == ["the view broke"]


def test_a_result_that_times_out_stops_the_run_it_gave_up_on() -> None:
    provider = ra.ScriptedProvider([["thinking...", s.hang()]])
    run = ra.Agent(provider).run("go")
    with pytest.raises(TimeoutError):
        run.result(timeout=0.2)
    # Nobody else observes it: giving up on it cancelled it, and its stream was closed.
    final = run.result(timeout=5)
    assert final.stop is ra.StopReason.CANCELLED and final.text == "thinking..."
