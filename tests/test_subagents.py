"""Agents as tools (nested events, usage roll-up, cancellation both ways) and handoffs."""

from __future__ import annotations

import asyncio
import io

import pytest
from pydantic import BaseModel

import rxagent as ra
from rxagent import _terminal, approval, live
from rxagent import scripted as s
from rxagent.events import Handoff, RunCompleted, TextDelta, ToolCallEnded, ToolProgress
from rxagent.state import fold


@ra.tool
def lookup(city: str) -> str:
    """Facts about a city."""
    return f"{city} has 2 million people"


def researcher(*script: list[object]) -> ra.Agent:
    return ra.Agent(
        ra.ScriptedProvider(list(script)),
        tools=[lookup],
        name="researcher",
        instructions="Research carefully.",
    )


async def test_a_sub_agents_events_stream_through_the_parent_as_they_happen() -> None:
    sub = researcher(
        [s.call("lookup", {"city": "Paris"}), s.usage(10, 5)],
        ["Paris: ", "2 million.", s.usage(20, 4)],
    )
    parent = ra.Agent(
        ra.ScriptedProvider(
            [
                [s.call("researcher", {"input": "How big is Paris?"}, id="r1"), s.usage(7, 3)],
                ["It has 2 million people.", s.usage(30, 6)],
            ]
        ),
        tools=[sub.as_tool()],
        name="boss",
    )
    run = parent.run("Tell me about Paris")
    seen: list[str] = []

    def watch(event: ra.AgentEvent) -> None:
        if isinstance(event, ToolProgress) and event.event is not None:
            seen.append(f"{event.depth}:{event.event.type}")
        elif isinstance(event, ToolCallEnded):
            seen.append(f"0:end {event.name}")

    run.subscribe(watch)
    result = await ra.collect_final(run)

    nested = [e for e in run.events if isinstance(e, ToolProgress) and e.event is not None]
    inner = [e.event for e in nested]
    # The whole sub-run, typed, in order, before the call's end; depth 1, its own events.
    assert inner[0].type == "run_started" and isinstance(inner[-1], RunCompleted)
    assert inner[-1].run.text == "Paris: 2 million."
    assert {e.depth for e in nested} == {1} and all(e.call_id == "r1" for e in nested)
    assert seen.index("1:run_completed") < seen.index("0:end researcher")
    texts = [e.text for e in inner if isinstance(e, TextDelta)]
    assert texts == ["Paris: ", "2 million."]
    # The sub-agent's tool ran inside it, and its answer is the call's output.
    (end,) = [e for e in run.events if isinstance(e, ToolCallEnded)]
    assert end.output == "Paris: 2 million." and result.text == "It has 2 million people."
    # Its tokens roll up: 7+3 + 30+6 (parent) + 10+5 + 20+4 (sub-agent).
    assert result.usage == ra.Usage(prompt_tokens=67, completion_tokens=18)
    assert ra.validate_conversation(result.messages) == []
    # Rebuilt from the events alone (as JSON), the state says the same, nested included.
    events = ra.events.from_jsonl(ra.events.to_jsonl(run.events))
    assert fold(events).result == result


async def test_sub_agent_tokens_count_against_the_parents_budget() -> None:
    sub = researcher([s.usage(500, 500), "Lots of research."])
    parent = ra.Agent(
        ra.ScriptedProvider(
            [[s.call("researcher", {"input": "dig"})], [s.call("researcher", {"input": "more"})]]
        ),
        tools=[sub.as_tool()],
        policy=ra.policies.max_tokens(800) | ra.policies.max_steps(5),
    )
    result = await ra.collect_final(parent.run("go"))
    assert result.stop is ra.StopReason.TOKEN_BUDGET and result.steps == 1


