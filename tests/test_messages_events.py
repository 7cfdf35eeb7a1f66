"""Conversations and events: OpenAI wire conversion and JSON round trips."""

from __future__ import annotations

import json

import pytest

import rxagent as ra
from rxagent import scripted as s
from rxagent.events import from_jsonl, to_jsonl


def sample_conversation() -> ra.Conversation:
    return ra.Conversation.of(
        [
            ra.SystemMessage(content="sys"),
            ra.UserMessage(content="weather?"),
            ra.AssistantMessage(
                content=None,
                tool_calls=(
                    ra.ToolCall(
                        id="c1",
                        name="w",
                        arguments='{"city": "Paris"}',
                        status=ra.ToolCallStatus.COMPLETED,
                    ),
                ),
            ),
            ra.ToolMessage(tool_call_id="c1", content='{"t": 21}'),
            ra.AssistantMessage(content="21 degrees."),
        ]
    )


def test_conversation_to_openai_and_back() -> None:
    convo = sample_conversation()
    wire = convo.to_openai()
    assert wire[2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "w", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    assert wire[3] == {"role": "tool", "tool_call_id": "c1", "content": '{"t": 21}'}
    assert ra.Conversation.from_openai(wire) == convo
    # OpenAI dicts are accepted as a run's input too.
    assert ra.Conversation.of(wire) == convo


def test_conversation_json_round_trip_keeps_statuses() -> None:
    convo = sample_conversation()
    text = convo.to_json()
    assert json.loads(text)[2]["tool_calls"][0]["status"] == "completed"
    assert ra.Conversation.from_json(text) == convo


def test_conversation_behaves_like_a_list() -> None:
    convo = sample_conversation()
    assert len(convo) == 5 and convo[1].content == "weather?"
    assert convo.find_tool_call("c1") is not None and convo.find_tool_call("zz") is None
    convo.append(ra.UserMessage(content="thanks"))
    assert [m.role for m in convo][-2:] == ["assistant", "user"]
    assert convo.last_assistant == ra.AssistantMessage(content="21 degrees.")


def test_bad_input_is_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match="a run's input is a str"):
        ra.Conversation.of(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsupported message role"):
        ra.Conversation.of([{"role": "wizard", "content": "x"}])


def test_usage_adds_up() -> None:
    total = ra.Usage(prompt_tokens=3, completion_tokens=4) + ra.Usage(prompt_tokens=1)
    assert (total.prompt_tokens, total.completion_tokens, total.total_tokens) == (4, 4, 8)


@ra.tool
def double(x: int) -> int:
    """Double."""
    return 2 * x


async def test_a_runs_events_round_trip_through_json_lines() -> None:
    provider = ra.ScriptedProvider(
        [
            [s.reasoning("think"), "Doubling. ", s.call("double", {"x": 2}), s.usage(5, 3)],
            [s.structured({"answer": 4}), "4"],
        ]
    )
    run = ra.Agent(provider, tools=[double]).run("double 2")
    await ra.collect_final(run)
    events = list(run.events)
    kinds = {e.type for e in events}
    assert {
        "reasoning_delta",
        "tool_args_delta",
        "tool_call_started",
        "tool_call_ended",
        "usage_delta",
        "structured",
        "step_completed",
        "run_completed",
    } <= kinds

    lines = to_jsonl(events)
    assert lines.count("\n") == len(events)
    assert all(json.loads(line)["type"] for line in lines.splitlines())
    assert from_jsonl(lines) == events


def test_failures_round_trip_as_run_failed() -> None:
    failed = ra.events.RunFailed(
        step=2,
        error_type="ToolError",
        message="boom",
        partial=ra.AgentRun(stop=ra.StopReason.ERROR),
    )
    assert ra.events.loads(ra.events.dumps(failed)) == failed


def test_events_are_frozen() -> None:
    event = ra.events.TextDelta(step=1, text="a")
    with pytest.raises(Exception, match="frozen"):
        event.text = "b"  # type: ignore[misc]
