"""The encoders on their own (no app): native SSE, AI SDK UI message chunks, AG-UI events,
and the protocol endpoints that take useChat's and AG-UI's requests (over real HTTP)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx
import pytest
from ag_ui import core as agui
from pydantic import TypeAdapter
from reactivex import from_iterable
from reactivex import operators as rx_ops

import rxagent as ra
from rxagent import events as ev
from rxagent import scripted as s
from rxagent.ops import materialize
from rxagent.state import fold
from rxagent.web import CallDecision, ServerThread, ai_sdk, create_app, native
from rxagent.web import agui as agui_enc
from tests.web_support import bank_agent, read_stream, sse_messages, transfer


async def run_events(agent: ra.Agent, input: Any) -> list[ev.AgentEvent]:
    run = agent.run(input)
    with contextlib.suppress(ra.AgentError):
        await ra.collect_final(run)
    out: list[ev.AgentEvent] = []
    run.pipe(materialize()).subscribe(out.append)
    return out


async def paused_and_resumed(
    decision: str = "approve", **options: Any
) -> tuple[list[ev.AgentEvent], list[ev.AgentEvent]]:
    agent = bank_agent(**options)
    first = await run_events(agent, "pay")
    last = first[-1]
    assert isinstance(last, ev.RunCompleted)
    conversation = last.run.messages.copy()
    if decision == "approve":
        conversation.approve("call_pay")
    else:
        conversation.reject("call_pay", "no way")
    return first, await run_events(agent, conversation)


# -- native --------------------------------------------------------------------------------
async def test_the_native_operator_numbers_events_and_round_trips_them() -> None:
    first, _ = await paused_and_resumed()
    frames: list[str] = []
    from_iterable(first).pipe(native.sse_events(start=10)).subscribe(frames.append)
    messages = list(sse_messages(iter("".join(frames).split("\n"))))
    assert [m.id for m in messages] == [str(10 + i) for i in range(len(first))]
    assert [m.event for m in messages] == [e.type for e in first]
    assert [m.agent_event() for m in messages] == first
    assert native.comment("two\nlines") == ": two\n: lines\n\n"
    state = native.state_json(fold(first))
    assert json.loads(json.dumps(state)) == state  # plain JSON data
    assert state["status"] == "paused" and state["pending"][0]["id"] == "call_pay"


# -- AI SDK --------------------------------------------------------------------------------
async def test_a_run_as_ui_message_chunks() -> None:
    first, rest = await paused_and_resumed()
    chunks = ai_sdk.encode(first, run_id="R")
    assert chunks == [
        {"type": "start", "messageMetadata": {"runId": "R"}},
        {"type": "start-step"},
        {"type": "text-start", "id": "text-2"},
        {"type": "text-delta", "id": "text-2", "delta": "Adding first. "},
        {"type": "text-end", "id": "text-2"},
        {"type": "tool-input-start", "toolCallId": "call_add", "toolName": "add"},
        {"type": "tool-input-delta", "toolCallId": "call_add", "inputTextDelta": '{"a": 2,'},
        {"type": "tool-input-delta", "toolCallId": "call_add", "inputTextDelta": ' "b": 3}'},
        {
            "type": "tool-input-available",
            "toolCallId": "call_add",
            "toolName": "add",
            "input": {"a": 2, "b": 3},
        },
        {"type": "tool-input-start", "toolCallId": "call_pay", "toolName": "transfer"},
        {"type": "tool-input-delta", "toolCallId": "call_pay", "inputTextDelta": '{"amount": 5,'},
        {"type": "tool-input-delta", "toolCallId": "call_pay", "inputTextDelta": ' "to": "ana"}'},
        {"type": "tool-output-available", "toolCallId": "call_add", "output": 5},
        {
            "type": "tool-input-available",
            "toolCallId": "call_pay",
            "toolName": "transfer",
            "input": {"amount": 5, "to": "ana"},
        },
        {"type": "tool-approval-request", "approvalId": "R:call_pay", "toolCallId": "call_pay"},
        {"type": "finish-step"},
        {
            "type": "finish",
            "finishReason": "tool-calls",
            "messageMetadata": {
                "usage": {"inputTokens": 30, "outputTokens": 12, "totalTokens": 42},
                "stop": "paused",
                "runId": "R",
            },
        },
    ]
    # The resumed segment: the approved call's output joins its step (the client has the
    # call); the model's turn is a step of its own.
    resumed = ai_sdk.encode(rest, run_id="R")
    assert [c["type"] for c in resumed] == [
        "start",
        "tool-output-available",
        "start-step",
        "text-start",
        "text-delta",
        "text-delta",
        "text-end",
        "finish-step",
        "finish",
    ]
    assert resumed[1] == {
        "type": "tool-output-available",
        "toolCallId": "call_pay",
        "output": "sent 5 to ana",
    }


async def test_a_human_refusal_is_denied_and_a_strategys_is_an_error() -> None:
    _, rest = await paused_and_resumed("reject")
    assert {"type": "tool-output-denied", "toolCallId": "call_pay"} in ai_sdk.encode(rest)

    refuse = ra.tool(transfer.fn, name="transfer", approval=ra.approval.reject("never"))
    agent = ra.Agent(
        ra.ScriptedProvider([[s.call("transfer", {"amount": 1, "to": "x"}, id="t")], ["ok"]]),
        tools=[refuse],
    )
    chunks = ai_sdk.encode(await run_events(agent, "pay"))
    errors = [c for c in chunks if c["type"].startswith("tool-output")]
    assert errors == [
        {"type": "tool-output-error", "toolCallId": "t", "errorText": "Rejected: never"}
    ]


async def test_failures_cancellation_progress_and_reasoning() -> None:
    @ra.tool
    async def slow(n: int) -> Any:
        """Streams its progress."""
        for i in range(n):
            yield {"done": i}
        yield "finished"

    agent = ra.Agent(
        ra.ScriptedProvider(
            [
                [s.reasoning("Hmm. "), s.call("slow", {"n": 2}, id="p")],
                [s.fail(ra.ProviderError("down"))],
            ]
        ),
        tools=[slow],
    )
    chunks = ai_sdk.encode(await run_events(agent, "go"))
    kinds = [c["type"] for c in chunks]
    assert kinds[:4] == ["start", "start-step", "reasoning-start", "reasoning-delta"]
    progress = [c for c in chunks if c["type"] == "data-tool-progress"]
    assert [c["data"] for c in progress] == [
        {"toolCallId": "p", "data": {"done": 0}},
        {"toolCallId": "p", "data": {"done": 1}},
    ]
    assert all(c["id"] == "p" for c in progress)  # one part, updated in place
    assert {"type": "error", "errorText": "ProviderError: down"} in chunks
    assert chunks[-1]["finishReason"] == "error"

    cancelled = ai_sdk.encode(
        [
            ev.RunStarted(step=1),
            ev.RunCompleted(step=1, run=ra.AgentRun(stop=ra.StopReason.CANCELLED)),
        ]
    )
    assert [c["type"] for c in cancelled] == ["start", "abort", "finish"]


async def test_without_approval_chunks_for_ai_sdk_5() -> None:
    first, _ = await paused_and_resumed()
    chunks = ai_sdk.encode(first, run_id="R", approvals=False)
    assert not [c for c in chunks if c["type"] == "tool-approval-request"]
    asked = [c for c in chunks if c["type"] == "data-tool-approval"]
    assert asked == [
        {
            "type": "data-tool-approval",
            "id": "call_pay",
            "data": {
                "toolCallId": "call_pay",
                "approvalId": "R:call_pay",
                "reason": "transfers need a human",
            },
        }
    ]


async def test_the_operator_ends_with_finish() -> None:
    first, _ = await paused_and_resumed()
    from reactivex import from_iterable

    out: list[dict[str, Any]] = []
    from_iterable(first).pipe(ai_sdk.ui_message_chunks(run_id="R"), rx_ops.to_list()).subscribe(
        out.extend
    )
    assert out == ai_sdk.encode(first, run_id="R")


def ui_messages() -> list[dict[str, Any]]:
    """useChat's messages after a paused run whose transfer the user approved."""
    return [
        {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Pay Ana."}]},
        {
            "id": "a1",
            "role": "assistant",
            "parts": [
                {"type": "step-start"},
                {"type": "reasoning", "text": "ok", "state": "done"},
                {"type": "text", "text": "Adding first. ", "state": "done"},
                {
                    "type": "tool-add",
                    "toolCallId": "call_add",
                    "state": "output-available",
                    "input": {"a": 2, "b": 3},
                    "output": 5,
                },
                {
                    "type": "tool-transfer",
                    "toolCallId": "call_pay",
                    "state": "approval-responded",
                    "input": {"amount": 5, "to": "ana"},
                    "approval": {"id": "RUN:call_pay", "approved": True},
                },
                {
                    "type": "dynamic-tool",
                    "toolName": "explode",
                    "toolCallId": "x",
                    "state": "output-error",
                    "input": {},
                    "errorText": "boom",
                },
            ],
        },
    ]


def test_usechat_messages_as_a_conversation_and_decisions() -> None:
    messages = ui_messages()
    assert ai_sdk.approval_decisions(messages) == ("RUN", [CallDecision("call_pay", "approve")])
    assert ai_sdk.approval_decisions(messages[:1]) is None
    conversation = ai_sdk.conversation_from_ui_messages(messages)
    assert ra.validate_conversation(conversation) == []
    user, assistant, *answers = conversation
    assert user == ra.UserMessage(content="Pay Ana.")
    assert isinstance(assistant, ra.AssistantMessage) and assistant.content == "Adding first. "
    assert [(c.id, c.name, c.status.value) for c in assistant.tool_calls] == [
        ("call_add", "add", "completed"),
        ("call_pay", "transfer", "cancelled"),  # never decided in this history
        ("x", "explode", "failed"),
    ]
    assert [a.content for a in answers] == [
        "5",
        "Cancelled: the call was stopped before it finished.",
        "Error: boom",
    ]
    with pytest.raises(ValueError, match="unsupported UIMessage role"):
        ai_sdk.conversation_from_ui_messages([{"role": "robot", "parts": []}])


# -- AG-UI ---------------------------------------------------------------------------------
EVENT = TypeAdapter(agui.Event)


def check_agui_order(items: list[agui.BaseEvent]) -> None:
    """AG-UI's sequencing: runs open and close, text and tool calls inside them."""
    open_run = False
    texts: set[str] = set()
    calls: set[str] = set()
    for item in items:
        kind = item.type.value
        if kind == "RUN_STARTED":
            assert not open_run
            open_run = True
            continue
        assert open_run, kind
        if kind in ("RUN_FINISHED", "RUN_ERROR"):
            assert not texts and not calls
            open_run = False
        elif kind == "TEXT_MESSAGE_START":
            texts.add(item.message_id)  # type: ignore[attr-defined]
        elif kind == "TEXT_MESSAGE_CONTENT":
            assert item.message_id in texts  # type: ignore[attr-defined]
        elif kind == "TEXT_MESSAGE_END":
            texts.remove(item.message_id)  # type: ignore[attr-defined]
        elif kind == "TOOL_CALL_START":
            calls.add(item.tool_call_id)  # type: ignore[attr-defined]
        elif kind == "TOOL_CALL_ARGS":
            assert item.tool_call_id in calls  # type: ignore[attr-defined]
        elif kind == "TOOL_CALL_END":
            calls.remove(item.tool_call_id)  # type: ignore[attr-defined]
    assert not open_run


async def test_a_run_as_agui_events() -> None:
    first, rest = await paused_and_resumed()
    items = agui_enc.encode(first + rest, thread_id="T", run_id="R")
    check_agui_order(items)
    for item in items:  # what goes over the wire reads back as the same AG-UI event
        assert EVENT.validate_json(agui_enc.wire(item)) == item
    finished = [i for i in items if isinstance(i, agui.RunFinishedEvent)]
    assert [f.run_id for f in finished] == ["R", "R.1"]
    outcome = finished[0].outcome
    assert isinstance(outcome, agui.RunFinishedInterruptOutcome)
    (interrupt,) = outcome.interrupts
    assert (interrupt.id, interrupt.tool_call_id, interrupt.reason) == (
        "R:call_pay",
        "call_pay",
        "tool_approval",
    )
    assert interrupt.response_schema == agui_enc.DECISION_SCHEMA
    assert finished[1].result == {
        "text": "Added 5 and paid Ana.",
        "stop": "no_tool_calls",
        "output": None,
    }
    results = {i.tool_call_id: i.content for i in items if isinstance(i, agui.ToolCallResultEvent)}
    assert results == {"call_add": "5", "call_pay": "sent 5 to ana"}
    starts = [i.tool_call_id for i in items if isinstance(i, agui.ToolCallStartEvent)]
    assert starts == ["call_add", "call_pay"]  # the resumed call is not started again


def test_agui_input_as_a_conversation_and_decisions() -> None:
    data = {
        "threadId": "T",
        "runId": "R2",
        "messages": [
            {"id": "1", "role": "developer", "content": "Be terse."},
            {"id": "2", "role": "user", "content": "Pay."},
            {
                "id": "3",
                "role": "assistant",
                "toolCalls": [
                    {
                        "id": "c",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a":1,"b":1}'},
                    }
                ],
            },
            {"id": "4", "role": "tool", "toolCallId": "c", "content": "2"},
        ],
        "resume": [
            {
                "interruptId": "RUN:c1",
                "status": "resolved",
                "payload": {"approved": True, "arguments": {"amount": 1, "to": "x"}},
            },
            {
                "interruptId": "RUN:c2",
                "status": "resolved",
                "payload": {"approved": False, "reason": "no"},
            },
            {"interruptId": "RUN:c3", "status": "cancelled"},
        ],
    }
    body = agui.RunAgentInput.model_validate(data)
    conversation = agui_enc.conversation_from_agui(body.messages)
    assert ra.validate_conversation(conversation) == []
    assert [m.role for m in conversation] == ["system", "user", "assistant", "tool"]
    run_id, decisions = agui_enc.resume_decisions(body.resume or [])
    assert run_id == "RUN"
    assert decisions == [
        CallDecision("c1", "approve", {"amount": 1, "to": "x"}),
        CallDecision("c2", "reject", reason="no"),
        CallDecision("c3", "reject", reason="The user cancelled this call."),
    ]
    with pytest.raises(ValueError, match="needs a payload"):
        agui_enc.resume_decisions([agui.ResumeEntry(interrupt_id="RUN:c", status="resolved")])
    with pytest.raises(ValueError, match="one run"):
        agui_enc.resume_decisions(
            [agui.ResumeEntry(interrupt_id=f"{r}:c", status="cancelled") for r in ("A", "B")]
        )


# -- the protocol endpoints over HTTP -------------------------------------------------------
def test_the_agui_endpoint_runs_interrupts_and_resumes() -> None:
    with (
        ServerThread(create_app({"bank": bank_agent()})) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        body = {
            "threadId": "T",
            "runId": "R1",
            "messages": [{"id": "1", "role": "user", "content": "Pay Ana."}],
        }
        with client.stream("POST", "/ag-ui", json=body) as response:
            assert response.status_code == 200
            items = [EVENT.validate_json(m.data) for m in sse_messages(response.iter_lines())]
        check_agui_order(items)
        assert (items[0].thread_id, items[0].run_id) == ("T", "R1")  # type: ignore[union-attr]
        outcome = items[-1].outcome  # type: ignore[union-attr]
        assert isinstance(outcome, agui.RunFinishedInterruptOutcome)
        interrupt = outcome.interrupts[0]

        resume = {
            "threadId": "T",
            "runId": "R2",
            "messages": [],
            "resume": [
                {"interruptId": interrupt.id, "status": "resolved", "payload": {"approved": True}}
            ],
        }
        with client.stream("POST", "/ag-ui", json=resume) as response:
            items = [EVENT.validate_json(m.data) for m in sse_messages(response.iter_lines())]
        check_agui_order(items)
        assert items[0].run_id == "R2"  # type: ignore[union-attr]
        results = [i for i in items if isinstance(i, agui.ToolCallResultEvent)]
        assert [(r.tool_call_id, r.content) for r in results] == [("call_pay", "sent 5 to ana")]
        assert items[-1].result["text"] == "Added 5 and paid Ana."  # type: ignore[union-attr]

        again = client.post("/ag-ui", json=resume)  # that interrupt was answered
        assert again.status_code == 409
        assert client.post("/ag-ui", json={"threadId": "T"}).status_code == 422
        unknown = dict(resume, resume=[{"interruptId": "nope:c", "status": "cancelled"}])
        assert client.post("/ag-ui", json=unknown).status_code == 404


def test_the_chat_endpoint_errors() -> None:
    with (
        ServerThread(create_app({"bank": bank_agent()})) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        assert client.post("/ai-sdk/chat", json={"messages": []}).status_code == 422
        assert (
            client.post(
                "/ai-sdk/chat", content=b"[", headers={"content-type": "application/json"}
            ).status_code
            == 422
        )
        messages = ui_messages()
        answer = client.post("/ai-sdk/chat", json={"id": "chat", "messages": messages})
        assert answer.status_code == 404 and answer.json() == {"error": "no run 'RUN'"}
        robot = [{"id": "x", "role": "robot", "parts": []}]
        assert client.post("/ai-sdk/chat", json={"messages": robot}).status_code == 422
        unknown = client.post("/ai-sdk/chat", json={"messages": messages[:1], "agent": "nobody"})
        assert unknown.status_code == 404
        # A new user message starts a run and streams it.
        with client.stream("POST", "/ai-sdk/chat", json={"messages": messages[:1]}) as response:
            assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
            lines = [line for line in response.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2].removeprefix("data: "))["type"] == "finish"
        run_id = json.loads(lines[1].removeprefix("data: "))["messageMetadata"]["runId"]
        old = read_stream(client, f"/runs/{run_id}/ai-sdk?approvals=0")
        assert any('"data-tool-approval"' in m.data for m in old)


def test_a_run_resumed_after_a_crash_closes_the_void_steps_parts() -> None:
    # What rxagent.redis writes when another worker takes a crashed run over: the step
    # under way is void; both protocols close its open parts and say so, as for a retry.
    events: list[ra.AgentEvent] = [
        ev.RunStarted(step=1, input=ra.Conversation.of("go")),
        ev.StepStarted(step=1),
        ev.TextDelta(step=1, text="half an ans"),
        ev.RunResumed(step=1, input=ra.Conversation.of("go"), worker="w2"),
        ev.StepStarted(step=1),
        ev.TextDelta(step=1, text="The answer."),
    ]
    chunks = ai_sdk.encode(events)
    kinds = [c["type"] for c in chunks]
    resumed = kinds.index("data-run-resumed")
    assert kinds[resumed - 1] == "text-end" and kinds[resumed + 1 :].count("text-start") == 1
    assert chunks[resumed]["data"] == {"step": 1, "worker": "w2"}

    agui_events = agui_enc.encode(events, thread_id="t", run_id="r")
    names = [getattr(e, "name", None) for e in agui_events]
    at = names.index("rxagent.run_resumed")
    assert isinstance(agui_events[at - 1], agui.TextMessageEndEvent)
    assert fold(events).text == "The answer."
