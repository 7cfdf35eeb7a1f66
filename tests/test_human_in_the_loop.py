"""Human in the loop: approval strategies, pause, resolve, resume, and every misuse."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import rxagent as ra
from rxagent import approval
from rxagent import scripted as s
from rxagent.events import (
    Paused,
    RunCompleted,
    StepCompleted,
    ToolCallEnded,
    ToolCallPending,
    ToolCallStarted,
)


class Bank:
    """A tool that records every transfer it really makes."""

    def __init__(self, strategy: approval.Strategy | approval.Decision | None = None) -> None:
        self.transfers: list[int] = []

        def transfer(amount: int, to: str = "savings") -> str:
            """Move money."""
            self.transfers.append(amount)
            return f"moved {amount} to {to}"

        self.tool = ra.tool(transfer, approval=strategy)


def guard(request: approval.ApprovalRequest) -> approval.Decision:
    """Large transfers need a human."""
    if request.arguments["amount"] > 100:
        return approval.require_approval(f"{request.name} of {request.arguments['amount']}")
    return approval.EXECUTE


def types(run: ra.Run) -> list[str]:
    return [e.type for e in run.events]


async def test_a_call_that_needs_approval_pauses_the_run_and_resumes_once_approved() -> None:
    bank = Bank(guard)
    provider = ra.ScriptedProvider(
        [[s.call("transfer", {"amount": 500}, id="big")], ["Done: moved 500."]]
    )
    agent = ra.Agent(provider, tools=[bank.tool])

    first = agent.run("move 500")
    paused = await ra.collect_final(first)
    assert paused.stop is ra.StopReason.PAUSED and bank.transfers == []
    assert [c.id for c in paused.pending] == ["big"]
    assert paused.pending[0].reason == "transfer of 500"
    assert types(first)[-4:] == ["tool_call_pending", "step_completed", "paused", "run_completed"]
    (pause,) = [e for e in first.events if isinstance(e, Paused)]
    assert pause.reason.kind == "awaiting_approval" and pause.reason.awaiting_approval == ("big",)
    assert ra.validate_conversation(paused.messages) == []  # a paused conversation is valid

    paused.messages.approve("big")
    second = agent.run(paused.messages)
    result = await ra.collect_final(second)

    assert bank.transfers == [500]
    assert result.stop is ra.StopReason.NO_TOOL_CALLS and result.text == "Done: moved 500."
    # The approved call runs first, before the next provider turn.
    assert types(second)[:4] == [
        "run_started",
        "step_started",
        "tool_call_started",
        "tool_call_ended",
    ]
    sent = provider.requests[1].messages
    assert sent[-1] == ra.ToolMessage(tool_call_id="big", content="moved 500 to savings")
    assert result.messages.find_tool_call("big").status is ra.ToolCallStatus.COMPLETED
    assert ra.validate_conversation(result.messages) == []


async def test_a_rejected_call_never_runs_and_the_model_reads_the_refusal() -> None:
    bank = Bank(approval.require_approval())
    provider = ra.ScriptedProvider([[s.call("transfer", {"amount": 5}, id="c1")], ["Understood."]])
    agent = ra.Agent(provider, tools=[bank.tool])
    paused = await ra.collect_final(agent.run("move 5"))

    paused.messages.reject("c1", "not today")
    run = agent.run(paused.messages)
    result = await ra.collect_final(run)

    assert bank.transfers == []
    (end,) = [e for e in run.events if isinstance(e, ToolCallEnded)]
    assert end.status is ra.ToolCallStatus.REJECTED and end.error == "Rejected: not today"
    assert not [e for e in run.events if isinstance(e, ToolCallStarted)]
    refusal = provider.requests[1].messages[-1]
    assert refusal == ra.ToolMessage(
        tool_call_id="c1", content="Rejected: not today", is_error=True
    )
    call = result.messages.find_tool_call("c1")
    assert call.status is ra.ToolCallStatus.REJECTED and call.reason == "not today"
    assert ra.validate_conversation(result.messages) == []


async def test_approval_with_edited_arguments() -> None:
    bank = Bank(approval.require_approval())
    provider = ra.ScriptedProvider(
        [[s.call("transfer", {"amount": 900}, id="c1")], ["Moved what you allowed."]]
    )
    agent = ra.Agent(provider, tools=[bank.tool])
    paused = await ra.collect_final(agent.run("move 900"))

    paused.messages.approve("c1", arguments={"amount": 90, "to": "checking"})
    result = await ra.collect_final(agent.run(paused.messages))

    assert bank.transfers == [90]
    call = result.messages.find_tool_call("c1")
    assert call.parsed_arguments() == {"amount": 90, "to": "checking"}
    assert call.original_arguments == '{"amount": 900}'
    assert provider.requests[1].messages[-1].content == "moved 90 to checking"


async def test_a_strategy_can_refuse_outright_and_that_is_not_a_failure() -> None:
    bank = Bank(lambda request: approval.reject("transfers are disabled"))
    provider = ra.ScriptedProvider([[s.call("transfer", {"amount": 1})], ["OK, I won't."]])
    agent = ra.Agent(provider, tools=[bank.tool], join=ra.JoinPolicy.FAIL_FAST)
    run = agent.run("move 1")
    result = await ra.collect_final(run)  # FAIL_FAST does not count a refusal as a failure
    assert bank.transfers == [] and result.text == "OK, I won't."
    (end,) = [e for e in run.events if isinstance(e, ToolCallEnded)]
    assert end.status is ra.ToolCallStatus.REJECTED


async def test_deferral_waits_for_its_time() -> None:
    bank = Bank(lambda request: approval.defer(timedelta(seconds=1), "after the cut-off"))
    provider = ra.ScriptedProvider([[s.call("transfer", {"amount": 7}, id="c1")], ["Done."]])
    agent = ra.Agent(provider, tools=[bank.tool])
    first = agent.run("move 7 later")
    paused = await ra.collect_final(first)
    (pause,) = [e for e in first.events if isinstance(e, Paused)]
    assert pause.reason.kind == "scheduled" and set(pause.reason.scheduled) == {"c1"}
    due = pause.reason.scheduled["c1"]
    assert due > time.time()

    # Resumed too early: nothing runs, the run pauses again, no provider call is made.
    early = agent.run(paused.messages)
    again = await ra.collect_final(early)
    assert again.stop is ra.StopReason.PAUSED and bank.transfers == [] and provider.calls == 1
    assert [e.type for e in early.events if isinstance(e, ToolCallPending)] == ["tool_call_pending"]

    await asyncio.sleep(max(0.0, due - time.time()) + 0.02)  # wait for the schedule itself
    result = await ra.collect_final(agent.run(again.messages))
    assert bank.transfers == [7] and result.text == "Done."


async def test_mixed_pause_and_auto_executed_siblings() -> None:
    ran: list[str] = []

    @ra.tool(approval=approval.require_approval())
    def delete(path: str) -> str:
        """Delete a file."""
        ran.append(f"delete {path}")
        return "deleted"

    @ra.tool(approval=approval.defer(time.time() + 3600))
    def backup() -> str:
        """Back up tonight."""
        ran.append("backup")
        return "backed up"

    @ra.tool
    async def inspect_disk() -> str:
        """Slow, runs at once."""
        await asyncio.sleep(0.05)
        ran.append("inspect")
        return "ok"

    provider = ra.ScriptedProvider(
        [
            [
                s.call("delete", {"path": "/tmp/x"}, id="d"),
                s.call("inspect_disk", id="i"),
                s.call("backup", id="b"),
            ],
            ["All done."],
        ]
    )
    agent = ra.Agent(provider, tools=[delete, backup, inspect_disk])
    run = agent.run("clean up")
    paused = await ra.collect_final(run)

    # The sibling that may run ran to its end before the pause.
    assert ran == ["inspect"]
    kinds = [(e.type, getattr(e, "call_id", "")) for e in run.events]
    assert kinds.index(("tool_call_ended", "i")) < kinds.index(("paused", ""))
    (pause,) = [e for e in run.events if isinstance(e, Paused)]
    assert pause.reason.kind == "mixed"
    assert pause.reason.awaiting_approval == ("d",) and set(pause.reason.scheduled) == {"b"}
    assert [c.id for c in paused.pending] == ["d", "b"]
    assert ra.validate_conversation(paused.messages) == []

    paused.messages.approve("d")
    paused.messages.approve("b")  # a deferred call may be approved early
    resumed = agent.run(paused.messages)
    result = await ra.collect_final(resumed)
    assert ran == ["inspect", "delete /tmp/x", "backup"]
    assert [e.call_id for e in resumed.events if isinstance(e, ToolCallEnded)] == ["d", "b"]
    # Tool messages stay in call order, though "i" was answered before the pause.
    answered = [m.tool_call_id for m in result.messages if isinstance(m, ra.ToolMessage)]
    assert answered == ["d", "i", "b"]
    assert ra.validate_conversation(result.messages) == []


async def test_a_pause_on_the_second_of_three_steps() -> None:
    bank = Bank(guard)
    provider = ra.ScriptedProvider(
        [
            [s.call("transfer", {"amount": 10}, id="small")],
            ["Now the big one. ", s.call("transfer", {"amount": 1000}, id="big")],
            ["Both done."],
        ]
    )
    agent = ra.Agent(provider, tools=[bank.tool])
    first = agent.run("two transfers")
    paused = await ra.collect_final(first)
    assert paused.steps == 2 and paused.stop is ra.StopReason.PAUSED
    assert bank.transfers == [10] and provider.calls == 2

    paused.messages.approve("big")
    resumed = agent.run(paused.messages)
    result = await ra.collect_final(resumed)
    assert bank.transfers == [10, 1000] and provider.calls == 3
    assert result.steps == 1 and result.text == "Both done."
    assert [e.step for e in resumed.events if isinstance(e, StepCompleted)] == [1]
    assert ra.validate_conversation(result.messages) == []


async def test_resume_after_a_json_round_trip_in_a_fresh_agent(tmp_path: Path) -> None:
    bank = Bank(guard)
    provider = ra.ScriptedProvider([[s.call("transfer", {"amount": 250}, id="c9")]])
    paused = await ra.collect_final(ra.Agent(provider, tools=[bank.tool]).run("move 250"))
    saved = tmp_path / "paused.json"
    saved.write_text(paused.messages.to_json())

    # Later, in another process: a fresh agent, the conversation loaded from disk.
    fresh_bank = Bank(guard)
    fresh_provider = ra.ScriptedProvider([["Moved 250."]])
    agent = ra.Agent(fresh_provider, tools=[fresh_bank.tool])
    loaded = ra.Conversation.from_json(saved.read_text())
    assert [c.id for c in loaded.pending] == ["c9"]
    loaded.approve("c9")
    result = await ra.collect_final(agent.run(loaded))

    assert bank.transfers == [] and fresh_bank.transfers == [250]
    assert result.text == "Moved 250."
    assert ra.validate_conversation(result.messages) == []


async def paused_run(bank: Bank) -> ra.AgentRun:
    provider = ra.ScriptedProvider(
        [[s.call("transfer", {"amount": 500}, id="big"), s.call("transfer", {"amount": 1})]]
    )
    return await ra.collect_final(ra.Agent(provider, tools=[bank.tool]).run("go"))


async def test_misuse_is_a_clear_error() -> None:
    bank = Bank(guard)
    paused = await paused_run(bank)
    messages = paused.messages
    agent = ra.Agent(ra.ScriptedProvider([["ok"]]), tools=[bank.tool])

    with pytest.raises(
        ra.ApprovalError, match=r"the model made no such call.*can be decided: big\)"
    ):
        messages.approve("invented")
    with pytest.raises(ra.ApprovalError, match="is completed and not waiting"):
        messages.approve("call_1_2")  # the small transfer already ran
    with pytest.raises(ra.ApprovalError, match="is completed and not waiting"):
        messages.reject("call_1_2")
    with pytest.raises(ra.ApprovalError, match="not JSON"):
        (await paused_run(Bank(guard))).messages.approve("big", arguments="{oops")

    edited = (await paused_run(Bank(guard))).messages
    edited.approve("big", arguments={"amount": "lots"})
    with pytest.raises(ra.ApprovalError, match=r"do not fit tool 'transfer'.*amount"):
        agent.run(edited)

    added = (await paused_run(Bank(guard))).messages
    added.append(ra.UserMessage(content="hello?"))
    with pytest.raises(ra.ApprovalError, match="messages follow tool calls"):
        agent.run(added)

    assert bank.transfers == [1]  # nothing ran but the one call that needed no approval


async def test_rejected_and_failed_calls_never_run_on_resume() -> None:
    attempts: list[str] = []

    @ra.tool(approval=approval.require_approval())
    def risky(name: str) -> str:
        """Risky."""
        attempts.append(name)
        raise RuntimeError("broken")

    provider = ra.ScriptedProvider(
        [
            [s.call("risky", {"name": "a"}, id="a"), s.call("risky", {"name": "b"}, id="b")],
            ["one failed, one refused"],
            ["still fine"],
        ]
    )
    agent = ra.Agent(provider, tools=[risky])
    paused = await ra.collect_final(agent.run("go"))
    paused.messages.approve("a")
    paused.messages.reject("b")
    done = await ra.collect_final(agent.run(paused.messages))
    assert attempts == ["a"]
    statuses = {c.id: c.status for c in done.messages.tool_calls()}
    assert statuses == {"a": ra.ToolCallStatus.FAILED, "b": ra.ToolCallStatus.REJECTED}

    # Resuming the finished conversation again runs nothing again.
    done.messages.append(ra.UserMessage(content="and now?"))
    again = await ra.collect_final(agent.run(done.messages))
    assert attempts == ["a"] and again.text == "still fine"
    assert ra.validate_conversation(again.messages) == []


async def test_two_observers_on_a_paused_then_resumed_run() -> None:
    bank = Bank(guard)
    provider = ra.ScriptedProvider([[s.call("transfer", {"amount": 500}, id="big")], ["Done."]])
    agent = ra.Agent(provider, tools=[bank.tool])
    logs: list[list[ra.AgentEvent]] = [[], []]
    first = agent.run("go")
    for log in logs:
        first.subscribe(log.append)
    paused = await ra.collect_final(first)
    assert logs[0] == logs[1] == list(first.events)
    assert isinstance(logs[0][-2], Paused) and isinstance(logs[0][-1], RunCompleted)

    paused.messages.approve("big")
    second = agent.run(paused.messages)
    resumed_logs: list[list[ra.AgentEvent]] = [[], []]
    for log in resumed_logs:
        second.subscribe(log.append)
    await ra.collect_final(second)
    assert resumed_logs[0] == resumed_logs[1] == list(second.events)
    assert provider.calls == 2 and bank.transfers == [500]


async def test_toolsets_share_a_strategy_and_own_their_names() -> None:
    seen: list[approval.ApprovalRequest] = []

    def ask_for_writes(request: approval.ApprovalRequest) -> approval.Decision:
        seen.append(request)
        return approval.require_approval() if request.metadata.get("writes") else approval.EXECUTE

    @ra.tool(metadata={"writes": True})
    def write_file(path: str) -> str:
        """Write."""
        return "written"

    @ra.tool
    def read_file(path: str) -> str:
        """Read."""
        return "content"

    @ra.tool(approval=approval.EXECUTE, metadata={"writes": True})
    def touch(path: str) -> str:
        """Its own strategy wins over its group's."""
        return "touched"

    files = ra.Toolset([write_file, read_file, touch], approval=ask_for_writes, name="files")
    provider = ra.ScriptedProvider(
        [
            [
                s.call("read_file", {"path": "a"}, id="r"),
                s.call("write_file", {"path": "a"}, id="w"),
                s.call("touch", {"path": "a"}, id="t"),
                s.call("format_disk", id="x"),
            ]
        ]
    )
    run = ra.Agent(provider, tools=[files]).run("go")
    paused = await ra.collect_final(run)
    assert [c.id for c in paused.pending] == ["w"]
    assert [(r.name, r.arguments, dict(r.metadata)) for r in seen] == [
        ("read_file", {"path": "a"}, {}),
        ("write_file", {"path": "a"}, {"writes": True}),
    ]
    ends = {e.call_id: e for e in run.events if isinstance(e, ToolCallEnded)}
    assert ends["t"].output == "touched"
    assert "unknown tool 'format_disk'" in ends["x"].error  # no group owns it: told to the model

    other = ra.Toolset([ra.tool(read_file.fn)], name="other")
    with pytest.raises(
        ValueError, match="'read_file' \\(in toolset 'files' and toolset 'other'\\)"
    ):
        ra.Agent(provider, tools=[files, other])


