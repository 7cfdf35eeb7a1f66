"""The run hub: its log across pauses, expiry, limits, and readers that come, go, resume
or stall (the last over real HTTP, many clients at once)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rxagent as ra
from rxagent import events as ev
from rxagent import scripted as s
from rxagent import testing as t
from rxagent.state import RunStatus, fold
from rxagent.web import (
    CallDecision,
    HubFull,
    InvalidDecision,
    LocalHub,
    RunConflict,
    RunNotFound,
    ServerThread,
    create_app,
)
from tests.web_support import Message, add, bank_agent, indexed_events, read_stream, sse_messages


async def collect(hub: LocalHub, run_id: str, **options: Any) -> list[tuple[int, ev.AgentEvent]]:
    return [pair async for pair in hub.events(run_id, **options)]


# -- the hub in process -------------------------------------------------------------------
async def test_a_resumed_run_continues_its_log_and_its_fold() -> None:
    hub = LocalHub({"bank": bank_agent()})
    run_id = await hub.start("bank", "pay")
    first = await collect(hub, run_id, stop_at_pause=True)
    assert (await hub.state(run_id)).status is RunStatus.PAUSED

    with pytest.raises(RunConflict, match="not waiting"):
        await hub.decide(run_id, [CallDecision("call_add", "approve")])
    with pytest.raises(InvalidDecision, match="do not fit"):
        await hub.decide(run_id, [CallDecision("call_pay", "approve", {"amount": "x"})])
    assert len((await hub.info(run_id)).segments) == 1  # nothing changed

    index = await hub.decide(run_id, [CallDecision("call_pay", "approve")])
    assert index == len(first)
    # The fold of the log follows the new segment: running again, then completed.
    assert (await hub.state(run_id)).status is RunStatus.RUNNING
    with pytest.raises(RunConflict, match="is running"):
        await hub.decide(run_id, [CallDecision("call_pay", "approve")])
    rest = await collect(hub, run_id, after=index - 1)
    whole = await collect(hub, run_id)
    assert whole == first + rest and rest[0][0] == index
    info = await hub.info(run_id)
    assert info.segments == (0, index) and info.agent == "bank"
    state = fold(e for _, e in whole)
    assert state.status is RunStatus.COMPLETED and state.result == info.state.result
    assert state.result is not None and state.result.text == "Added 5 and paid Ana."
    assert state.calls["call_pay"].status is ra.ToolCallStatus.COMPLETED
    await hub.close()


async def test_the_fold_opens_a_new_segment_at_a_run_started_after_the_end() -> None:
    hub = LocalHub({"bank": bank_agent()})
    run_id = await hub.start("bank", "pay")
    paused = [e for _, e in await collect(hub, run_id, stop_at_pause=True)]
    index = await hub.decide(run_id, [CallDecision("call_pay", "approve")])
    resumed = [e for _, e in await collect(hub, run_id, after=index - 1)]
    await hub.close()
    at_pause = fold(paused)
    assert at_pause.status is RunStatus.PAUSED and at_pause.pending and at_pause.step == 1
    reopened = at_pause.apply(resumed[0])  # the resumed segment's RunStarted
    assert reopened.status is RunStatus.RUNNING and reopened.step == 0
    assert (reopened.result, reopened.stop, reopened.pending, reopened.ended_at) == (
        None,
        None,
        (),
        None,
    )
    assert reopened.input == tuple(resumed[0].input)  # type: ignore[union-attr]
    assert at_pause.status is RunStatus.PAUSED  # the fold is pure
    final = fold(resumed, reopened)
    assert final.status is RunStatus.COMPLETED and final.steps == 2
    assert final.calls["call_pay"].status is ra.ToolCallStatus.COMPLETED


async def test_finished_runs_expire_after_the_ttl_and_running_ones_never() -> None:
    now = [1000.0]
    hub = LocalHub(
        {"bank": bank_agent(), "slow": bank_agent([[s.hang()]])}, ttl=60, clock=lambda: now[0]
    )
    done = await hub.start("bank", "pay")
    await collect(hub, done, stop_at_pause=True)
    slow = await hub.start("slow", "wait")
    reading = asyncio.ensure_future(collect(hub, slow))
    now[0] += 59
    assert (await hub.state(done)).status is RunStatus.PAUSED
    now[0] += 1
    with pytest.raises(RunNotFound):
        await hub.state(done)
    now[0] += 10_000
    assert (await hub.state(slow)).status is RunStatus.RUNNING
    await hub.cancel(slow)
    events = await reading
    assert events[-1][1].run.stop is ra.StopReason.CANCELLED  # type: ignore[union-attr]
    await hub.close()


async def test_a_reader_waiting_on_a_run_that_expires_is_told_so() -> None:
    now = [0.0]
    hub = LocalHub({"bank": bank_agent()}, ttl=5, clock=lambda: now[0])
    run_id = await hub.start("bank", "pay")
    paused = await collect(hub, run_id, stop_at_pause=True)
    waiting = asyncio.ensure_future(hub.read(run_id, paused[-1][0]))  # waits for a resume
    await asyncio.sleep(0)
    assert not waiting.done()
    now[0] += 5
    await hub.start("bank", "another")  # any use of the hub drops expired runs
    with pytest.raises(RunNotFound):
        await waiting
    await hub.close()


async def test_at_most_max_runs_are_kept_and_the_oldest_ended_go_first() -> None:
    now = [0.0]
    agents = {"bank": bank_agent(), "slow": bank_agent([[s.hang()]] * 5)}
    hub = LocalHub(agents, max_runs=2, clock=lambda: now[0])
    old = await hub.start("bank", "pay")
    await collect(hub, old, stop_at_pause=True)
    now[0] += 1
    slow = await hub.start("slow", "wait")
    newer = await hub.start("slow", "wait too")  # the ended run makes room
    with pytest.raises(RunNotFound):
        await hub.state(old)
    with pytest.raises(HubFull):
        await hub.start("bank", "no room")  # both runs still going
    assert {slow, newer} == set(hub._runs) and len(hub) == 2
    await hub.close()
    assert (await hub.state(slow)).status is RunStatus.CANCELLED


def test_run_ids_are_unguessable() -> None:
    hub = LocalHub({"bank": bank_agent()})

    async def many() -> set[str]:
        return {await hub.start("bank", "x") for _ in range(200)}

    ids = asyncio.run(many())
    assert len(ids) == 200 and all(len(i) == 32 for i in ids)  # 192 random bits each


async def test_readers_can_stop_at_a_pause_or_wait_through_it() -> None:
    hub = LocalHub({"bank": bank_agent()})
    run_id = await hub.start("bank", "pay")
    stopped = await collect(hub, run_id, stop_at_pause=True)
    page = await hub.read(run_id, stopped[-1][0], stop_at_pause=True)
    assert page.events == [] and page.end is RunStatus.PAUSED
    page = await hub.read(run_id, stopped[-1][0], wait=0.01)  # waits through the pause
    assert page.events == [] and page.end is RunStatus.PAUSED and not page.finished(False)
    through = asyncio.ensure_future(collect(hub, run_id))
    await asyncio.sleep(0)
    assert not through.done()
    await hub.decide(run_id, [CallDecision("call_pay", "reject", reason="no")])
    whole = await through
    assert whole[: len(stopped)] == stopped and isinstance(whole[-1][1], ev.RunCompleted)
    await hub.close()


# -- resuming over HTTP -------------------------------------------------------------------
def story() -> list[Any]:
    """A run with text, reasoning, parallel tools, a failing tool, usage and a pause."""
    return [
        [
            s.reasoning("Let me think. "),
            "Working ",
            "on it. ",
            s.call("add", {"a": 1, "b": 2}, id="c1"),
            s.call("explode", {"reason": "no"}, id="c2"),
            s.call("transfer", {"amount": 9, "to": "bo"}, id="c3"),
            s.usage(10, 5),
        ],
        ["Sum is 3; ", "the other failed; ", "paid Bo.", s.usage(20, 7)],
    ]


@pytest.fixture(scope="module")
def finished_story() -> Iterator[tuple[httpx.Client, str, list[tuple[int, ev.AgentEvent]]]]:
    server = ServerThread(create_app({"bank": bank_agent(story())}))
    with server, httpx.Client(base_url=server.url, timeout=10) as client:
        run_id = client.post("/runs", json={"agent": "bank", "input": "go"}).json()["run_id"]
        with client.stream("GET", f"/runs/{run_id}/events") as response:
            for message in sse_messages(response.iter_lines()):
                if message.event == "paused":
                    break
        decision = {"call_id": "c3", "decision": "approve"}
        assert client.post(f"/runs/{run_id}/approvals", json=decision).status_code == 202
        whole = indexed_events(read_stream(client, f"/runs/{run_id}/events"))
        assert isinstance(whole[-1][1], ev.RunCompleted)
        assert len(whole) >= 25
        yield client, run_id, whole


@settings(max_examples=25)
@given(cuts=st.lists(st.integers(1, 12), min_size=1, max_size=8), header=st.booleans())
def test_resuming_at_random_cut_points_gives_exactly_the_log(
    finished_story: tuple[httpx.Client, str, list[tuple[int, ev.AgentEvent]]],
    cuts: list[int],
    header: bool,
) -> None:
    client, run_id, whole = finished_story
    got: list[tuple[int, ev.AgentEvent]] = []
    for cut in [*cuts, len(whole)]:
        if got and got[-1][0] == whole[-1][0]:
            break
        last = got[-1][0] if got else None
        if last is None:
            path, headers = f"/runs/{run_id}/events", {}
        elif header:
            path, headers = f"/runs/{run_id}/events", {"last-event-id": str(last)}
        else:
            path, headers = f"/runs/{run_id}/events?after={last}", {}
        got += indexed_events(read_stream(client, path, headers=headers, limit=cut))
    assert got == whole


@pytest.fixture(scope="module")
def full_protocol_streams(
    finished_story: tuple[httpx.Client, str, list[tuple[int, ev.AgentEvent]]],
) -> dict[str, list[Message]]:
    client, run_id, _ = finished_story
    return {kind: read_stream(client, f"/runs/{run_id}/{kind}") for kind in ("ai-sdk", "ag-ui")}


@settings(max_examples=25)
@given(after=st.integers(-1, 40), kind=st.sampled_from(["ai-sdk", "ag-ui"]))
def test_the_protocol_streams_resume_to_exactly_the_rest(
    finished_story: tuple[httpx.Client, str, list[tuple[int, ev.AgentEvent]]],
    full_protocol_streams: dict[str, list[Message]],
    after: int,
    kind: str,
) -> None:
    client, run_id, whole = finished_story
    after = min(after, len(whole) - 1)
    full = full_protocol_streams[kind]
    rest = read_stream(client, f"/runs/{run_id}/{kind}?after={after}")
    # Every part carries the index of the event it came from (the closing ones none).
    expected = [m for m in full if m.id is None or int(m.id) > after]
    assert [(m.id, m.data) for m in rest] == [(m.id, m.data) for m in expected]


def test_a_live_run_resumed_after_a_disconnect_loses_and_repeats_nothing() -> None:
    gate = t.Gate()
    with t.LoopbackServer([["Before ", "the gate. ", gate, "After ", "it."]]) as model:
        agent = ra.Agent(model.provider())
        server = ServerThread(create_app({"live": agent}))
        with server, httpx.Client(base_url=server.url, timeout=10) as client:
            run_id = client.post("/runs", json={"agent": "live", "input": "go"}).json()["run_id"]
            seen = []
            with client.stream("GET", f"/runs/{run_id}/events") as response:
                for message in sse_messages(response.iter_lines()):
                    seen.append((int(message.id or -1), message.agent_event()))
                    if getattr(seen[-1][1], "text", None) == "the gate. ":
                        break  # the client goes away while the run streams
            gate.open()
            headers = {"last-event-id": str(seen[-1][0])}
            seen += indexed_events(read_stream(client, f"/runs/{run_id}/events", headers=headers))
            whole = indexed_events(read_stream(client, f"/runs/{run_id}/events"))
    assert seen == whole
    final = whole[-1][1]
    assert isinstance(final, ev.RunCompleted) and final.run.text == "Before the gate. After it."


# -- many clients ---------------------------------------------------------------------------
async def read_all(
    client: httpx.AsyncClient, path: str, started: asyncio.Event | None = None
) -> list[str]:
    """The raw messages of a stream (``started`` is set once the first text arrived)."""
    out = []
    async with client.stream("GET", path) as response:
        assert response.status_code == 200
        block: list[str] = []
        async for line in response.aiter_lines():
            if line:
                block.append(line)
                continue
            out.append("\n".join(block))
            block = []
            if started is not None and "event: text_delta" in out[-1]:
                started.set()
    return out


async def test_fifty_clients_on_one_live_run_receive_identical_streams() -> None:
    gate = t.Gate()
    turn = ["Hello ", gate, *[f"w{i} " for i in range(200)], t.call("add", {"a": 1, "b": 1})]
    async with t.LoopbackServer([turn, ["Two."]]) as model:
        agent = ra.Agent(model.provider(), tools=[add])
        with ServerThread(create_app({"live": agent})) as server:
            limits = httpx.Limits(max_connections=60)
            async with httpx.AsyncClient(base_url=server.url, timeout=20, limits=limits) as client:
                answer = await client.post("/runs", json={"agent": "live", "input": "go"})
                path = f"/runs/{answer.json()['run_id']}/events"
                started = [asyncio.Event() for _ in range(50)]
                readers = [asyncio.ensure_future(read_all(client, path, e)) for e in started]
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 10)
                assert not gate.is_open  # every client is following the live run
                gate.open()
                streams = await asyncio.wait_for(asyncio.gather(*readers), 20)
                replay = await read_all(client, path)
    assert all(stream == replay for stream in streams)
    assert len(replay) > 200 and "run_completed" in replay[-1]


def stalled_client(url: str, path: str) -> socket.socket:
    """A client that sends its request and then reads nothing (a tiny receive window)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect((host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


async def test_a_client_that_stops_reading_delays_neither_the_run_nor_the_others() -> None:
    big = "x" * 2000
    agent = bank_agent([[f"{i} {big}" for i in range(2000)]])  # about 4 MB of events
    with ServerThread(create_app({"bank": agent})) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            answer = await client.post("/runs", json={"agent": "bank", "input": "go"})
            run_id = answer.json()["run_id"]
            path = f"/runs/{run_id}/events"
            stalled = stalled_client(server.url, path)
            try:
                readers = [asyncio.ensure_future(read_all(client, path)) for _ in range(4)]
                streams = await asyncio.wait_for(asyncio.gather(*readers), 30)
                state = (await client.get(f"/runs/{run_id}")).json()
                assert state["status"] == "completed"
                assert all(stream == streams[0] for stream in streams)
                # The text, and RunStarted, StepStarted, StepCompleted, RunCompleted.
                assert len(streams[0]) == 2000 + 4
                # The stalled client still gets every byte, once it reads.
                stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                stalled.setblocking(True)
                data = bytearray()
                while not data.endswith(b"\r\n0\r\n\r\n"):
                    chunk = await asyncio.to_thread(stalled.recv, 1 << 20)
                    if not chunk:
                        break
                    data += chunk
                assert data.count(b"event: text_delta") == 2000
            finally:
                stalled.close()


async def test_a_run_goes_on_when_every_client_has_left() -> None:
    gate = t.Gate()
    async with t.LoopbackServer([["Start. ", gate, "The rest."]]) as model:
        agent = ra.Agent(model.provider())
        with ServerThread(create_app({"live": agent})) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
                answer = await client.post("/runs", json={"agent": "live", "input": "go"})
                path = f"/runs/{answer.json()['run_id']}/events"
                started = [asyncio.Event() for _ in range(3)]
                readers = [asyncio.ensure_future(read_all(client, path, e)) for e in started]
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 10)
                for reader in readers:  # every tab closes
                    reader.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
            # Once the server has seen every connection go, the run is still to finish.
            await wait_until(lambda: server.connections == 0)
            assert not gate.is_open
            gate.open()
            async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
                replay = await read_all(client, path)
    assert "The rest." in "".join(replay) and '"stop":"no_tool_calls"' in replay[-1]


async def wait_until(condition: Any, limit: float = 5.0) -> None:
    """Wait (on the loop, checking every few ms) until ``condition()`` holds."""
    async with asyncio.timeout(limit):
        # uvicorn has no event for a connection it closed: check its count.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
