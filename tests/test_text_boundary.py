"""Text that cannot be encoded (lone surrogates) is made sendable where it enters a
conversation: messages, tool outputs and errors, edited arguments."""

from __future__ import annotations

import json
import os

import pytest

import rxagent as ra
from rxagent import approval, events
from rxagent import scripted as s
from rxagent import testing as t
from rxagent.events import ToolCallEnded, ToolCallStarted
from rxagent.providers.openai import OpenAIProvider

# What os.listdir gives for a Latin-1 file name on a UTF-8 system: 'café' with the
# undecodable byte 0xE9 kept as the lone surrogate U+DCE9.
LATIN1_NAME = os.fsdecode(b"caf\xe9.txt")


def test_the_fixture_is_a_lone_surrogate() -> None:
    assert LATIN1_NAME == "caf\udce9.txt"
    with pytest.raises(UnicodeEncodeError):
        LATIN1_NAME.encode("utf-8")


async def test_a_run_with_lone_surrogates_completes_over_http(
    loopback_server: t.LoopbackServer, loopback_provider: OpenAIProvider
) -> None:
    @ra.tool
    def list_files() -> list[str]:
        """The files here."""
        return [LATIN1_NAME, "ok.txt"]

    @ra.tool
    def read_name() -> str:
        """A file's name, as text."""
        return f"found {LATIN1_NAME}"

    @ra.tool
    def open_file() -> str:
        """Fails naming the file."""
        raise FileNotFoundError(f"no such file: {LATIN1_NAME}")

    loopback_server.push(
        [t.call("list_files", id="a"), t.call("read_name", id="b"), t.call("open_file", id="c")],
        ["Two files, one unreadable."],
        ["Still fine."],
    )
    agent = ra.Agent(loopback_provider, tools=[list_files, read_name, open_file])
    run = agent.run(f"What is {LATIN1_NAME}?")
    result = await ra.collect_final(run)

    assert result.text == "Two files, one unreadable."
    user, _, listed, named, failed = loopback_server.requests[1].messages
    assert user["content"] == "What is caf\ufffd.txt?"
    assert json.loads(listed["content"]) == ["caf\ufffd.txt", "ok.txt"]
    assert named["content"] == "found caf\ufffd.txt"
    assert (
        failed["content"]
        == "Error: tool 'open_file' raised FileNotFoundError: no such file: caf\ufffd.txt"
    )
    ends = {e.call_id: e for e in run.events if isinstance(e, ToolCallEnded)}
    assert ends["a"].output == ["caf\ufffd.txt", "ok.txt"] and "caf\ufffd" in ends["c"].error
    # The run's events serialise (JSON lines, SSE) and read back the same.
    assert events.from_jsonl(events.to_jsonl(run.events)) == list(run.events)
    assert ra.validate_conversation(result.messages) == []

    # The conversation stays sendable: the next run on it works too.
    again = await ra.collect_final(agent.run([*result.messages, ra.UserMessage(content="ok?")]))
    assert again.text == "Still fine."


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("caf\udce9", "caf\ufffd"),
        ("\udce9\udce9", "\ufffd\ufffd"),
        ("\ud83d", "\ufffd"),  # half of a pair
        ("\ud83d\ude00", "\U0001f600"),  # a whole pair, as two code points, is the emoji
        ("plain ascii", "plain ascii"),
        ("d\u00e9j\u00e0 vu \u2713", "d\u00e9j\u00e0 vu \u2713"),
    ],
)
def test_every_message_field_is_made_sendable(raw: str, clean: str) -> None:
    call = ra.ToolCall(id="c1", name="t", arguments='{"p": "' + raw + '"}')
    messages = [
        ra.SystemMessage(content=raw),
        ra.UserMessage(content=raw),
        ra.UserMessage(content=({"type": "text", "text": raw},)),
        ra.AssistantMessage(
            content=raw, reasoning=raw, tool_calls=(call,), structured=({raw: [raw]},)
        ),
        ra.ToolMessage(tool_call_id="c1", content=raw),
    ]
    system, user, parts, assistant, tool = messages
    assert system.content == user.content == assistant.content == tool.content == clean
    assert parts.content == ({"type": "text", "text": clean},)
    assert assistant.reasoning == clean and assistant.structured == ({clean: [clean]},)
    assert assistant.tool_calls[0].arguments.endswith(clean + '"}')
    conversation = ra.Conversation.of(messages)
    conversation.to_json().encode("utf-8")  # no UnicodeEncodeError
    json.dumps(conversation.to_openai(), ensure_ascii=False).encode("utf-8")


def test_openai_dicts_and_errors_are_made_sendable() -> None:
    conversation = ra.Conversation.from_openai(
        [{"role": "user", "content": "caf\udce9"}, {"role": "assistant", "content": "\udce9"}]
    )
    assert [m.content for m in conversation] == ["caf\ufffd", "\ufffd"]
    error = ra.ToolError("no such file: caf\udce9", call_id="c", tool_name="t")
    assert error.message == str(error) == "no such file: caf\ufffd"
    assert ra.ProviderError("bad \udce9").message == "bad \ufffd"


async def test_edited_arguments_and_model_arguments_are_made_sendable() -> None:
    seen: list[str] = []

    @ra.tool(approval=approval.require_approval())
    def delete(path: str) -> str:
        """Delete a file."""
        seen.append(path)
        return f"deleted {path}"

    provider = ra.ScriptedProvider(
        [
            # The model's own arguments may hold an escaped lone surrogate too.
            [s.call("delete", '{"path": "a\\udce9"}', id="c1")],
            ["Deleted."],
        ]
    )
    agent = ra.Agent(provider, tools=[delete])
    run = agent.run("clean up")
    paused = await ra.collect_final(run)
    (pending,) = [e for e in run.events if e.type == "tool_call_pending"]
    assert pending.arguments == {"path": "a\ufffd"}
    paused.messages.approve("c1", arguments={"path": LATIN1_NAME})
    resumed = agent.run(paused.messages)
    result = await ra.collect_final(resumed)
    assert seen == ["caf\ufffd.txt"]
    (started,) = [e for e in resumed.events if isinstance(e, ToolCallStarted)]
    assert started.arguments == {"path": "caf\ufffd.txt"}
    assert events.from_jsonl(events.to_jsonl(resumed.events)) == list(resumed.events)
    assert result.text == "Deleted."

    # Edited arguments given as text with a raw lone surrogate are cleaned as well.
    other = ra.Agent(
        ra.ScriptedProvider([[s.call("delete", {"path": "b"}, id="c1")]]), tools=[delete]
    )
    messages = (await ra.collect_final(other.run("clean up"))).messages
    messages.approve("c1", arguments='{"path": "b\udce9"}')
    assert messages.find_tool_call("c1").arguments == '{"path": "b\ufffd"}'


async def test_a_structured_answer_with_an_escaped_lone_surrogate_is_made_sendable() -> None:
    provider = ra.ScriptedProvider([['{"city": "caf\\udce9"}']])
    run = ra.Agent(provider, output_type=dict[str, str]).run("Where?")
    result = await ra.collect_final(run)
    assert result.output == {"city": "caf\ufffd"}
    assert result.last_message is not None
    assert result.last_message.structured == ({"city": "caf\ufffd"},)
    assert events.from_jsonl(events.to_jsonl(run.events)) == list(run.events)
