"""A run's recorded result never changes after it ended: the conversations events hold
are read-only records; the caller's result has a writable copy of its own."""

from __future__ import annotations

import asyncio
import copy
import pickle

import pytest
import reactivex as rx

import rxagent as ra
from rxagent import approval, events, ops
from rxagent import scripted as s
from rxagent.events import RunCompleted, RunStarted, StepCompleted


@ra.tool(approval=approval.require_approval("over the limit"))
def transfer(amount: int) -> str:
    """Move money."""
    return f"moved {amount}"


def paying_agent(*turns: list[object]) -> ra.Agent:
    script = [[s.call("transfer", {"amount": 900}, id="big")], *turns]
    return ra.Agent(ra.ScriptedProvider(script), tools=[transfer])  # type: ignore[arg-type]


def completed(run: ra.Run) -> ra.AgentRun:
    (end,) = [e for e in run.events if isinstance(e, RunCompleted)]
    return end.run


async def test_approving_the_result_does_not_change_the_recorded_run() -> None:
    run = paying_agent().run("pay 900")
    paused = await ra.collect_final(run)
    recorded_json = completed(run).model_dump_json()

    paused.messages.approve("big", arguments={"amount": 500})

    # The caller's copy changed; the run's record did not, for anyone.
    assert paused.messages.find_tool_call("big").status is ra.ToolCallStatus.APPROVED
    record = completed(run)
    assert record.model_dump_json() == recorded_json
    assert record.messages.find_tool_call("big").status is ra.ToolCallStatus.PENDING
    assert record.messages.find_tool_call("big").arguments == '{"amount": 900}'
    assert record.pending == paused.pending == (record.messages.find_tool_call("big"),)
    late: list[ra.AgentEvent] = []
    run.subscribe(late.append)
    assert late == list(run.events) and late[-1].run.model_dump_json() == recorded_json
    # Every way to get the result gives a copy of its own, as recorded.
    again = await ra.collect_final(run)
    assert again.messages.find_tool_call("big").status is ra.ToolCallStatus.PENDING
    assert again.messages is not paused.messages and again == record
    assert run.result().messages.pending == record.messages.pending

    resumed = ra.Agent(ra.ScriptedProvider([["Moved 500."]]), tools=[transfer])
    result = await ra.collect_final(resumed.run(paused.messages))
    assert result.text == "Moved 500."
    assert completed(run).model_dump_json() == recorded_json


async def test_a_record_refuses_changes_and_says_to_copy() -> None:
    run = paying_agent().run("pay 900")
    await ra.collect_final(run)
    record = completed(run).messages
    assert record.read_only and not (await ra.collect_final(run)).messages.read_only

    with pytest.raises(ra.ApprovalError, match=r"record of a run.*\.copy\(\)"):
        record.approve("big")
    with pytest.raises(ra.ApprovalError, match=r"record of a run.*\.copy\(\)"):
        record.reject("big", "no")
    with pytest.raises(TypeError, match=r"record of a run.*\.copy\(\)"):
        record.append(ra.UserMessage(content="hello"))
    with pytest.raises(TypeError, match=r"record of a run.*\.copy\(\)"):
        record.extend([ra.UserMessage(content="hello")])
    with pytest.raises(TypeError, match=r"record of a run.*\.copy\(\)"):
        del record.root[-1]
    with pytest.raises(TypeError, match=r"record of a run.*\.copy\(\)"):
        record.root.append(record[0])
    assert record.pending[0].status is ra.ToolCallStatus.PENDING

    mine = record.copy()
    mine.approve("big")
    mine.append(ra.ToolMessage(tool_call_id="big", content="done by hand"))
    assert not mine.read_only and len(record) == 2 and len(mine) == 3
    # Building a run from a record copies it: the record is never the run's input.
    added = record + [ra.UserMessage(content="x")]  # noqa: RUF005 (the + is what is tested)
    assert not added.read_only
    assert ra.Conversation.of(record).read_only is False


async def test_records_survive_json_copies_and_pickles() -> None:
    run = paying_agent().run("pay 900")
    await ra.collect_final(run)
    record = completed(run)
    started = run.events[0]
    assert isinstance(started, RunStarted) and started.input.read_only

    for same in (
        events.loads(events.dumps(run.events[-1])).run,  # type: ignore[union-attr]
        ra.AgentRun.model_validate_json(record.model_dump_json()),
        ra.AgentRun.model_validate(record.model_dump()),
        record.model_copy(),
        record.model_copy(deep=True),
        copy.copy(record),
        copy.deepcopy(record),
        pickle.loads(pickle.dumps(record)),
    ):
        assert same == record and same.messages.read_only
        assert same.messages.to_openai() == record.messages.to_openai()
    assert events.from_jsonl(events.to_jsonl(run.events)) == list(run.events)
    # A conversation you build is yours until a run records it.
    fresh = ra.AgentRun(messages=ra.Conversation.of("hi"))
    assert fresh.messages.read_only and ra.AgentRun().messages.read_only
    mine = ra.Conversation.of("hi")
    ra.AgentRun(messages=mine)
    mine.append(ra.UserMessage(content="still mine"))


async def test_every_way_to_the_result_gives_a_writable_copy() -> None:
    agent = paying_agent()
    from_ops = await rx.just("pay 900").pipe(agent.operator(), ops.collect_final())
    assert isinstance(from_ops, ra.AgentRun)
    from_ops.messages.approve("big")

    run = paying_agent().run("pay 900")
    from_result = await asyncio.to_thread(run.result, 5)
    from_result.messages.approve("big")
    assert completed(run).messages.pending  # still pending in the record

    from_sync = await asyncio.to_thread(paying_agent().run_sync, "pay 900")
    from_sync.messages.reject("big", "no")


async def test_a_failed_runs_partial_is_a_record_too() -> None:
    @ra.tool
    def explode() -> str:
        """Fails."""
        raise RuntimeError("boom")

    agent = ra.Agent(
        ra.ScriptedProvider([["Trying. ", s.call("explode")]]),
        tools=[explode],
        join=ra.JoinPolicy.FAIL_FAST,
    )
    run = agent.run("go")
    with pytest.raises(ra.AgentError) as raised:
        await ra.collect_final(run)
    partial = raised.value.partial
    assert partial is not None and partial.messages.read_only
    with pytest.raises(TypeError, match=r"\.copy\(\)"):
        partial.messages.append(ra.UserMessage(content="retry"))
    # Going on from a failure: a copy, or simply a new list.
    retry = [*partial.messages, ra.UserMessage(content="try again")]
    assert ra.Conversation.of(retry)[-1].content == "try again"
    outcomes = [e.outcome for e in run.events if isinstance(e, StepCompleted)]
    assert all(isinstance(o.messages, tuple) for o in outcomes)  # already immutable
