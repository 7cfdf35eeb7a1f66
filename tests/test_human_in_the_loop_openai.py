"""The approval and structured-output paths through OpenAIProvider and the real SDK,
against the loopback server (with the pytest fixtures users get)."""

from __future__ import annotations

import itertools
import json

from pydantic import BaseModel

import rxagent as ra
from rxagent import approval
from rxagent import testing as t
from rxagent.events import Paused, Structured, ToolCallEnded
from rxagent.output import grows
from rxagent.providers.openai import OpenAIProvider


class City(BaseModel):
    name: str
    country: str
    population_millions: float


async def test_pause_approve_resume_over_http(
    loopback_server: t.LoopbackServer, loopback_provider: OpenAIProvider
) -> None:
    sent: list[int] = []

    @ra.tool(
        approval=lambda r: (
            approval.require_approval() if r.arguments["amount"] > 100 else approval.EXECUTE
        )
    )
    def transfer(amount: int) -> str:
        """Move money."""
        sent.append(amount)
        return f"moved {amount}"

    loopback_server.push(
        [
            t.call("transfer", {"amount": 5}, id="small"),
            t.call("transfer", {"amount": 500}, id="big"),
        ],
        ["Both moved."],
    )
    agent = ra.Agent(loopback_provider, tools=[transfer])
    first = agent.run("move 5 and 500")
    paused = await ra.collect_final(first)
    assert paused.stop is ra.StopReason.PAUSED and sent == [5]
    assert [e.reason.awaiting_approval for e in first.events if isinstance(e, Paused)] == [("big",)]
    assert len(loopback_server.requests) == 1

    resumed_conversation = ra.Conversation.from_json(paused.messages.to_json())
    resumed_conversation.approve("big", arguments={"amount": 400})
    run = agent.run(resumed_conversation)
    result = await ra.collect_final(run)

    assert sent == [5, 400] and result.text == "Both moved."
    assert [e.call_id for e in run.events if isinstance(e, ToolCallEnded)] == ["big"]
    # The server got the whole turn back, tool messages in call order, edited arguments.
    second = loopback_server.requests[1].messages
    assert [m.get("tool_call_id") for m in second if m["role"] == "tool"] == ["small", "big"]
    calls = second[1]["tool_calls"]
    assert json.loads(calls[1]["function"]["arguments"]) == {"amount": 400}
    assert ra.validate_conversation(result.messages) == []


async def test_rejection_over_http(
    loopback_server: t.LoopbackServer, loopback_provider: OpenAIProvider
) -> None:
    @ra.tool(approval=approval.require_approval())
    def wipe() -> str:
        """Wipe everything."""
        raise AssertionError("a rejected call never runs")

    loopback_server.push([t.call("wipe", id="w")], ["I will not wipe."])
    agent = ra.Agent(loopback_provider, tools=[wipe])
    paused = await ra.collect_final(agent.run("wipe it"))
    paused.messages.reject("w", "never on a Friday")
    result = await ra.collect_final(agent.run(paused.messages))
    assert result.text == "I will not wipe."
    refusal = loopback_server.requests[1].messages[-1]
    assert refusal == {
        "role": "tool",
        "tool_call_id": "w",
        "content": "Rejected: never on a Friday",
    }


async def test_structured_output_over_http(
    loopback_server: t.LoopbackServer, loopback_provider: OpenAIProvider
) -> None:
    answer = {"name": "Paris", "country": "France", "population_millions": 2.1}
    text = json.dumps(answer)
    loopback_server.push(
        ['{"name": "Paris"'],  # cut short: not a City; the model is asked again
        [text[i : i + 4] for i in range(0, len(text), 4)],
    )
    run = ra.Agent(loopback_provider, output_type=City).run("The capital of France?")
    result = await ra.collect_final(run)

    assert result.output == City(**answer)
    first = loopback_server.requests[0]
    response_format = first.options["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["strict"] is True
    assert response_format["json_schema"]["schema"]["required"] == [
        "name",
        "country",
        "population_millions",
    ]
    feedback = loopback_server.requests[1].messages[-1]
    assert feedback["role"] == "user" and "does not fit" in feedback["content"]
    partial = [
        e.value for e in run.events if isinstance(e, Structured) and e.partial and e.step == 2
    ]
    assert partial and partial[-1] == answer
    assert all(grows(a, b) for a, b in itertools.pairwise(partial))
    assert result.last_message is not None and result.last_message.structured == (answer,)
