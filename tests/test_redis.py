"""rxagent.redis in one process, on a private redis-server: the event log (batching,
expiry, trimming, fencing), remote observation (replay, live, errors), the queue, faults
(Redis unreachable, connection lost past the window, malformed entries), and the
recovery semantics (RunResumed in the fold, the conversation a recovered run goes on from)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from typing import Any

import pytest
import redis.asyncio as redis

import rxagent as ra
from rxagent import scripted as s
from rxagent.errors import ProviderError
from rxagent.events import (
    AgentEvent,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunStarted,
    StepCompleted,
    StepStarted,
    TextDelta,
    ToolArgsDelta,
    ToolCallEnded,
    ToolCallPending,
    ToolCallStarted,
    dumps,
)
from rxagent.messages import Conversation, ToolCallStatus
from rxagent.policies import StopReason
from rxagent.redis import (
    EventLog,
    EventsTrimmed,
    LogSettings,
    RedisUnavailable,
    RunNotFound,
    RunQueue,
    UnknownAgent,
    Worker,
    follow,
    observe,
)
from rxagent.redis._resume import recovery_conversation
from rxagent.redis._scripts import Scripts
from rxagent.redis.testing import RedisServer
from rxagent.state import RunStatus, fold
from tests.redis_support import assert_coherent, log_of

pytestmark = pytest.mark.timeout(30)


def many(n: int) -> ra.Agent:
    """An agent whose one step streams ``n`` text pieces."""
    return ra.Agent(ra.ScriptedProvider(lambda request: [f"t{i} " for i in range(n)]))


class Serving:
    """A worker serving ``agents`` in this process, for the length of a ``with``."""

    def __init__(self, client: redis.Redis, agents: dict[str, ra.Agent], **options: Any) -> None:
        self.worker = Worker(client, agents, **options)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Worker:
        self.task = asyncio.create_task(self.worker.run())
        return self.worker

    async def __aexit__(self, *exc: object) -> None:
        self.worker.stop(now=True)
        assert self.task is not None
        await self.task


async def test_a_run_is_observed_from_any_index_by_many_observers(
    redis_client: redis.Redis,
) -> None:
    async with Serving(redis_client, {"many": many(50)}):
        queue = RunQueue(redis_client)
        run_id = await queue.submit("many", "go")
        observers = [observe(redis_client, run_id) for _ in range(5)]
        results = await asyncio.gather(*(ra.collect_final(o) for o in observers))
    log = await log_of(redis_client, run_id)
    result = assert_coherent(log)
    assert all(r == result for r in results)
    assert result.text == "".join(f"t{i} " for i in range(50))
    events = [e for _, e in log]
    for after in (0, 7, len(events) - 2):
        replayed = [
            e async for e in ra.to_async_iterable(observe(redis_client, run_id, after=after))
        ]
        assert replayed == events[after + 1 :]
    info = await queue.info(run_id)
    assert info.status is RunStatus.COMPLETED and info.last_index == len(events) - 1
    assert info.agent == "many" and info.steps == 1 and info.conversation == result.messages
    assert (await queue.state(run_id)).result == result


async def test_a_failed_run_errors_its_observers_with_its_error_and_partial(
    redis_client: redis.Redis,
) -> None:
    broken = ra.Agent(ra.ScriptedProvider([["Half an answer", s.fail("the model fell over")]]))
    async with Serving(redis_client, {"broken": broken}):
        run_id = await RunQueue(redis_client).submit("broken", "hi")
        with pytest.raises(ProviderError, match="the model fell over") as caught:
            await ra.collect_final(observe(redis_client, run_id))
    assert caught.value.partial is not None
    assert ra.validate_conversation(caught.value.partial.messages) == []
    assert caught.value.partial.messages[0].content == "hi"
    log = await log_of(redis_client, run_id)
    assert [i for i, _ in log] == list(range(len(log)))
    failed = log[-1][1]
    assert isinstance(failed, RunFailed) and failed.error_type == "ProviderError"
    materialized = [
        e
        async for e in ra.to_async_iterable(
            observe(redis_client, run_id).pipe(ra.ops.materialize())
        )
    ]
    # The same events, the error as data again (a new RunFailed: only its time differs).
    assert materialized[:-1] == [e for _, e in log][:-1]
    assert materialized[-1].model_copy(update={"at": failed.at}) == failed
    info = await RunQueue(redis_client).info(run_id)
    assert info.status is RunStatus.FAILED and "the model fell over" in (info.error or "")


async def test_writes_are_batched_and_the_log_expires_after_the_run(
    redis_client: redis.Redis,
) -> None:
    await redis_client.config_resetstat()
    settings = LogSettings(ttl=600)
    async with Serving(redis_client, {"many": many(20_000)}, settings=settings):
        run_id = await RunQueue(redis_client).submit("many", "go")
        result = await ra.collect_final(observe(redis_client, run_id))
    assert len(result.text.split()) == 20_000
    log = await log_of(redis_client, run_id)
    assert len(log) == 20_000 + 4  # started, step started, texts, step completed, completed
    stats = await redis_client.info("commandstats")
    writes = sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
    assert writes < 500  # 20k events in few round trips
    ttl = await redis_client.ttl(f"rxagent:run:{run_id}:events")
    assert 0 < ttl <= 600 and 0 < await redis_client.ttl(f"rxagent:run:{run_id}") <= 600


async def test_a_paused_run_keeps_longer_and_a_trimmed_log_says_so(
    redis_client: redis.Redis,
) -> None:
    @ra.tool(approval=ra.approval.require_approval())
    def act() -> str:
        """Act."""
        return "done"

    waiting = ra.Agent(ra.ScriptedProvider([[s.call("act", {}, id="c1")]]), tools=[act])
    settings = LogSettings(ttl=60, paused_ttl=3600, max_events=20)
    async with Serving(redis_client, {"waiting": waiting, "many": many(500)}, settings=settings):
        queue = RunQueue(redis_client)
        paused = await queue.submit("waiting", "go")
        assert (await ra.collect_final(observe(redis_client, paused))).stop == "paused"
        assert 60 < await redis_client.ttl(f"rxagent:run:{paused}") <= 3600
        long = await queue.submit("many", "go")
        # An observer from the start reads as the run goes (before the trimming catches up)
        # or learns the early events are gone; a late one from the start, the latter.
        with pytest.raises(EventsTrimmed, match="were trimmed"):
            await ra.collect_final(observe(redis_client, long))
        info = await queue.info(long)
        result = await ra.collect_final(observe(redis_client, long, after=info.last_index - 1))
        assert result.text.split()[-1] == "t499"


async def test_unknown_runs_agents_and_an_unreachable_redis_are_clear_errors(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        await ra.collect_final(observe(redis_client, "nope"))
    with pytest.raises(RunNotFound):
        await RunQueue(redis_client).info("nope")
    checked = RunQueue(redis_client, agents={"echo": many(1)})
    with pytest.raises(UnknownAgent, match="no agent named 'other'; known agents: echo"):
        await checked.submit("other", "hi")
    # A worker without the agent fails the run, saying so.
    async with Serving(redis_client, {"echo": many(1)}):
        run_id = await RunQueue(redis_client).submit("other", "hi")
        with pytest.raises(ra.AgentError, match=r"UnknownAgent: worker .* no agent named 'other'"):
            await ra.collect_final(observe(redis_client, run_id))
    assert_log = await log_of(redis_client, run_id)
    assert [e.type for _, e in assert_log] == ["run_started", "run_failed"]

    nowhere = redis.Redis.from_url("redis://127.0.0.1:9/0")
    with pytest.raises(RedisUnavailable, match=r"cannot reach Redis at redis://127\.0\.0\.1:9/0"):
        await RunQueue(nowhere).submit("echo", "hi")
    with pytest.raises(RedisUnavailable, match="cannot reach Redis"):
        await ra.collect_final(observe(nowhere, "any"))
    with pytest.raises(RedisUnavailable, match="cannot reach Redis"):
        await Worker(nowhere, {"echo": many(1)}).run()
    await nowhere.aclose()


async def test_a_malformed_entry_is_skipped_with_a_warning(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    conversation = Conversation.of("hi")
    run = tiny_run(conversation, "fine")
    stream = "rxagent:run:hand-made:events"
    await redis_client.hset("rxagent:run:hand-made", mapping={"status": "completed", "last": "4"})
    entries = [dumps(run[0]), "{not json", None, dumps(run[1]), dumps(run[2])]
    for index, data in enumerate(entries):
        fields = {"x": "no event"} if data is None else {"e": data}
        await redis_client.xadd(stream, fields, id=f"0-{index + 1}")
    with caplog.at_level(logging.WARNING, logger="rxagent.redis"):
        seen = [e async for e in ra.to_async_iterable(observe(redis_client, "hand-made"))]
    assert seen == run
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped event 1: not a valid event" in w for w in warnings)
    assert any("skipped event 2: the entry has no 'e' field" in w for w in warnings)
    assert (await ra.collect_final(observe(redis_client, "hand-made"))).text == "fine"


def tiny_run(conversation: Conversation, text: str) -> list[AgentEvent]:
    """A tiny run's events: started, one text, completed."""
    done = conversation.copy()
    done.append(ra.AssistantMessage(content=text))
    return [
        RunStarted(step=1, input=conversation),
        TextDelta(step=1, text=text),
        RunCompleted(step=1, run=ra.AgentRun(messages=done, steps=1)),
    ]


