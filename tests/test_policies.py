"""Policies: built-ins, combinators, purity."""

from __future__ import annotations

import asyncio

import pytest
from reactivex.testing import TestScheduler

import rxagent as ra
from rxagent import policies as p
from rxagent import scripted as s
from rxagent.policies import LoopState, StepOutcome, StopReason


def outcome(*, calls: int = 0, invoked: tuple[str, ...] = ()) -> StepOutcome:
    return StepOutcome(
        step=1,
        tool_calls=tuple(ra.ToolCall(id=f"c{i}", name="t") for i in range(calls)),
        invoked_tools=invoked,
    )


def state(steps: int = 1, tokens: int = 0, tool_calls: int = 0, elapsed: float = 0) -> LoopState:
    return LoopState(
        steps=steps, usage=ra.Usage(prompt_tokens=tokens), tool_calls=tool_calls, elapsed=elapsed
    )


def test_builtin_policies() -> None:
    assert p.until_no_tool_calls()(state(), outcome()) is StopReason.NO_TOOL_CALLS
    assert p.until_no_tool_calls()(state(), outcome(calls=1)) is None
    assert p.max_steps(2)(state(steps=1), outcome()) is None
    assert p.max_steps(2)(state(steps=2), outcome()) is StopReason.MAX_STEPS
    assert p.until_tool_called("x")(state(), outcome(invoked=("y", "x"))) is StopReason.TOOL_CALLED
    assert p.until_tool_called("x")(state(), outcome(invoked=("y",))) is None
    assert p.max_tokens(10)(state(tokens=9), outcome()) is None
    assert p.max_tokens(10)(state(tokens=10), outcome()) is StopReason.TOKEN_BUDGET
    assert p.max_tool_calls(3)(state(tool_calls=3), outcome()) is StopReason.TOOL_BUDGET
    assert p.max_time(1.5)(state(elapsed=1.6), outcome()) is StopReason.TIME_BUDGET
    assert p.max_time(1.5)(state(elapsed=1.0), outcome()) is None


def test_combinators() -> None:
    either = p.max_steps(2) | p.until_no_tool_calls()
    both = p.max_steps(2) & p.until_no_tool_calls()
    assert either(state(steps=1), outcome()) is StopReason.NO_TOOL_CALLS
    assert either(state(steps=2), outcome(calls=1)) is StopReason.MAX_STEPS
    assert both(state(steps=1), outcome()) is None
    assert both(state(steps=2), outcome(calls=1)) is None
    assert both(state(steps=2), outcome()) is StopReason.MAX_STEPS
    assert "max_steps(2)" in repr(either)


def test_custom_policy() -> None:
    @p.policy
    def stop_on_long_answers(st: LoopState, out: StepOutcome) -> StopReason | None:
        return StopReason.TOKEN_BUDGET if st.usage.total_tokens > 5 else None

    assert stop_on_long_answers(state(tokens=6), outcome()) is StopReason.TOKEN_BUDGET


def test_invalid_limits() -> None:
    for make in (p.max_steps, p.max_tokens, p.max_tool_calls, p.max_time):
        with pytest.raises(ValueError, match="must be positive"):
            make(0)


@ra.tool
def ping() -> str:
    """Ping."""
    return "pong"


def pinging(steps: int) -> ra.ScriptedProvider:
    return (
        ra.ScriptedProvider(lambda request: [s.call("ping"), s.usage(10, 5)])
        if steps
        else ra.ScriptedProvider([])
    )


@pytest.mark.parametrize(
    ("policy", "stop", "steps"),
    [
        (p.max_steps(3), StopReason.MAX_STEPS, 3),
        (p.until_tool_called("ping"), StopReason.TOOL_CALLED, 1),
        (p.max_tokens(40), StopReason.TOKEN_BUDGET, 3),
        (p.max_tool_calls(2), StopReason.TOOL_BUDGET, 2),
        (p.max_tokens(1000) | p.max_steps(4), StopReason.MAX_STEPS, 4),
    ],
)
async def test_the_stop_reason_is_recorded_on_the_run(
    policy: ra.Policy, stop: StopReason, steps: int
) -> None:
    agent = ra.Agent(pinging(1), tools=[ping], policy=policy)
    result = await ra.collect_final(agent.run("go"))
    assert (result.stop, result.steps) == (stop, steps)
    assert result.usage.total_tokens == 15 * steps and result.tool_calls == steps


@ra.tool
async def wait_forever() -> str:
    """Never answers."""
    await asyncio.Event().wait()
    return "never"


@pytest.mark.parametrize("where", ["model streaming", "tool running"])
async def test_a_time_budget_cuts_the_step_under_way_short(where: str) -> None:
    # Virtual time: the budget's clock is a TestScheduler the test advances.
    clock = TestScheduler()
    turn = ["thinking...", s.hang()] if where == "model streaming" else [s.call("wait_forever")]
    agent = ra.Agent(
        ra.ScriptedProvider([turn]),
        tools=[wait_forever],
        policy=p.max_time(30) | p.max_steps(50),
        scheduler=clock,
    )
    run = agent.run("go")
    busy = asyncio.Event()
    run.subscribe(lambda e: e.type in ("text_delta", "tool_call_started") and busy.set())
    result_task = asyncio.ensure_future(ra.collect_final(run))
    await asyncio.wait_for(busy.wait(), 5)
    clock.advance_by(29.9)
    assert not run.done  # not yet: 29.9 s of the 30 have passed
    clock.advance_by(0.2)
    result = await asyncio.wait_for(result_task, 5)
    assert result.stop is StopReason.TIME_BUDGET and result.steps == 1
    assert ra.validate_conversation(result.messages) == []
    if where == "model streaming":
        assert result.text == "thinking..."
    else:
        (call,) = result.messages.tool_calls()
        assert call.status is ra.ToolCallStatus.CANCELLED


async def test_a_time_budget_is_also_checked_between_steps() -> None:
    clock = TestScheduler()
    provider = ra.ScriptedProvider(lambda request: [s.call("ping")])
    agent = ra.Agent(
        provider, tools=[ping], policy=p.max_time(10) | p.max_steps(50), scheduler=clock
    )
    run = agent.run("go")

    def tick(event: ra.AgentEvent) -> None:
        if event.type == "step_completed":
            clock.advance_by(4)  # each step takes 4 s of virtual time

    run.subscribe(tick)
    result = await ra.collect_final(run)
    # After step 3, 12 s have passed: the policy stops the run between steps.
    assert result.stop is StopReason.TIME_BUDGET and result.steps == 3


async def test_one_policy_serves_many_concurrent_runs() -> None:
    shared = p.max_steps(2)
    agents = [ra.Agent(pinging(1), tools=[ping], policy=shared) for _ in range(5)]
    results = await asyncio.gather(*(ra.collect_final(a.run("go")) for a in agents))
    assert [r.steps for r in results] == [2] * 5


async def test_a_policy_that_raises_fails_the_run_and_keeps_the_step() -> None:
    @p.policy
    def broken(st: LoopState, out: StepOutcome) -> StopReason | None:
        raise KeyError("no such budget")

    run = ra.Agent(pinging(1), tools=[ping], policy=broken).run("go")
    with pytest.raises(ra.AgentError, match="raised KeyError") as raised:
        await ra.collect_final(run)
    assert isinstance(raised.value.__cause__, KeyError)
    assert run.events[-1].type == "step_completed"  # the step is not lost
    partial = raised.value.partial
    assert partial is not None and partial.steps == 1 and partial.tool_calls == 1
    assert ra.validate_conversation(partial.messages) == []
