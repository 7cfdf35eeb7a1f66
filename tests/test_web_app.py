"""rxagent.web's routes and errors, over real HTTP (uvicorn on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request

import rxagent as ra
from rxagent import events as ev
from rxagent import scripted as s
from rxagent.state import fold
from rxagent.web import ServerThread, create_app
from rxagent.web.native import state_json
from tests.web_support import (
    bank_agent,
    indexed_events,
    read_stream,
    sse_messages,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bank() -> Iterator[tuple[ServerThread, httpx.Client]]:
    server = ServerThread(create_app({"bank": bank_agent()}))
    with server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield server, client


def start(client: httpx.Client, **body: Any) -> str:
    response = client.post("/runs", json=body)
    assert response.status_code == 201, response.text
    run_id: str = response.json()["run_id"]
    assert response.headers["location"] == f"runs/{run_id}"
    return run_id


def until_paused(
    client: httpx.Client, run_id: str, after: int | None = None
) -> list[tuple[int, ev.AgentEvent]]:
    """The events (after ``after``) up to a pause (the native stream stays open through it)."""
    out = []
    query = "" if after is None else f"?after={after}"
    with client.stream("GET", f"/runs/{run_id}/events{query}") as response:
        for message in sse_messages(response.iter_lines()):
            out.append((int(message.id or -1), message.agent_event()))
            event = out[-1][1]
            if isinstance(event, ev.RunCompleted) and event.run.stop is ra.StopReason.PAUSED:
                break
    return out


def two_transfers() -> list[Any]:
    """A turn with two transfers (both wait for approval), then an answer."""
    calls = [s.call("transfer", {"amount": n, "to": to}, id=i) for n, to, i in TRANSFERS]
    return [calls, ["Done."]]


TRANSFERS = [(1, "a", "one"), (2, "b", "two")]


# -- the run's life over HTTP ------------------------------------------------------------
def test_a_run_streams_pauses_is_approved_and_goes_on_under_the_same_id(bank: Any) -> None:
    _, client = bank
    run_id = start(client, agent="bank", input="Add 2 and 3, then pay Ana 5.")
    assert len(run_id) >= 22  # at least 128 random bits, URL-safe

    first = until_paused(client, run_id)
    assert [i for i, _ in first] == list(range(len(first)))
    assert isinstance(first[0][1], ev.RunStarted)
    state = client.get(f"/runs/{run_id}").json()
    assert state["status"] == "paused" and state["agent"] == "bank"
    assert [c["id"] for c in state["pending"]] == ["call_pay"]
    assert state["usage"] == {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}
    assert {c["call_id"]: c["status"] for c in state["calls"]} == {
        "call_add": "completed",
        "call_pay": "pending",
    }
    # The state the server reports is the fold of the events a browser received.
    assert state_json(fold(e for _, e in first)) == {
        k: v for k, v in state.items() if k not in ("run_id", "agent", "created_at", "segments")
    }

    answer = client.post(
        f"/runs/{run_id}/approvals", json={"call_id": "call_pay", "decision": "approve"}
    )
    assert answer.status_code == 202
    assert answer.json() == {"run_id": run_id, "after": first[-1][0]}

    rest = indexed_events(read_stream(client, f"/runs/{run_id}/events?after={first[-1][0]}"))
    assert rest[0][0] == first[-1][0] + 1 and isinstance(rest[0][1], ev.RunStarted)
    assert [i for i, _ in rest] == list(range(rest[0][0], rest[0][0] + len(rest)))
    ended = [e for _, e in rest if isinstance(e, ev.ToolCallEnded)]
    assert [(e.call_id, e.output) for e in ended] == [("call_pay", "sent 5 to ana")]
    final = rest[-1][1]
    assert isinstance(final, ev.RunCompleted) and final.run.text == "Added 5 and paid Ana."
    assert ra.validate_conversation(final.run.messages) == []

    state = client.get(f"/runs/{run_id}").json()
    assert state["status"] == "completed" and state["segments"] == [0, rest[0][0]]
    assert state["result"]["stop"] == "no_tool_calls"
    assert state["usage"]["total_tokens"] == 42 + 56
    # The whole log folds to what the server says.
    whole = indexed_events(read_stream(client, f"/runs/{run_id}/events"))
    assert whole == first + rest
    assert fold(e for _, e in whole).result == final.run


def test_a_conversation_starts_a_run_that_continues_it(bank: Any) -> None:
    _, client = bank
    conversation = ra.Conversation.of("What is 2 + 3?")
    conversation.append(ra.AssistantMessage(content="5."))
    conversation.append(ra.UserMessage(content="And pay Ana."))
    body = json.loads(conversation.to_json())
    run_id = start(client, agent="bank", conversation=body)
    events = until_paused(client, run_id)
    assert events[0][1].input == conversation  # type: ignore[union-attr]


def test_rejecting_a_call_goes_back_to_the_model(bank: Any) -> None:
    _, client = bank
    run_id = start(client, agent="bank", input="pay")
    until_paused(client, run_id)
    answer = client.post(
        f"/runs/{run_id}/approvals",
        json={"call_id": "call_pay", "decision": "reject", "reason": "not today"},
    )
    assert answer.status_code == 202
    rest = indexed_events(
        read_stream(client, f"/runs/{run_id}/events?after={answer.json()['after']}")
    )
    ended = next(e for _, e in rest if isinstance(e, ev.ToolCallEnded))
    assert ended.status is ra.ToolCallStatus.REJECTED and "not today" in (ended.error or "")
    final = rest[-1][1]
    assert isinstance(final, ev.RunCompleted)
    answers = [m for m in final.run.messages if isinstance(m, ra.ToolMessage)]
    assert answers[-1].is_error and "not today" in answers[-1].content


@pytest.fixture
def two_waiting() -> Iterator[tuple[httpx.Client, str]]:
    """A client, and a run paused on two transfers (ids ``one`` and ``two``)."""
    server = ServerThread(create_app({"bank": bank_agent(two_transfers())}))
    with server, httpx.Client(base_url=server.url, timeout=10) as client:
        run_id = start(client, agent="bank", input="pay both")
        until_paused(client, run_id)
        yield client, run_id


def test_several_decisions_in_one_request(two_waiting: tuple[httpx.Client, str]) -> None:
    client, run_id = two_waiting
    decisions = [
        {"call_id": "one", "decision": "approve", "arguments": {"amount": 3, "to": "a"}},
        {"call_id": "two", "decision": "reject"},
    ]
    answer = client.post(f"/runs/{run_id}/approvals", json={"decisions": decisions})
    assert answer.status_code == 202, answer.text
    after = answer.json()["after"]
    rest = indexed_events(read_stream(client, f"/runs/{run_id}/events?after={after}"))
    ended = {e.call_id: e for _, e in rest if isinstance(e, ev.ToolCallEnded)}
    assert ended["one"].output == "sent 3 to a"
    assert ended["two"].status is ra.ToolCallStatus.REJECTED
    assert client.get(f"/runs/{run_id}").json()["status"] == "completed"


def test_a_decision_on_one_of_two_waiting_calls_pauses_again_for_the_other(
    two_waiting: tuple[httpx.Client, str],
) -> None:
    client, run_id = two_waiting
    answer = client.post(
        f"/runs/{run_id}/approvals", json={"call_id": "one", "decision": "approve"}
    )
    assert answer.status_code == 202
    again = until_paused(client, run_id, after=answer.json()["after"])
    assert [e.call_id for _, e in again if isinstance(e, ev.ToolCallEnded)] == ["one"]
    state = client.get(f"/runs/{run_id}").json()
    assert state["status"] == "paused" and [c["id"] for c in state["pending"]] == ["two"]
    answer = client.post(
        f"/runs/{run_id}/approvals", json={"call_id": "two", "decision": "approve"}
    )
    assert answer.status_code == 202
    whole = indexed_events(read_stream(client, f"/runs/{run_id}/events"))
    assert sum(isinstance(e, ev.RunStarted) for _, e in whole) == 3
    assert isinstance(whole[-1][1], ev.RunCompleted) and whole[-1][1].run.text == "Done."


def test_the_native_stream_waits_through_a_pause_and_goes_on_live(bank: Any) -> None:
    server, client = bank
    run_id = start(client, agent="bank", input="pay")
    seen: list[tuple[int, ev.AgentEvent]] = []
    with client.stream("GET", f"/runs/{run_id}/events") as response:
        for message in sse_messages(response.iter_lines()):
            seen.append((int(message.id or -1), message.agent_event()))
            event = seen[-1][1]
            if isinstance(event, ev.RunCompleted) and event.run.stop is ra.StopReason.PAUSED:
                # Decided from another client while this stream is open.
                with httpx.Client(base_url=server.url) as other:
                    other.post(
                        f"/runs/{run_id}/approvals",
                        json={"call_id": "call_pay", "decision": "approve"},
                    )
    assert [i for i, _ in seen] == list(range(len(seen)))
    assert sum(isinstance(e, ev.RunStarted) for _, e in seen) == 2
    assert (
        isinstance(seen[-1][1], ev.RunCompleted) and seen[-1][1].run.stop.value == "no_tool_calls"
    )


def test_a_heartbeat_keeps_an_idle_stream_open() -> None:
    server = ServerThread(create_app({"bank": bank_agent()}, heartbeat=0.05))
    with server, httpx.Client(base_url=server.url, timeout=10) as client:
        run_id = start(client, agent="bank", input="pay")
        until_paused(client, run_id)
        with client.stream("GET", f"/runs/{run_id}/events?after=1000") as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line) == ": keep-alive"
            assert next(line for line in lines if line) == ": keep-alive"


def test_a_finished_run_resumed_at_its_end_answers_204(bank: Any) -> None:
    _, client = bank
    run_id = start(client, agent="bank", input="pay")
    events = until_paused(client, run_id)
    client.post(f"/runs/{run_id}/cancel")
    whole = indexed_events(read_stream(client, f"/runs/{run_id}/events"))
    assert len(whole) == len(events) + 2  # a cancelled paused run: RunStarted, RunCompleted
    last = whole[-1][0]
    assert (
        client.get(f"/runs/{run_id}/events", headers={"last-event-id": str(last)}).status_code
        == 204
    )
    assert read_stream(client, f"/runs/{run_id}/events?after={last - 1}")[0].id == str(last)


# -- cancel ------------------------------------------------------------------------------
def test_cancel_stops_a_running_run_and_a_paused_one() -> None:
    agent = bank_agent([["Thinking", s.hang()]])
    server = ServerThread(create_app({"slow": agent, "bank": bank_agent()}))
    with server, httpx.Client(base_url=server.url, timeout=10) as client:
        run_id = start(client, agent="slow", input="hi")
        with client.stream("GET", f"/runs/{run_id}/events") as response:
            events = []
            for message in sse_messages(response.iter_lines()):
                events.append(message.agent_event())
                if isinstance(events[-1], ev.TextDelta):
                    assert client.post(f"/runs/{run_id}/cancel").status_code == 202
        final = events[-1]
        assert isinstance(final, ev.RunCompleted) and final.run.stop is ra.StopReason.CANCELLED
        assert ra.validate_conversation(final.run.messages) == []
        again = client.post(f"/runs/{run_id}/cancel")
        assert again.status_code == 409 and "already cancelled" in again.json()["error"]

        paused = start(client, agent="bank", input="pay")
        until_paused(client, paused)
        assert client.post(f"/runs/{paused}/cancel").status_code == 202
        state = client.get(f"/runs/{paused}").json()
        assert state["status"] == "cancelled" and state["result"]["stop"] == "cancelled"
        late = client.post(
            f"/runs/{paused}/approvals", json={"call_id": "call_pay", "decision": "approve"}
        )
        assert late.status_code == 409


# -- bad input ---------------------------------------------------------------------------
def test_unknown_runs_and_agents_are_404_on_every_route(bank: Any) -> None:
    _, client = bank
    answer = client.post("/runs", json={"agent": "nobody", "input": "hi"})
    assert answer.status_code == 404 and "no agent named 'nobody'" in answer.json()["error"]
    for method, path in [
        ("GET", "/runs/nope"),
        ("GET", "/runs/nope/events"),
        ("GET", "/runs/nope/ai-sdk"),
        ("GET", "/runs/nope/ag-ui"),
        ("POST", "/runs/nope/cancel"),
    ]:
        answer = client.request(method, path)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json() == {"error": "no run 'nope'"}
    answer = client.post("/runs/nope/approvals", json={"call_id": "x", "decision": "approve"})
    assert answer.status_code == 404


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "json_invalid"),
        (b'{"agent": "bank"}', "exactly one of"),
        (b'{"agent": "bank", "input": "a", "conversation": []}', "exactly one of"),
        (b'{"agent": "bank", "input": 3}', "string_type"),
        (b'{"agent": "bank", "conversation": [{"role": "wizard"}]}', "union_tag_invalid"),
        (b'{"agent": "bank", "input": "a", "extra": 1}', "extra_forbidden"),
    ],
)
def test_malformed_bodies_are_422_with_pydantics_errors(
    bank: Any, body: bytes, needle: str
) -> None:
    _, client = bank
    answer = client.post("/runs", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422
    assert needle in json.dumps(answer.json()["detail"])


def test_bad_decisions_change_nothing(bank: Any) -> None:
    _, client = bank
    run_id = start(client, agent="bank", input="pay")
    until_paused(client, run_id)
    before = client.get(f"/runs/{run_id}").json()

    def decide(body: Any) -> httpx.Response:
        return client.post(f"/runs/{run_id}/approvals", json=body)

    not_pending = decide({"call_id": "call_add", "decision": "approve"})
    assert not_pending.status_code == 409
    paused = ra.Conversation.model_validate(before["result"]["messages"])
    with pytest.raises(ra.ApprovalError) as raised:
        paused.approve("call_add")
    assert not_pending.json()["error"] == raised.value.message  # the ApprovalError's message
    assert decide({"call_id": "ghost", "decision": "reject"}).status_code == 409
    misfit = decide({"call_id": "call_pay", "decision": "approve", "arguments": {"amount": "lots"}})
    assert misfit.status_code == 422
    assert "do not fit tool 'transfer'" in misfit.json()["error"]
    assert decide({"call_id": "call_pay", "decision": "maybe"}).status_code == 422
    assert (
        decide({"call_id": "call_pay", "decision": "approve", "arguments": [1]}).status_code == 422
    )
    assert decide({"decisions": []}).status_code == 422
    bad_index = client.get(f"/runs/{run_id}/events", headers={"last-event-id": "soon"})
    assert bad_index.status_code == 422

    assert client.get(f"/runs/{run_id}").json() == before  # nothing changed
    # ... and the run still takes a good decision, once: a run that is not paused takes none.
    assert decide({"call_id": "call_pay", "decision": "approve"}).status_code == 202
    assert decide({"call_id": "call_pay", "decision": "approve"}).status_code == 409


def test_a_failing_run_ends_its_log_with_run_failed() -> None:
    script = [[s.call("explode", {"reason": "boom"}, id="x")]]
    agent = bank_agent(script, join=ra.JoinPolicy.FAIL_FAST)
    server = ServerThread(create_app({"bank": agent}))
    with server, httpx.Client(base_url=server.url, timeout=10) as client:
        run_id = start(client, agent="bank", input="go")
        events = [e for _, e in indexed_events(read_stream(client, f"/runs/{run_id}/events"))]
        failed = events[-1]
        assert isinstance(failed, ev.RunFailed) and "boom" in failed.message
        state = client.get(f"/runs/{run_id}").json()
        assert state["status"] == "failed" and "boom" in state["error"]


# -- access ------------------------------------------------------------------------------
def by_header(request: Request) -> str:
    user = request.headers.get("x-user")
    if user is None:
        raise HTTPException(401, "who are you?")
    if user == "mallory":
        raise HTTPException(403, "not you")
    return user


def test_the_auth_hook_guards_every_route_and_keeps_runs_apart() -> None:
    server = ServerThread(create_app({"bank": bank_agent()}, auth=by_header))
    with server, contextlib.ExitStack() as clients:
        alice, bob, anonymous, mallory = (
            clients.enter_context(httpx.Client(base_url=server.url, headers=headers, timeout=10))
            for headers in ({"x-user": "alice"}, {"x-user": "bob"}, {}, {"x-user": "mallory"})
        )
        run_id = start(alice, agent="bank", input="pay")
        until_paused(alice, run_id)
        routes = [
            ("GET", "/", None),
            ("GET", "/agents", None),
            ("POST", "/runs", {"agent": "bank", "input": "x"}),
            ("GET", f"/runs/{run_id}", None),
            ("GET", f"/runs/{run_id}/events", None),
            ("GET", f"/runs/{run_id}/ai-sdk", None),
            ("GET", f"/runs/{run_id}/ag-ui", None),
            ("POST", f"/runs/{run_id}/approvals", {"call_id": "call_pay", "decision": "approve"}),
            ("POST", f"/runs/{run_id}/cancel", None),
            ("POST", "/ai-sdk/chat", {"messages": []}),
            ("POST", "/ag-ui", {}),
        ]
        for method, path, body in routes:
            assert anonymous.request(method, path, json=body).status_code == 401, path
            assert mallory.request(method, path, json=body).status_code == 403, path
        for method, path, body in routes[3:9]:
            answer = bob.request(method, path, json=body)
            assert answer.status_code == 404, path  # another's run does not exist for bob
        assert alice.get(f"/runs/{run_id}").json()["status"] == "paused"


def test_cors_is_off_unless_asked_for() -> None:
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    server = ServerThread(create_app({"bank": bank_agent()}))
    with server, httpx.Client(base_url=server.url) as client:
        answer = client.get("/agents", headers={"origin": "https://app.example"})
        assert "access-control-allow-origin" not in answer.headers
        assert (
            "access-control-allow-origin" not in client.options("/runs", headers=preflight).headers
        )
    app = create_app({"bank": bank_agent()}, cors_origins=["https://app.example"])
    server = ServerThread(app)
    with server, httpx.Client(base_url=server.url) as client:
        answer = client.options("/runs", headers=preflight)
        assert answer.headers["access-control-allow-origin"] == "https://app.example"


# -- the page and the command ------------------------------------------------------------
def test_the_page_is_served_and_lists_the_agents(bank: Any) -> None:
    _, client = bank
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == (ROOT / "examples" / "web_chat" / "index.html").read_text()
    assert client.get("/agents").json() == {"agents": ["bank"], "default": "bank"}
    with ServerThread(create_app({"bank": bank_agent()}, page=False)) as server:
        assert httpx.get(server.url + "/").status_code == 404


def test_rxagent_web_serves_the_page_on_the_offline_demo_model(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "rxagent", "web", "--port", "0", "--pace", "0"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    try:
        assert process.stderr is not None
        banner = process.stderr.readline()  # written once the server listens
        match = re.search(r"(http://127\.0\.0\.1:\d+)/", banner)
        assert match and "offline demo model" in banner, banner
        client = httpx.Client(base_url=match[1], timeout=20)
        assert "EventSource" in client.get("/").text
        run_id = start(client, agent="demo", input="Tell me about ReactiveX.")
        events = [e for _, e in until_paused(client, run_id)]
        pending = [e for e in events if isinstance(e, ev.ToolCallPending)]
        assert [e.name for e in pending] == ["calculate"]
        decision = {"call_id": pending[0].call_id, "decision": "approve"}
        assert client.post(f"/runs/{run_id}/approvals", json=decision).status_code == 202
        rest = [e for _, e in indexed_events(read_stream(client, f"/runs/{run_id}/events"))]
        final = rest[-1]
        assert isinstance(final, ev.RunCompleted) and "17 * 23 + 4 = 395" in final.run.text
    finally:
        process.terminate()
        process.wait(10)


def test_importing_rxagent_loads_no_web_dependency() -> None:
    code = textwrap.dedent(
        """
        import sys
        import rxagent, rxagent.__main__
        heavy = ("starlette", "uvicorn", "ag_ui", "rxagent.web")
        loaded = sorted(m for m in heavy if m in sys.modules)
        assert not loaded, loaded
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