async def test_a_writer_that_lost_its_lease_writes_nothing_more(redis_client: redis.Redis) -> None:
    await redis_client.hset(
        "rxagent:run:r1", mapping={"status": "running", "last": "-1", "lease": "a#1"}
    )
    lost: list[str] = []
    first = EventLog(redis_client, "r1", lease="a#1", on_lost=lost.append)
    first.append(RunStarted(step=1, input=Conversation.of("hi")))
    await first.flush()
    await redis_client.hset("rxagent:run:r1", "lease", "b#2")  # another worker took it over
    first.append(TextDelta(step=1, text="stale"))
    await first.flush()
    assert first.lost and lost == ["b#2"]
    assert [e.type for _, e in await log_of(redis_client, "r1")] == ["run_started"]
    # Writing a batch again (its reply lost with the connection) adds nothing twice.
    second = EventLog(redis_client, "r1", lease="b#2", state=fold([RunStarted(step=1)]))
    second.append(TextDelta(step=1, text="one"))
    await second.flush()
    second._written -= 1  # as if the reply had not come: the same batch goes again
    second._buffer.append(dumps(TextDelta(step=1, text="one")))
    await second.flush()
    assert [e.type for _, e in await log_of(redis_client, "r1")] == ["run_started", "text_delta"]


async def test_a_queued_run_cancelled_before_a_worker_takes_it_ends_cancelled(
    redis_client: redis.Redis,
) -> None:
    queue = RunQueue(redis_client)
    run_id = await queue.submit("many", "go")
    assert await queue.cancel(run_id)
    async with Serving(redis_client, {"many": many(10)}):
        result = await ra.collect_final(observe(redis_client, run_id))
    assert result.stop == "cancelled" and result.messages == Conversation.of("go")
    assert_coherent(await log_of(redis_client, run_id))