async def test_nested_two_levels_reports_the_depth() -> None:
    inner = researcher(["deep fact"])
    middle = ra.Agent(
        ra.ScriptedProvider([[s.call("researcher", {"input": "dig"})], ["middle says: deep"]]),
        tools=[inner.as_tool()],
        name="middle",
    )
    top = ra.Agent(
        ra.ScriptedProvider([[s.call("middle", {"input": "ask"})], ["top says: deep"]]),
        tools=[middle.as_tool()],
    )
    run = top.run("go")
    result = await ra.collect_final(run)
    depths = {
        e.depth: e.innermost.type
        for e in run.events
        if isinstance(e, ToolProgress) and e.innermost and e.innermost.type == "text_delta"
    }
    assert depths == {1: "text_delta", 2: "text_delta"}
    assert result.text == "top says: deep"


async def test_cancelling_the_parent_cancels_the_sub_run() -> None:
    sub = researcher(["thinking...", s.hang()])
    parent = ra.Agent(
        ra.ScriptedProvider([[s.call("researcher", {"input": "dig"})]]), tools=[sub.as_tool()]
    )
    run = parent.run("go")

    def cancel_when_the_sub_agent_speaks(event: ra.AgentEvent) -> None:
        if isinstance(event, ToolProgress) and isinstance(event.event, TextDelta):
            run.cancel()

    run.subscribe(cancel_when_the_sub_agent_speaks)
    result = await asyncio.wait_for(ra.collect_final(run), 5)
    assert result.stop is ra.StopReason.CANCELLED
    (call,) = result.messages.tool_calls()
    assert call.status is ra.ToolCallStatus.CANCELLED
    assert ra.validate_conversation(result.messages) == []


async def test_a_sub_run_that_is_cancelled_cancels_the_parent_step() -> None:
    # Someone cancels the sub-agent's run (the test keeps a handle on it by wrapping
    # Agent.run): the parent's step is cancelled with it, and the parent's run too.
    sub = ra.Agent(ra.ScriptedProvider([["on it", s.hang()]]), name="worker")
    sub_tool = sub.as_tool()
    parent = ra.Agent(
        ra.ScriptedProvider([[s.call("worker", {"input": "go"})], ["never"]]), tools=[sub_tool]
    )
    run = parent.run("go")
    runs: list[ra.Run] = []
    original = sub.run

    def tracked(input: ra.messages.ConversationInput) -> ra.Run:
        sub_run = original(input)
        runs.append(sub_run)
        return sub_run

    sub.run = tracked  # type: ignore[method-assign]

    def cancel_the_sub_run(event: ra.AgentEvent) -> None:
        if isinstance(event, ToolProgress) and isinstance(event.event, TextDelta):
            runs[0].cancel()

    run.subscribe(cancel_the_sub_run)
    result = await asyncio.wait_for(ra.collect_final(run), 5)
    assert result.stop is ra.StopReason.CANCELLED and result.steps == 1
    assert ra.validate_conversation(result.messages) == []


async def test_a_sub_agent_that_pauses_is_refused_with_a_clear_error() -> None:
    @ra.tool(approval=approval.require_approval("large"))
    def pay(amount: int) -> str:
        """Pay."""
        return "paid"

    sub = ra.Agent(ra.ScriptedProvider([[s.call("pay", {"amount": 5}, id="p1")]]), tools=[pay])
    parent = ra.Agent(
        ra.ScriptedProvider([[s.call("payer", {"input": "pay 5"})], ["I could not pay."]]),
        tools=[sub.as_tool(name="payer")],
    )
    run = parent.run("go")
    result = await ra.collect_final(run)
    (end,) = [e for e in run.events if isinstance(e, ToolCallEnded)]
    assert end.error is not None and "paused for approval of pay (p1)" in end.error
    assert "not supported" in end.error and result.text == "I could not pay."


async def test_structured_sub_agent_output_is_the_tools_output() -> None:
    class Fact(BaseModel):
        city: str
        people: int

    sub = ra.Agent(
        ra.ScriptedProvider([['{"city": "Oslo", "people": 700000}']]),
        output_type=Fact,
        name="facts",
    )
    parent = ra.Agent(
        ra.ScriptedProvider([[s.call("facts", {"input": "Oslo"})], ["Oslo: 700k."]]),
        tools=[sub.as_tool()],
    )
    run = parent.run("go")
    await ra.collect_final(run)
    (end,) = [e for e in run.events if isinstance(e, ToolCallEnded)]
    assert end.output == {"city": "Oslo", "people": 700000}