async def test_a_strategy_that_raises_fails_that_call_only() -> None:
    def broken(request: approval.ApprovalRequest) -> approval.Decision:
        raise KeyError("policy table missing")

    bank = Bank(broken)
    provider = ra.ScriptedProvider([[s.call("transfer", {"amount": 1})], ["Sorry."]])
    run = ra.Agent(provider, tools=[bank.tool]).run("go")
    await ra.collect_final(run)
    (end,) = [e for e in run.events if isinstance(e, ToolCallEnded)]
    assert end.status is ra.ToolCallStatus.FAILED
    # The tool never ran: the strategy is to blame, not the tool.
    assert end.error == (
        "the approval strategy of tool 'transfer' raised KeyError: 'policy table missing'"
    )
    assert bank.transfers == []


async def test_cancelling_a_resumed_run_keeps_the_conversation_valid() -> None:
    started = asyncio.Event()

    @ra.tool(approval=approval.require_approval())
    async def slow() -> str:
        """Slow."""
        started.set()
        await asyncio.Event().wait()
        return "never"

    provider = ra.ScriptedProvider([[s.call("slow", id="c1")]])
    agent = ra.Agent(provider, tools=[slow])
    paused = await ra.collect_final(agent.run("go"))
    paused.messages.approve("c1")
    run = agent.run(paused.messages)
    final = asyncio.ensure_future(ra.collect_final(run))
    await asyncio.wait_for(started.wait(), 5)
    run.cancel()
    result = await final
    assert result.stop is ra.StopReason.CANCELLED
    assert result.messages.find_tool_call("c1").status is ra.ToolCallStatus.CANCELLED
    assert ra.validate_conversation(result.messages) == []


