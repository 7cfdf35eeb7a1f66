"""RunState: a run's state as a fold of its events, the same in any process."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rxagent as ra
from rxagent import approval
from rxagent import scripted as s
from rxagent.events import RunCompleted, from_jsonl, to_jsonl
from rxagent.state import RunState, RunStatus, StepPhase, fold


@ra.tool
async def echo(text: str) -> str:
    """Say it back."""
    await asyncio.sleep(0)
    return text


@ra.tool
def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(reason)


@ra.tool(approval=approval.require_approval("a human decides"))
def guarded(amount: int) -> str:
    """Needs a human."""
    return f"moved {amount}"


@ra.tool
async def stream_up(n: int) -> Any:
    """Streams progress, then a result."""
    for i in range(n):
        yield {"done": i}
    yield {"total": n}


TOOLS = [echo, explode, guarded, stream_up]

texts = st.lists(st.text(alphabet="abc xyz", min_size=1, max_size=4), max_size=3)
calls = st.one_of(
    st.builds(lambda t: s.call("echo", {"text": t}), st.text(alphabet="ab", max_size=3)),
    st.just(s.call("explode", {"reason": "boom"})),
    st.builds(lambda n: s.call("guarded", {"amount": n}), st.integers(0, 999)),
    st.builds(lambda n: s.call("stream_up", {"n": n}), st.integers(0, 3)),
    st.just(s.call("no_such_tool", {})),
    st.just(s.call("echo", "{not json")),
)
extras = st.sampled_from(["usage", "reasoning", "retry", "fail", None])


@st.composite
def turns(draw: st.DrawFn) -> list[Any]:
    out: list[Any] = []
    for _ in range(draw(st.integers(1, 3))):
        turn: list[Any] = list(draw(texts))
        extra = draw(extras)
        if extra == "usage":
            turn.append(s.usage(draw(st.integers(0, 50)), draw(st.integers(0, 50))))
        elif extra == "reasoning":
            turn.insert(0, s.reasoning("hmm"))
        elif extra == "retry":
            turn = ["dropped", s.retry("overloaded"), *turn]
        elif extra == "fail":
            turn.append(s.fail("the connection broke"))
        turn += draw(st.lists(calls, max_size=3))
        out.append(turn)
    out.append(draw(texts) or ["done"])
    return out


async def play(
    script: list[Any], join: ra.JoinPolicy, cancel_at: int | None
) -> tuple[list[ra.AgentEvent], Exception | None]:
    agent = ra.Agent(ra.ScriptedProvider(script), tools=TOOLS, join=join, max_tool_concurrency=2)
    run = agent.run("go")
    seen = 0

    def maybe_cancel(_: ra.AgentEvent) -> None:
        nonlocal seen
        seen += 1
        if seen == cancel_at:
            run.cancel()

    run.subscribe(maybe_cancel, lambda _: None)
    try:
        await asyncio.wait_for(ra.collect_final(run), 10)
    except ra.AgentError as error:
        return list(run.events), error
    return list(run.events), None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    script=turns(),
    join=st.sampled_from(list(ra.JoinPolicy)),
    cancel_at=st.one_of(st.none(), st.integers(1, 30)),
)
def test_folding_a_runs_events_gives_its_result(
    script: list[Any], join: ra.JoinPolicy, cancel_at: int | None
) -> None:
    events, error = asyncio.run(play(script, join, cancel_at))
    # As another process sees them: JSON lines, read back.
    events = from_jsonl(to_jsonl(events))
    state = fold(events)
    if error is None:
        last = events[-1]
        assert isinstance(last, RunCompleted)
        # Everything RunCompleted says, the events before it said already.
        assert fold(events[:-1]).to_run(last.run.stop) == last.run
        assert state.result == last.run and state.done
        assert state.status is {
            ra.StopReason.PAUSED: RunStatus.PAUSED,
            ra.StopReason.CANCELLED: RunStatus.CANCELLED,
        }.get(last.run.stop, RunStatus.COMPLETED)
        assert state.pending == last.run.pending
    else:
        assert isinstance(error, ra.AgentError) and error.partial is not None
        # A failed run's partial is the fold of the events it emitted.
        assert state.to_run(ra.StopReason.ERROR) == error.partial
        failed = state.fail(error)
        assert failed.status is RunStatus.FAILED and failed.error is not None
        assert failed.phase is StepPhase.FAILED
    assert ra.validate_conversation(state.conversation) == []
    # Every call the events named has a status from the one vocabulary, final or waiting.
    for call in state.calls.values():
        assert call.status.is_final or call.status is ra.ToolCallStatus.PENDING or not state.done


def test_apply_is_pure_and_a_state_can_branch() -> None:
    started = RunState().apply(ra.events.RunStarted(step=1, input=ra.Conversation.of("hi")))
    step = started.apply(ra.events.StepStarted(step=1))
    a = step.apply(ra.events.TextDelta(step=1, text="a"))
    b = step.apply(ra.events.TextDelta(step=1, text="b"))  # from the same state
    ab = a.apply(ra.events.TextDelta(step=1, text="b"))
    assert (step.text, a.text, b.text, ab.text) == ("", "a", "b", "ab")
    assert (started.status, step.phase) == (RunStatus.RUNNING, StepPhase.STREAMING)
    assert started.events == 1 and ab.events == 4 and a.events == 3


async def test_a_runs_state_is_its_events_folded_so_far() -> None:
    gate = asyncio.Event()

    @ra.tool
    async def wait() -> str:
        """Waits for the test."""
        await gate.wait()
        return "ok"

    provider = ra.ScriptedProvider([["Let me ", "wait. ", s.call("wait", id="w")], ["Done."]])
    run = ra.Agent(provider, tools=[wait]).run("go")
    running = asyncio.Event()
    run.subscribe(lambda e: e.type == "tool_call_started" and running.set())
    await asyncio.wait_for(running.wait(), 5)

    now = run.state
    assert now.status is RunStatus.RUNNING and now.phase is StepPhase.STREAMING
    assert now.text == "Let me wait. " and now.calls["w"].status is ra.ToolCallStatus.RUNNING
    gate.set()
    result = await ra.collect_final(run)
    done = run.state
    assert done.status is RunStatus.COMPLETED and done.result == result
    assert done.texts == {1: "Let me wait. ", 2: "Done."} and done.steps == 2
    assert [r.phase for r in done.records] == [StepPhase.COMPLETED] * 2


async def test_a_resumed_turn_starts_in_the_resuming_phase() -> None:
    provider = ra.ScriptedProvider([[s.call("guarded", {"amount": 5}, id="g")], ["Moved."]])
    agent = ra.Agent(provider, tools=TOOLS)
    paused = await ra.collect_final(agent.run("move 5"))
    assert paused.stop is ra.StopReason.PAUSED
    messages = paused.messages.copy()
    messages.approve("g")
    run = agent.run(messages)
    phases: list[StepPhase | None] = []
    state = RunState()
    for event in [e async for e in run]:
        state = state.apply(event)
        phases.append(state.phase)
    assert StepPhase.RESUMING in phases and phases.index(StepPhase.RESUMING) < phases.index(
        StepPhase.STREAMING
    )
    assert state.calls["g"].status is ra.ToolCallStatus.COMPLETED


@pytest.mark.parametrize("bad", ["queued", "running"])
def test_status_vocabulary_is_one_enum(bad: str) -> None:
    assert RunStatus(bad) in RunStatus and not RunStatus(bad).is_final