def test_as_tool_needs_a_name() -> None:
    with pytest.raises(ValueError, match="needs a name"):
        ra.Agent(ra.ScriptedProvider([])).as_tool()
    with pytest.raises(ValueError, match="named agent"):
        ra.handoff(ra.Agent(ra.ScriptedProvider([])))


async def test_a_handoff_gives_the_rest_of_the_run_to_another_agent() -> None:
    @ra.tool
    def refund(order: str) -> str:
        """Refund an order."""
        return f"refunded {order}"

    billing_provider = ra.ScriptedProvider(
        [[s.call("refund", {"order": "A1"}, id="f1")], ["Refunded A1."]]
    )
    billing = ra.Agent(
        billing_provider, tools=[refund], name="billing", instructions="You do billing."
    )
    triage_provider = ra.ScriptedProvider(
        [["Passing you on. ", s.call("transfer_to_billing", id="h1")]]
    )
    triage = ra.Agent(
        triage_provider,
        tools=[ra.handoff(billing)],
        name="triage",
        instructions="You route requests.",
        policy=ra.policies.until_no_tool_calls() | ra.policies.max_steps(3),
    )
    run = triage.run("Refund order A1")
    result = await ra.collect_final(run)

    (moved,) = [e for e in run.events if isinstance(e, Handoff)]
    assert (moved.from_agent, moved.to_agent, moved.call_id) == ("triage", "billing", "h1")
    kinds = [e.type for e in run.events]
    assert kinds.index("handoff") == kinds.index("step_completed") + 1
    assert result.text == "Refunded A1." and result.steps == 3
    # The billing agent got the whole conversation, with its own instructions and tools.
    first_billing = billing_provider.requests[0]
    assert first_billing.messages[0] == ra.SystemMessage(content="You do billing.")
    assert [t.name for t in first_billing.tools] == ["refund"]
    assert any(
        isinstance(m, ra.ToolMessage) and m.content == "Transferred to the billing agent."
        for m in first_billing.messages
    )
    assert ra.validate_conversation(result.messages) == []
    state = fold(run.events)
    assert state.agent == "billing" and state.result == result


async def test_a_tool_that_reports_its_other_side_cancelled_cancels_the_run() -> None:
    @ra.tool
    async def remote() -> str:
        """A call whose other side went away."""
        raise ra.ToolCancelled("the remote job was cancelled")

    provider = ra.ScriptedProvider([[s.call("remote", id="x")], ["never asked"]])
    result = await ra.collect_final(ra.Agent(provider, tools=[remote]).run("go"))
    assert result.stop is ra.StopReason.CANCELLED and provider.calls == 1
    (call,) = result.messages.tool_calls()
    assert call.status is ra.ToolCallStatus.CANCELLED
    assert ra.validate_conversation(result.messages) == []


async def test_budgets_count_across_a_handoff() -> None:
    @ra.tool
    def noop() -> str:
        """Nothing."""
        return "ok"

    looping = ra.Agent(
        ra.ScriptedProvider(lambda request: [s.call("noop")]), tools=[noop], name="looper"
    )
    first = ra.Agent(
        ra.ScriptedProvider([[s.call("transfer_to_looper")]]),
        tools=[ra.handoff(looping)],
        policy=ra.policies.max_steps(4),
    )
    result = await ra.collect_final(first.run("go"))
    assert result.stop is ra.StopReason.MAX_STEPS and result.steps == 4