async def test_a_cancelled_run_leaves_no_call_waiting() -> None:
    started = asyncio.Event()

    @ra.tool(approval=approval.require_approval())
    def guarded() -> str:
        """Needs a human."""
        return "never"

    @ra.tool
    async def slow() -> str:
        """Runs at once, slowly."""
        started.set()
        await asyncio.Event().wait()
        return "never"

    provider = ra.ScriptedProvider([[s.call("guarded", id="g"), s.call("slow", id="s")], ["ok"]])
    agent = ra.Agent(provider, tools=[guarded, slow])
    run = agent.run("go")
    final = asyncio.ensure_future(ra.collect_final(run))
    await asyncio.wait_for(started.wait(), 5)
    run.cancel()
    result = await final
    assert result.stop is ra.StopReason.CANCELLED and result.pending == ()
    statuses = {c.id: c.status for c in result.messages.tool_calls()}
    assert statuses == {"g": ra.ToolCallStatus.CANCELLED, "s": ra.ToolCallStatus.CANCELLED}
    strict = ra.ValidationPolicy(allow_pending_tool_calls=False)
    assert ra.validate_conversation(result.messages, strict) == []
    # The conversation goes on as usual.
    again = await ra.collect_final(agent.run([*result.messages, ra.UserMessage(content="and?")]))
    assert again.text == "ok"


