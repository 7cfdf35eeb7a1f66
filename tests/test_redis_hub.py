"""RedisHub: rxagent.web's run hub on Redis. The hub's semantics in one process, then two
web processes and a worker process serving one run, a client resuming with Last-Event-ID
across them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from rxagent import events as ev
from rxagent.redis import Worker
from rxagent.redis.hub import RedisHub
from rxagent.redis.testing import RedisServer
from rxagent.state import RunStatus, fold
from rxagent.web import AgentNotFound, CallDecision, InvalidDecision, RunConflict, RunNotFound
from tests.redis_support import WebServers, assert_coherent, log_of, workers
from tests.web_support import bank_agent, indexed_events, read_stream, sse_messages

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def hub_and_worker(redis_client: redis.Redis) -> AsyncIterator[RedisHub]:
    agents = {"bank": bank_agent()}
    hub = RedisHub(redis_client, agents)
    worker = Worker(redis_client, agents)
    task = asyncio.create_task(worker.run())
    yield hub
    await hub.close()
    worker.stop(now=True)
    await task


async def collect(hub: RedisHub, run_id: str, **options: Any) -> list[tuple[int, ev.AgentEvent]]:
    return [pair async for pair in hub.events(run_id, **options)]


async def test_the_redis_hub_keeps_one_log_across_pauses(hub_and_worker: RedisHub) -> None:
    hub = hub_and_worker
    with pytest.raises(AgentNotFound, match="no agent named 'nope'"):
        await hub.start("nope", "hi")
    run_id = await hub.start("bank", "pay", principal="ana")
    with pytest.raises(RunNotFound):
        await hub.info(run_id, principal="eve")  # another principal's run does not exist
    first = await collect(hub, run_id, principal="ana", stop_at_pause=True)
    assert (await hub.state(run_id, principal="ana")).status is RunStatus.PAUSED

    with pytest.raises(RunConflict, match="not waiting"):
        await hub.decide(run_id, [CallDecision("call_add", "approve")], principal="ana")
    with pytest.raises(InvalidDecision, match="do not fit"):
        await hub.decide(
            run_id, [CallDecision("call_pay", "approve", {"amount": "x"})], principal="ana"
        )
    assert len((await hub.info(run_id, principal="ana")).segments) == 1  # nothing changed

    index = await hub.decide(run_id, [CallDecision("call_pay", "approve")], principal="ana")
    assert index == len(first)
    with pytest.raises(RunConflict, match="is running"):
        await hub.decide(run_id, [CallDecision("call_pay", "approve")], principal="ana")
    rest = await collect(hub, run_id, after=index - 1, principal="ana")
    whole = await collect(hub, run_id, principal="ana")
    assert whole == first + rest and rest[0][0] == index
    info = await hub.info(run_id, principal="ana")
    assert info.segments == (0, index) and info.agent == "bank" and info.owner == "ana"
    state = fold(e for _, e in whole)
    assert state.status is RunStatus.COMPLETED and state.result == info.state.result
    assert state.result is not None and state.result.text == "Added 5 and paid Ana."
    with pytest.raises(RunConflict, match="already completed"):
        await hub.cancel(run_id, principal="ana")


async def test_redis_hub_readers_stop_at_a_pause_or_wait_through_it(
    hub_and_worker: RedisHub,
) -> None:
    hub = hub_and_worker
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
    # A paused run cancelled through the hub ends cancelled.
    other = await hub.start("bank", "pay")
    await collect(hub, other, stop_at_pause=True)
    await hub.cancel(other)
    assert (await hub.state(other)).status is RunStatus.CANCELLED


async def test_two_web_processes_serve_one_run_and_a_client_resumes_across_them(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    servers = WebServers(redis_server.url)
    try:
        with workers(redis_server.url, tmp_path / "marks", ["w"]):
            a, b = await asyncio.gather(
                asyncio.to_thread(servers.start), asyncio.to_thread(servers.start)
            )
            await asyncio.to_thread(resume_across, a, b)
            run_id = await asyncio.to_thread(approve_and_cancel_across, a, b)
        assert_coherent(await log_of(redis_client, run_id), ends=2)
    finally:
        servers.close()


def resume_across(a: str, b: str) -> None:
    """A live run started on ``a``, read in pieces from ``a`` and ``b`` alternately, each
    piece resuming where the last stopped: exactly the run's log, once."""
    with httpx.Client(base_url=a, timeout=20) as on_a, httpx.Client(base_url=b, timeout=20) as on_b:
        started = on_a.post("/runs", json={"agent": "slow", "input": "go 120"})
        assert started.status_code == 201
        run_id = started.json()["run_id"]
        got: list[tuple[int, ev.AgentEvent]] = []
        clients = [on_b, on_a]
        for turn, limit in enumerate([7, 1, 30, 2, 50, 0]):
            headers = {"last-event-id": str(got[-1][0])} if got and turn % 2 else {}
            path = f"/runs/{run_id}/events"
            if got and not headers:
                path += f"?after={got[-1][0]}"
            got += indexed_events(
                read_stream(clients[turn % 2], path, headers=headers, limit=limit)
            )
        whole = indexed_events(read_stream(on_b, f"/runs/{run_id}/events"))
        assert got == whole
        assert [i for i, _ in whole] == list(range(len(whole)))
        assert isinstance(whole[-1][1], ev.RunCompleted)
        assert whole[-1][1].run.text == "".join(f"w{i} " for i in range(120))
        # Both processes tell the same state.
        for client in (on_a, on_b):
            state = client.get(f"/runs/{run_id}").json()
            assert state["status"] == "completed"


def approve_and_cancel_across(a: str, b: str) -> str:
    """A run started on ``a`` pauses; ``b`` approves it; ``a`` streams it to its end.
    A run started on ``b`` is cancelled from ``a``. Returns the approved run's id."""
    with httpx.Client(base_url=a, timeout=20) as on_a, httpx.Client(base_url=b, timeout=20) as on_b:
        run_id = on_a.post("/runs", json={"agent": "bank", "input": "pay"}).json()["run_id"]
        with on_a.stream("GET", f"/runs/{run_id}/events") as response:
            for message in sse_messages(response.iter_lines()):
                if message.event == "paused":
                    break
        approval = {"call_id": "call-transfer", "decision": "approve", "arguments": {"amount": 3}}
        assert on_b.post(f"/runs/{run_id}/approvals", json=approval).status_code == 202
        rest = indexed_events(read_stream(on_a, f"/runs/{run_id}/events"))
        assert rest[-1][1].run.text == "Bank says: transferred 3"  # type: ignore[union-attr]
        again = on_a.post(f"/runs/{run_id}/approvals", json=approval)
        assert again.status_code == 409

        slow = on_b.post("/runs", json={"agent": "slow", "input": "go 2000"}).json()["run_id"]
        read_stream(on_b, f"/runs/{slow}/events", limit=3)  # it runs
        assert on_a.post(f"/runs/{slow}/cancel").status_code == 202
        events = indexed_events(read_stream(on_b, f"/runs/{slow}/events"))
        assert events[-1][1].run.stop == "cancelled"  # type: ignore[union-attr]
        assert on_a.post(f"/runs/{slow}/cancel").status_code == 409
        assert on_b.get("/runs/nope").status_code == 404
        return str(run_id)