async def test_the_terminal_and_the_display_show_a_sub_agent_under_its_call() -> None:
    sub = researcher([s.call("lookup", {"city": "Rome"})], ["Rome: 3 million."])
    parent = ra.Agent(
        ra.ScriptedProvider([[s.call("researcher", {"input": "Rome?"})], ["Big."]]),
        tools=[sub.as_tool()],
    )
    out = io.StringIO()
    view = _terminal.PlainView(out, color=False)
    run = parent.run("go")
    run.subscribe(view.on_event)
    await ra.collect_final(run)
    lines = out.getvalue().splitlines()
    # Indented under the researcher's call: its own call, then its answer.
    nested_call = lines.index("        ok lookup -> Rome has 2 million people")
    nested_text = lines.index("        researcher: Rome: 3 million.")
    ended = next(i for i, line in enumerate(lines) if line.startswith("  ok researcher"))
    assert nested_call < nested_text < ended

    text = live.render_text(run.state)
    assert "      ↳ researcher · completed: Rome: 3 million." in text
    assert "        lookup(" in text and "Rome has 2 million people" in text
    assert 'data-nested-for="call_1_1"' in live.render_html(run.state)


def test_the_web_state_carries_the_nested_run() -> None:
    from rxagent.web.native import state_json

    sub = researcher(["Rome: 3 million."])
    parent = ra.Agent(
        ra.ScriptedProvider([[s.call("researcher", {"input": "Rome?"})], ["Big."]]),
        tools=[sub.as_tool()],
        name="writer",
    )
    run = parent.run("go")
    run.result(timeout=5)
    data = state_json(run.state)
    (call,) = data["calls"]
    assert data["current_agent"] == "writer" and call["nested"]["text"] == "Rome: 3 million."
    assert call["nested"]["status"] == "completed"
    assert call["nested"]["current_agent"] == "researcher"


async def test_a_run_paused_after_a_handoff_resumes_on_the_agent_it_was_handed_to() -> None:
    # The README's advice for approvals in another agent: hand off; its approvals then
    # pause the run itself, and resuming goes on with that agent, not the first.
    done: list[str] = []

    @ra.tool(approval=approval.require_approval("money"))
    def refund(order: str) -> str:
        """Refund an order."""
        done.append(order)
        return f"refunded {order}"

    billing = ra.Agent(
        ra.ScriptedProvider([[s.call("refund", {"order": "A1"}, id="r1")], ["Refunded."]]),
        tools=[refund],
        name="billing",
    )
    triage = ra.Agent(
        ra.ScriptedProvider([[s.call("transfer_to_billing", id="h1")]]),
        tools=[ra.handoff(billing)],
        name="triage",
    )
    paused = await ra.collect_final(triage.run("refund A1"))
    assert paused.stop is ra.StopReason.PAUSED and [c.id for c in paused.pending] == ["r1"]
    assert triage.handed_off_to(paused.messages) is billing

    decided = paused.messages.copy()
    decided.approve("r1")
    resumed = triage.run(decided)  # the first agent, as a caller (or a hub) would
    result = await ra.collect_final(resumed)
    assert result.text == "Refunded." and done == ["A1"]
    started = resumed.events[0]
    assert isinstance(started, ra.events.RunStarted) and started.agent == "billing"

    # The same through the web hub: it resumes a paused run with the agent it started.
    from rxagent.web import CallDecision, LocalHub

    billing2 = ra.Agent(
        ra.ScriptedProvider([[s.call("refund", {"order": "B2"}, id="r2")], ["Refunded B2."]]),
        tools=[refund],
        name="billing",
    )
    triage2 = ra.Agent(
        ra.ScriptedProvider([[s.call("transfer_to_billing", id="h2")]]),
        tools=[ra.handoff(billing2)],
        name="triage",
    )
    hub = LocalHub({"triage": triage2})
    try:
        run_id = await hub.start("triage", "refund B2")
        async for _ in hub.events(run_id, stop_at_pause=True):
            pass
        state = await hub.state(run_id)
        assert state.status is ra.RunStatus.PAUSED and state.agent == "billing"
        await hub.decide(run_id, [CallDecision(call_id="r2", decision="approve")])
        async for _ in hub.events(run_id):
            pass
        final = await hub.state(run_id)
        assert final.status is ra.RunStatus.COMPLETED and done == ["A1", "B2"]
    finally:
        await hub.close()