def test_only_the_waiting_calls_of_the_last_turn_can_be_decided() -> None:
    waiting = ra.ToolCall(id="old", name="t", status=ra.ToolCallStatus.PENDING)
    conversation = ra.Conversation.of(
        [
            ra.UserMessage(content="q"),
            ra.AssistantMessage(tool_calls=(waiting,)),
            ra.ToolMessage(tool_call_id="old", content="answered by hand"),
            ra.AssistantMessage(
                tool_calls=(ra.ToolCall(id="new", name="t", status=ra.ToolCallStatus.PENDING),)
            ),
        ]
    )
    with pytest.raises(ra.ApprovalError, match=r"'old'.*not waiting in the last turn.*new"):
        conversation.approve("old")
    conversation.approve("new")
    assert conversation.find_tool_call("new").status is ra.ToolCallStatus.APPROVED


async def test_until_a_call_has_run_a_new_decision_replaces_the_old_one() -> None:
    bank = Bank(guard)
    provider = ra.ScriptedProvider([[s.call("transfer", {"amount": 500}, id="big")], ["Done."]])
    agent = ra.Agent(provider, tools=[bank.tool])
    messages = (await ra.collect_final(agent.run("move 500"))).messages

    # A bad edit is refused when the run would start ...
    messages.approve("big", arguments={"amount": "lots"})
    with pytest.raises(ra.ApprovalError, match=r"do not fit tool 'transfer'.*amount"):
        agent.run(messages)
    # ... and can be taken back: approve again with other arguments, or reject.
    messages.approve("big", arguments={"amount": 50, "to": "checking"})
    call = messages.find_tool_call("big")
    assert call.parsed_arguments() == {"amount": 50, "to": "checking"}
    assert call.original_arguments == '{"amount": 500}'  # the model's, not the bad edit
    messages.reject("big", "changed my mind")
    call = messages.find_tool_call("big")
    assert call.status is ra.ToolCallStatus.REJECTED and call.reason == "changed my mind"
    assert call.arguments == '{"amount": 500}' and call.original_arguments is None
    messages.approve("big")  # as the model asked, after all
    call = messages.find_tool_call("big")
    assert call.status is ra.ToolCallStatus.APPROVED and call.reason is None
    assert call.arguments == '{"amount": 500}' and call.original_arguments is None
    assert messages.pending == []

    result = await ra.collect_final(agent.run(messages))
    assert bank.transfers == [500] and result.text == "Done."
    # Once it has run, its decision is final.
    with pytest.raises(ra.ApprovalError, match="'big': it is completed and not waiting"):
        result.messages.approve("big")
    with pytest.raises(ra.ApprovalError, match="'big': it is completed and not waiting"):
        result.messages.reject("big")