async def test_connection_lost_past_the_window_fails_the_run_keeping_its_partial(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    slow = ra.Agent(
        ra.ScriptedProvider(lambda r: [x for i in range(400) for x in (f"w{i} ", s.delay(0.005))])
    )
    failed = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "failed: lost the connection" in record.getMessage():
                loop.call_soon_threadsafe(failed.set)

    loop = asyncio.get_running_loop()
    handler = Watch()
    logging.getLogger("rxagent.redis").addHandler(handler)
    settings = LogSettings(reconnect_window=0.3)
    try:
        async with Serving(redis_client, {"slow": slow}, settings=settings):
            run_id = await RunQueue(redis_client).submit("slow", "go")
            seen = 0
            async for _ in follow(redis_client, run_id):
                seen += 1
                if seen == 20:
                    break
            await asyncio.to_thread(redis_server.stop)
            async with asyncio.timeout(10):
                await failed.wait()
            await asyncio.to_thread(redis_server.start)
            with pytest.raises(RedisUnavailable, match=r"for more than 0\.3s") as caught:
                await ra.collect_final(observe(redis_client, run_id))
    finally:
        logging.getLogger("rxagent.redis").removeHandler(handler)
    partial = caught.value.partial
    assert partial is not None and partial.stop == StopReason.ERROR
    assert partial.messages[0].content == "go"
    assert partial.messages[1].content.startswith("w0 w1 w2 ")  # the text it had streamed
    assert ra.validate_conversation(partial.messages) == []
    log = await log_of(redis_client, run_id)
    assert [i for i, _ in log] == list(range(len(log)))  # nothing lost, nothing twice
    assert len([e for _, e in log if e.type == "text_delta"]) >= 20
    assert (await RunQueue(redis_client).info(run_id)).status is RunStatus.FAILED


async def test_a_recovered_run_goes_on_with_its_steps_and_its_budget(
    redis_client: redis.Redis,
) -> None:
    @ra.tool
    def tick(n: int) -> int:
        """Tick."""
        return n

    def model(request: ra.ProviderRequest) -> s.Turn:
        n = sum(isinstance(m, ra.ToolMessage) for m in request.messages)
        return [f"step {n + 1} ", s.call("tick", {"n": n}, id=f"call-{n}")]

    agent = ra.Agent(ra.ScriptedProvider(model), tools=[tick], policy=ra.policies.max_steps(3))
    whole = agent.run("go")
    expected = await ra.collect_final(whole)
    # A worker ("ghost") took the run, wrote step 1 and the start of step 2, and died.
    queue = RunQueue(redis_client)
    run_id = await queue.submit("ticker", "go")
    await redis_client.xreadgroup("workers", "ghost", {"rxagent:jobs": ">"}, count=1)
    reply = await Scripts(redis_client).acquire(
        keys=[f"rxagent:run:{run_id}"], args=["ghost", "start", 0]
    )
    ghost = EventLog(redis_client, run_id, lease=reply[1].decode())
    events = list(whole.events)
    cut = next(i for i, e in enumerate(events) if isinstance(e, StepCompleted))
    for event in events[: cut + 3]:  # step 1, then step 2's StepStarted and first text
        ghost.append(event)
    await ghost.flush()
    assert fold(events[: cut + 3]).step_text == "step 2 "
    async with Serving(redis_client, {"ticker": agent}, heartbeat=0.05, claim_after=0.2):
        result = await ra.collect_final(observe(redis_client, run_id))
    log = await log_of(redis_client, run_id)
    assert assert_coherent(log) == result
    # The max_steps(3) budget went on from step 1: three steps, not four.
    assert result.stop == "max_steps" and result.steps == 3
    assert result.messages == expected.messages and result.usage == expected.usage
    assert [e.step for _, e in log if isinstance(e, StepStarted)] == [1, 2, 2, 3]
    (resumed,) = [e for _, e in log if isinstance(e, RunResumed)]
    assert resumed.step == 2 and resumed.input == fold(events[: cut + 1]).conversation
    assert fold(e for _, e in log).texts == {1: "step 1 ", 2: "step 2 ", 3: "step 3 "}


async def test_a_run_whose_workers_keep_dying_fails_after_max_attempts(
    redis_client: redis.Redis,
) -> None:
    # Two workers took the run over already (two RunResumed) and died; the third fails it.
    queue = RunQueue(redis_client)
    run_id = await queue.submit("many", "go")
    await redis_client.xreadgroup("workers", "ghost", {"rxagent:jobs": ">"}, count=1)
    reply = await Scripts(redis_client).acquire(
        keys=[f"rxagent:run:{run_id}"], args=["ghost", "start", 0]
    )
    ghost = EventLog(redis_client, run_id, lease=reply[1].decode())
    go = Conversation.of("go")
    for event in [RunStarted(step=1, input=go), StepStarted(step=1)]:
        ghost.append(event)
    for worker in ("ghost-2", "ghost-3"):
        ghost.append(RunResumed(step=1, input=go, worker=worker))
        ghost.append(StepStarted(step=1))
    await ghost.flush()
    async with Serving(
        redis_client, {"many": many(5)}, heartbeat=0.05, claim_after=0.2, max_attempts=3
    ):
        with pytest.raises(ra.AgentError, match="taken over 3 times") as caught:
            await ra.collect_final(observe(redis_client, run_id))
    assert caught.value.partial is not None and caught.value.partial.messages == go
    assert (await queue.info(run_id)).status is RunStatus.FAILED


# -- recovery semantics, no Redis needed ---------------------------------------------------
def test_run_resumed_voids_the_interrupted_step_in_the_fold() -> None:
    agent = ra.Agent(ra.ScriptedProvider([["Hello ", "world"]]))
    run = agent.run("hi")
    done = run.result()
    full = list(run.events)
    interrupted = [e for e in full if not isinstance(e, StepCompleted | RunCompleted)][:-1]
    state = fold(interrupted)
    assert state.text == "Hello " and state.status is RunStatus.RUNNING
    resumed = state.apply(RunResumed(step=1, input=Conversation.of("hi"), worker="b"))
    assert resumed.text == "" and resumed.phase is None and resumed.messages == state.messages
    again = fold(full[1:], resumed)
    assert again.result == done and again.texts == {1: "Hello world"}
    assert again.events == len(interrupted) + 1 + len(full) - 1


def test_a_recovered_step_carries_its_started_calls_with_their_ids() -> None:
    state = fold(
        [
            RunStarted(step=1, input=Conversation.of("go")),
            *_step_with_calls(),
        ]
    )
    conversation = recovery_conversation(state)
    turn = conversation[-1]
    assert isinstance(turn, ra.AssistantMessage) and turn.content is None
    assert [(c.id, c.status) for c in turn.tool_calls] == [
        ("started", ToolCallStatus.APPROVED),
        ("finished", ToolCallStatus.APPROVED),
        ("waiting", ToolCallStatus.PENDING),
    ]
    assert json.loads(turn.tool_calls[0].arguments) == {"x": 1}
    after = state.apply(RunResumed(step=1, input=conversation))
    assert set(after.calls) == {"started", "finished", "waiting"}  # "streaming" is void
    assert after.tool_calls == 3
    # Nothing of the step started: the step is simply done again.
    plain = fold([RunStarted(step=1, input=Conversation.of("go")), TextDelta(step=1, text="x")])
    assert recovery_conversation(plain) == Conversation.of("go")


def _step_with_calls() -> list[AgentEvent]:
    return [
        StepStarted(step=1),
        TextDelta(step=1, text="Let me see. "),
        ToolCallStarted(step=1, call_id="started", name="t", arguments={"x": 1}),
        ToolCallStarted(step=1, call_id="finished", name="t", arguments={"x": 2}),
        ToolCallEnded(step=1, call_id="finished", name="t", output="ok"),
        ToolCallPending(step=1, call_id="waiting", name="t", arguments={}, awaiting="approval"),
        ToolArgsDelta(step=1, call_id="streaming", name="t", delta='{"x'),
    ]


def test_importing_rxagent_loads_no_redis() -> None:
    code = "import sys, rxagent; print('redis' in sys.modules, 'rxagent.redis' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "False"], done.stderr
