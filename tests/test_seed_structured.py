"""The structured-event test cases of chat-rs's streaming loop, ported."""

from __future__ import annotations

import rxagent as ra
from rxagent import scripted as s
from rxagent.events import (
    RunCompleted,
    RunStarted,
    StepCompleted,
    StepStarted,
    Structured,
    TextDelta,
)
from tests.helpers import collect


async def run_events(turn: list[s.ScriptItem]) -> list[ra.AgentEvent]:
    agent = ra.Agent(ra.ScriptedProvider([turn]), policy=ra.policies.max_steps(1))
    got = await collect(agent.run("go"))
    assert got.completed
    return got.events


def without_bookkeeping(events: list[ra.AgentEvent]) -> list[ra.AgentEvent]:
    return [e for e in events if not isinstance(e, RunStarted | StepStarted | StepCompleted)]


async def test_structured_events_reach_the_consumer_and_the_final_response() -> None:
    events = await run_events([s.structured({"step": 1}), s.structured({"step": 2})])
    body = without_bookkeeping(events)

    assert len(body) == 3
    assert isinstance(body[0], Structured) and body[0].value == {"step": 1}
    assert isinstance(body[1], Structured) and body[1].value == {"step": 2}
    assert isinstance(body[2], RunCompleted)
    final = body[2].run.last_message
    assert final is not None
    assert final.structured == ({"step": 1}, {"step": 2})


async def test_structured_interleaved_with_text_keeps_event_order() -> None:
    events = await run_events(
        ["hello ", s.structured({"step": 1}), "world", s.structured({"step": 2})]
    )
    body = without_bookkeeping(events)

    assert len(body) == 5
    assert isinstance(body[0], TextDelta) and body[0].text == "hello "
    assert isinstance(body[1], Structured) and body[1].value == {"step": 1}
    assert isinstance(body[2], TextDelta) and body[2].text == "world"
    assert isinstance(body[3], Structured) and body[3].value == {"step": 2}
    final = body[4].run.last_message
    assert final.structured == ({"step": 1}, {"step": 2})
    assert final.content == "hello world"


async def test_no_structured_events_leave_the_final_response_untouched() -> None:
    events = await run_events(["just text"])
    body = without_bookkeeping(events)

    assert len(body) == 2
    final = body[1].run.last_message
    assert final.structured == ()
    assert final.content == "just text"
    assert final == ra.AssistantMessage(content="just text")


async def test_partial_structured_snapshots_stream_but_only_final_values_fold_in() -> None:
    events = await run_events(
        [s.structured({"a": 1}, partial=True), s.structured({"a": 1, "b": 2})]
    )
    snapshots = [e for e in events if isinstance(e, Structured)]
    assert [e.partial for e in snapshots] == [True, False]
    assert events[-1].run.last_message.structured == ({"a": 1, "b": 2},)