async def test_a_pause_stored_in_openai_format_resumes() -> None:
    bank = Bank(guard)
    provider = ra.ScriptedProvider(
        [
            [
                s.call("transfer", {"amount": 5}, id="small"),
                s.call("transfer", {"amount": 500}, id="big"),
                s.call("transfer", {"amount": 700}, id="bigger"),
            ],
            ["Moved 5 and 400; refused 700."],
        ]
    )
    agent = ra.Agent(provider, tools=[bank.tool])
    paused = await ra.collect_final(agent.run("move 5, 500 and 700"))
    assert bank.transfers == [5]

    stored = json.dumps(paused.messages.to_openai())  # the OpenAI format, as JSON
    wire = json.loads(stored)
    assert ra.validate_conversation(wire) == []  # waiting calls: valid, as before storing
    loaded = ra.Conversation.from_openai(wire)
    assert [c.id for c in loaded.pending] == ["big", "bigger"] == [c.id for c in paused.pending]
    assert loaded.find_tool_call("small").status is ra.ToolCallStatus.COMPLETED
    loaded.approve("big", arguments={"amount": 400})
    loaded.reject("bigger", "too much")
    result = await ra.collect_final(agent.run(loaded))

    assert bank.transfers == [5, 400] and result.text == "Moved 5 and 400; refused 700."
    assert ra.validate_conversation(result.messages) == []
    # Plain OpenAI dicts as a run's input resume the same way.
    assert [c.id for c in ra.Conversation.of(wire).pending] == ["big", "bigger"]


def test_only_unanswered_calls_at_the_end_of_openai_messages_are_pending() -> None:
    def assistant(*ids: str) -> dict[str, Any]:
        calls = [
            {"id": i, "type": "function", "function": {"name": "t", "arguments": "{}"}} for i in ids
        ]
        return {"role": "assistant", "content": None, "tool_calls": calls}

    def answer(call_id: str) -> dict[str, Any]:
        return {"role": "tool", "tool_call_id": call_id, "content": "ok"}

    history = ra.Conversation.from_openai(
        [{"role": "user", "content": "q"}, assistant("a", "b"), answer("a"), answer("b")]
    )
    assert [c.status for c in history.tool_calls()] == [ra.ToolCallStatus.COMPLETED] * 2
    half = ra.Conversation.from_openai(
        [{"role": "user", "content": "q"}, assistant("a", "b"), answer("a")]
    )
    assert {c.id: c.status for c in half.tool_calls()} == {
        "a": ra.ToolCallStatus.COMPLETED,
        "b": ra.ToolCallStatus.PENDING,
    }
    # A call left without an answer before the conversation went on is not waiting: it is
    # a broken history, which validation reports.
    broken = [{"role": "user", "content": "q"}, assistant("a"), {"role": "user", "content": "?"}]
    loaded = ra.Conversation.from_openai(broken)
    assert loaded.find_tool_call("a").status is ra.ToolCallStatus.COMPLETED
    assert [v.code for v in ra.validate_conversation(broken)] == [
        ra.ViolationCode.MISSING_TOOL_RESPONSES
    ]
    # A status given explicitly (rxagent's own extension of the format) is kept.
    explicit = assistant("a")
    explicit["tool_calls"][0]["status"] = "approved"
    loaded = ra.Conversation.from_openai([{"role": "user", "content": "q"}, explicit])
    assert loaded.find_tool_call("a").status is ra.ToolCallStatus.APPROVED
