"""Worker: runs the queue's runs, publishes their events, recovers runs of lost workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reactivex import abc
from redis.asyncio import Redis

from rxagent import ops
from rxagent.agent import Agent, Run
from rxagent.events import AgentEvent, RunCompleted, RunFailed, RunResumed, RunStarted
from rxagent.messages import Conversation
from rxagent.policies import StopReason
from rxagent.redis._codec import RunMeta, stream_entries, text
from rxagent.redis._errors import (
    CONNECTION_ERRORS,
    Backoff,
    RedisUnavailable,
    check_reachable,
    where,
)
from rxagent.redis._keys import DEFAULT_PREFIX, Keys, keys_of
from rxagent.redis._log import EventLog, LogSettings
from rxagent.redis._observe import follow
from rxagent.redis._queue import ensure_group
from rxagent.redis._resume import continued, recovery_conversation, resumed_agent
from rxagent.redis._scripts import Scripts
from rxagent.state import RunState, RunStatus

__all__ = ["Worker"]

log = logging.getLogger("rxagent.redis")


@dataclass
class _Job:
    """A run this worker has taken up."""

    job_id: str
    run_id: str
    task: asyncio.Task[None] | None = None
    run: Run | None = None
    log: EventLog | None = None
    subscription: abc.DisposableBase | None = None
    done: asyncio.Future[None] | None = None
    cancelled: bool = False
    #: Set when Redis stayed unreachable too long: the run is stopped and fails with it.
    unreachable: RedisUnavailable | None = None


class Worker:
    """Runs the runs of a :class:`RunQueue`, one of any number of workers in any number of
    processes sharing the load through a Redis consumer group.

    ``agents`` are the agents it serves, by the names runs are submitted with (every
    worker on a prefix should serve the same names: a run of an agent its worker does
    not have fails). It takes up to ``concurrency`` runs at once (``XREADGROUP``), runs
    each, appends its events to the run's log (:class:`EventLog`: batched, fenced by a
    lease) and acknowledges the job when the run has ended: completed, paused, cancelled
    or failed (a failed run's log ends with ``RunFailed``).

    Crash recovery: every ``heartbeat`` seconds the worker touches the jobs it runs;
    a job untouched for ``claim_after`` seconds (its worker died, or hung) is claimed
    by another worker (``XAUTOCLAIM``) and its run resumed from its last completed step:
    a ``RunResumed`` event, then the rest of the run, indices going on. The calls the
    interrupted step had started run again with the same call ids (at-least-once; a
    tool reads its call id from ``rxagent.tools.current_call`` to use it as an
    idempotency key). A run taken up more than ``max_attempts`` times fails.

    Cancel: :meth:`RunQueue.cancel` in any process reaches the worker through Pub/Sub,
    which cancels the run. Lost connection: Redis commands are retried with backoff;
    a run whose events cannot be written for ``settings.reconnect_window`` seconds is
    stopped and fails (``RedisUnavailable``), its partial conversation in its
    ``RunFailed`` once Redis is back (and in this worker's log at once).

    ``await worker.run()`` serves until :meth:`stop`; then it drains: takes no new run,
    lets the running ones end (for at most ``drain_timeout`` seconds, if given; runs
    left then are released to the other workers at once) and returns.
    """

    def __init__(
        self,
        client: Redis,
        agents: Mapping[str, Agent],
        *,
        prefix: str | Keys = DEFAULT_PREFIX,
        name: str | None = None,
        concurrency: int = 16,
        heartbeat: float = 1.0,
        claim_after: float = 10.0,
        max_attempts: int = 3,
        drain_timeout: float | None = None,
        settings: LogSettings | None = None,
    ) -> None:
        if not agents:
            raise ValueError("a worker needs at least one agent")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency!r}")
        if heartbeat <= 0 or claim_after <= 2 * heartbeat:
            raise ValueError(
                f"claim_after ({claim_after!r}) must be more than twice heartbeat ({heartbeat!r})"
            )
        self.client = client
        self.agents = dict(agents)
        self.keys = keys_of(prefix)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.concurrency = concurrency
        self.heartbeat = heartbeat
        self.claim_after = claim_after
        self.max_attempts = max_attempts
        self.drain_timeout = drain_timeout
        self.settings = settings or LogSettings()
        self._scripts = Scripts(client)
        self._jobs: dict[str, _Job] = {}
        self._stopping: asyncio.Event | None = None
        self._abort: asyncio.Event | None = None
        #: Set once the runs are drained: the heartbeat and control loops end.
        self._closing: asyncio.Event | None = None
        self._stop_asked = (False, False)  # (stop, now) asked for before run()
        self._slot_free: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Runs this worker has finished (ended, or handed back) since it started.
        self.handled = 0

    @property
    def running(self) -> set[str]:
        """The ids of the runs this worker runs now."""
        return set(self._jobs)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Connect (a clear :class:`RedisUnavailable` when Redis cannot be reached) and
        register the agents; :meth:`run` calls it."""
        await check_reachable(self.client)
        await ensure_group(self.client, self.keys)
        now = repr(time.time())
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.agents, mapping={n: self.name for n in self.agents})
            pipe.hset(self.keys.workers, self.name, now)
            # Whoever listens (a test, a dashboard) hears that this worker is up.
            pipe.publish(self.keys.control, json.dumps({"joined": self.name}))
            await pipe.execute()
        log.info(
            "worker %s serving %s on %s (prefix %r) since %s",
            self.name,
            ", ".join(sorted(self.agents)),
            where(self.client),
            self.keys.prefix,
            now,
        )

    async def run(self) -> None:
        """Serve until :meth:`stop` is called, then drain and return."""
        self._stopping = asyncio.Event()
        self._abort = asyncio.Event()
        self._closing = asyncio.Event()
        self._slot_free = asyncio.Event()
        if self._stop_asked[0]:
            self.stop(now=self._stop_asked[1])
        await self.start()
        loops = [
            asyncio.create_task(self._read_loop(), name=f"{self.name}-read"),
            asyncio.create_task(self._recover_loop(), name=f"{self.name}-recover"),
            asyncio.create_task(self._heartbeat_loop(), name=f"{self.name}-heartbeat"),
            asyncio.create_task(self._control_loop(), name=f"{self.name}-control"),
        ]
        try:
            await self._stopping.wait()
            # Drain: take nothing new (the loops that take runs see the stop after their
            # current read), let the running runs end, keep heart-beating them.
            await asyncio.gather(loops[0], loops[1], return_exceptions=True)
        finally:
            self._stopping.set()
            await self._drain()
            # The loops end on their own (a cancel can be lost inside a client call).
            self._closing.set()
            _, left = await asyncio.wait(loops, timeout=3 * self.heartbeat + 2)
            for task in left:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self.client.hdel(self.keys.workers, self.name)
            log.info("worker %s stopped", self.name)

    def stop(self, *, now: bool = False) -> None:
        """Begin draining; ``now``: stop at once, handing the running runs to the other
        workers. Call it on the worker's event loop (e.g. from a signal handler)."""
        if self._stopping is None:
            self._stop_asked = (True, now or self._stop_asked[1])
            return
        self._stopping.set()
        if now and self._abort is not None:
            self._abort.set()

    async def _drain(self) -> None:
        assert self._abort is not None
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        if tasks:
            log.info("worker %s draining %d run(s)", self.name, len(tasks))
            finished: asyncio.Future[Any] = asyncio.gather(*tasks, return_exceptions=True)
            abort: asyncio.Future[Any] = asyncio.ensure_future(self._abort.wait())
            await asyncio.wait(
                [finished, abort], timeout=self.drain_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            abort.cancel()
            if not finished.done():
                await self._release(list(self._jobs.values()))
                finished.cancel()
                await asyncio.gather(finished, return_exceptions=True)

    async def _release(self, jobs: list[_Job]) -> None:
        """Hand ``jobs`` to the other workers now (as if this worker had died long ago)."""
        for job in jobs:
            if job.subscription is not None:
                job.subscription.dispose()
            if job.log is not None:
                unwritten = job.log.abandon()
                if unwritten:
                    log.warning(
                        "run %s: %d event(s) not written; it resumes from its last completed "
                        "step on another worker",
                        job.run_id,
                        unwritten,
                    )
        ids: list[str | bytes | int | memoryview] = [job.job_id for job in jobs]
        if ids:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self.client.xclaim(
                    self.keys.jobs,
                    self.keys.group,
                    self.name,
                    0,
                    ids,
                    idle=int(self.claim_after * 1000) + 1,
                    justid=True,
                )
            log.warning("worker %s released %d run(s) to the other workers", self.name, len(ids))

    # -- the loops -----------------------------------------------------------------------
    def _free(self) -> int:
        return self.concurrency - len(self._jobs)

    async def _wait_for_slot(self) -> None:
        assert self._slot_free is not None
        while self._free() <= 0:
            self._slot_free.clear()
            await self._slot_free.wait()

    async def _read_loop(self) -> None:
        assert self._stopping is not None
        backoff = Backoff(float("inf"), cap=2.0)
        while not self._stopping.is_set():
            await self._wait_for_slot()
            try:
                reply = await self.client.xreadgroup(
                    self.keys.group,
                    self.name,
                    {self.keys.jobs: ">"},
                    count=self._free(),
                    block=1000,
                )
            except CONNECTION_ERRORS as error:
                self._connection_trouble(backoff, "reading jobs", error)
                await backoff.wait()
                continue
            except Exception as error:
                if "NOGROUP" in str(error):  # the jobs stream was deleted: make it again
                    await self._ensure_group()
                    continue
                raise
            backoff.reset()
            for entry, fields in stream_entries(reply):
                self._take(text(entry) or "", fields)

    async def _ensure_group(self) -> None:
        with contextlib.suppress(*CONNECTION_ERRORS):
            await ensure_group(self.client, self.keys)

    async def _recover_loop(self) -> None:
        backoff = Backoff(float("inf"), cap=2.0)
        idle = int(self.claim_after * 1000)
        while not await self._stopped_within(self.heartbeat):
            if self._free() <= 0:
                continue
            try:
                reply = await self.client.xautoclaim(
                    self.keys.jobs, self.keys.group, self.name, idle, "0-0", count=self._free()
                )
            except CONNECTION_ERRORS as error:
                self._connection_trouble(backoff, "claiming runs of lost workers", error)
                await backoff.wait()
                continue
            except Exception as error:
                if "NOGROUP" in str(error):
                    await self._ensure_group()
                    continue
                raise
            backoff.reset()
            for entry, fields in reply[1] if reply else ():
                job_id = text(entry) or ""
                if job_id in {job.job_id for job in self._jobs.values()}:
                    continue  # our own (we were slow to heart-beat): we run it still
                log.warning("worker %s recovers job %s of a lost worker", self.name, job_id)
                self._take(job_id, fields)

    async def _stopped_within(self, seconds: float, event: asyncio.Event | None = None) -> bool:
        """Wait ``seconds``, or less if ``event`` (default: the stop) is set; is it set?"""
        event = event or self._stopping
        assert event is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        return event.is_set()

    async def _heartbeat_loop(self) -> None:
        backoff = Backoff(float("inf"), cap=2.0)
        while not await self._stopped_within(self.heartbeat, self._closing):
            jobs = [job for job in self._jobs.values() if job.log is not None]
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.hset(self.keys.workers, self.name, repr(time.time()))
                    for job in jobs:
                        pipe.hget(self.keys.meta(job.run_id), "lease")
                    _, *leases = await pipe.execute()
                held: list[str | bytes | int | memoryview] = []
                for job, lease in zip(jobs, leases, strict=True):
                    if job.log is not None and text(lease) != job.log.lease:
                        log.warning(
                            "run %s: taken over by %s; this worker stops it",
                            job.run_id,
                            text(lease),
                        )
                        job.log.lost = True
                        self._lost(job)
                    else:
                        held.append(job.job_id)
                if held:
                    # Claiming our own pending jobs resets their idle time: the heartbeat.
                    await self.client.xclaim(
                        self.keys.jobs, self.keys.group, self.name, 0, held, justid=True
                    )
            except CONNECTION_ERRORS as error:
                self._connection_trouble(backoff, "heart-beating", error)
                continue
            backoff.reset()

    async def _control_loop(self) -> None:
        assert self._closing is not None
        backoff = Backoff(float("inf"), cap=2.0)
        while not self._closing.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.control)
                # Cancellations asked for while we were not listening: the flag is in
                # each run's metadata.
                await self._check_cancel_flags()
                backoff.reset()
                while not self._closing.is_set():
                    message = await pubsub.get_message(timeout=0.5)
                    if message is not None:
                        self._control(message.get("data"))
            except CONNECTION_ERRORS as error:
                self._connection_trouble(backoff, "listening for cancellations", error)
                await backoff.wait()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _control(self, data: Any) -> None:
        try:
            message = json.loads(text(data) or "")
        except ValueError:
            log.warning("worker %s: skipped a malformed control message %r", self.name, data)
            return
        run_id = message.get("cancel") if isinstance(message, dict) else None
        if run_id is None:
            return  # a message for others (a worker joined)
        if isinstance(run_id, str):
            self._cancel(run_id)

    def _cancel(self, run_id: str) -> None:
        job = self._jobs.get(run_id)
        if job is not None and not job.cancelled:
            job.cancelled = True
            if job.run is not None:
                log.info("worker %s cancels run %s", self.name, run_id)
                job.run.cancel()

    async def _check_cancel_flags(self) -> None:
        for run_id in list(self._jobs):
            if text(await self.client.hget(self.keys.meta(run_id), "cancel")) == "1":
                self._cancel(run_id)

    def _connection_trouble(self, backoff: Backoff, what: str, error: BaseException) -> None:
        if backoff.failed_at is None:
            log.warning(
                "worker %s: lost the connection to Redis at %s while %s (%s); reconnecting",
                self.name,
                where(self.client),
                what,
                error or type(error).__name__,
            )

    # -- one run -------------------------------------------------------------------------
    def _take(self, job_id: str, fields: Mapping[Any, Any]) -> None:
        data = {text(k): text(v) for k, v in fields.items()}
        run_id, kind = data.get("run"), data.get("kind") or "start"
        if not run_id:
            log.warning("worker %s: skipped malformed job %s: %r", self.name, job_id, data)
            asyncio.get_running_loop().create_task(self._ack(job_id))
            return
        if run_id in self._jobs:
            return
        job = _Job(job_id, run_id)
        self._jobs[run_id] = job
        job.task = asyncio.get_running_loop().create_task(
            self._handle(job, kind), name=f"run-{run_id}"
        )

    async def _ack(self, job_id: str) -> None:
        async def ack() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xack(self.keys.jobs, self.keys.group, job_id)
                pipe.xdel(self.keys.jobs, job_id)
                await pipe.execute()

        backoff = Backoff(self.settings.reconnect_window)
        while True:
            try:
                await ack()
                return
            except CONNECTION_ERRORS:
                if backoff.expired:
                    log.warning("could not acknowledge job %s; another worker may see it", job_id)
                    return
                await backoff.wait()

    async def _handle(self, job: _Job, kind: str) -> None:
        try:
            done = await self._run_job(job, kind)
            if done and not (job.log is not None and job.log.acked):
                await self._ack(job.job_id)
        except asyncio.CancelledError:
            raise
        except CONNECTION_ERRORS as error:
            # Before the run started: the job stays pending; this or another worker
            # takes it up again once Redis is back (it is not acknowledged).
            log.warning("run %s: Redis unreachable while taking it up (%s)", job.run_id, error)
            await self._release([job])
        except Exception:
            log.exception("run %s: the worker failed to run it", job.run_id)
        finally:
            self._jobs.pop(job.run_id, None)
            self.handled += 1
            if self._slot_free is not None:
                self._slot_free.set()

    async def _run_job(self, job: _Job, kind: str) -> bool:
        """Run one job; returns whether it is done with (to be acknowledged)."""
        run_id = job.run_id
        reply = await self._scripts.acquire(
            keys=[self.keys.meta(run_id)], args=[self.name, kind, repr(time.time())]
        )
        code = int(reply[0])
        if code == -1:
            log.warning("run %s: no metadata (expired or deleted); its job is dropped", run_id)
            return True
        if code == -2:
            return True  # it ended (or waits for decisions) already
        lease = text(reply[1]) or ""
        last, cancel = int(reply[2]), text(reply[3]) == "1"
        status = RunStatus(text(reply[4]) or RunStatus.QUEUED)
        fields = reply[5]
        info = RunMeta.of(run_id, dict(zip(fields[::2], fields[1::2], strict=True)))
        whole, segment, segment_start, taken_over = await self._read_log(run_id, last)
        event_log = EventLog(
            self.client,
            run_id,
            lease=lease,
            keys=self.keys,
            scripts=self._scripts,
            settings=self.settings,
            state=whole,
            job=job.job_id,
            on_lost=lambda holder: self._lost(job),
            on_unreachable=lambda error: self._unreachable(job, error),
        )
        job.log = event_log
        # What to run. A new run: on its input. A paused run whose calls were decided: on
        # the conversation with the decisions, as a new segment of the same log (its own
        # RunStarted; steps count from 1, as for `agent.run(messages)` in one process).
        # A run whose worker was lost: the rest of it, on the conversation as of the
        # segment's last completed step (with the interrupted step's started calls),
        # after a RunResumed, its steps and its policy's budget going on.
        conversation = info.conversation or Conversation()
        resumed: RunResumed | None = None
        if last >= 0 and not (kind == "resume" and status is RunStatus.PAUSED):
            conversation = recovery_conversation(segment)
            resumed = RunResumed(step=segment.steps + 1, input=conversation, worker=self.name)
            segment = segment.apply(resumed)
        agent = self.agents.get(info.agent)
        failure: str | None = None
        if agent is None:
            failure = (
                f"UnknownAgent: worker {self.name} has no agent named {info.agent!r} "
                f"(it serves {', '.join(sorted(self.agents))})"
            )
        elif resumed is not None and taken_over + 2 > self.max_attempts:
            failure = (
                f"AgentError: the run was taken over {taken_over + 1} times, its worker lost "
                f"each time (max_attempts={self.max_attempts})"
            )
        else:
            if resumed is not None:
                elapsed = max(0.0, time.time() - segment_start)
                agent = resumed_agent(agent, segment.loop_state(elapsed))
            try:
                run = agent.run(conversation)
            except Exception as error:  # a conversation that cannot be resumed
                failure = f"{type(error).__name__}: {getattr(error, 'message', None) or error}"
        if failure is not None:
            await self._fail(
                job, event_log, resumed or RunStarted(step=1, input=conversation), failure
            )
            return True
        job.run = run
        if resumed is not None:
            log.info("worker %s resumes run %s at step %d", self.name, run_id, resumed.step)
        shift = continued(segment, resumed) if resumed is not None else None
        loop = asyncio.get_running_loop()
        job.done = loop.create_future()

        def on_next(event: AgentEvent) -> None:
            if shift is not None:
                event = shift(event)
            if job.unreachable is not None and isinstance(event, RunCompleted):
                # The run was stopped for want of Redis: it fails, with what it did.
                error = job.unreachable
                partial = event.run.model_copy(update={"stop": StopReason.ERROR})
                event = RunFailed(
                    step=event.step,
                    error_type=type(error).__name__,
                    message=error.message,
                    partial=partial,
                )
                log.error(
                    "run %s failed: %s; its partial conversation: %s",
                    job.run_id,
                    error.message,
                    partial.messages.to_json(),
                )
            event_log.append(event)

        def on_completed() -> None:
            if job.done is not None and not job.done.done():
                job.done.set_result(None)

        if cancel or job.cancelled:
            job.cancelled = True
            run.cancel()
        job.subscription = run.pipe(ops.materialize()).subscribe(
            on_next, lambda error: on_completed(), on_completed
        )
        await job.done
        await event_log.flush()
        return not event_log.lost

    async def _read_log(self, run_id: str, last: int) -> tuple[RunState, RunState, float, int]:
        """The fold of the run's log so far, the fold of its current segment (from its
        last ``RunStarted``), when that segment began, and how many times it was taken
        over already (its ``RunResumed`` events)."""
        whole = segment = RunState()
        start = time.time()
        taken_over = 0
        if last < 0:
            return whole, segment, start, taken_over
        async for _, event in follow(self.client, run_id, prefix=self.keys, live=False):
            whole = whole.apply(event)
            if isinstance(event, RunStarted):
                segment, start, taken_over = RunState(), event.at, 0
            elif isinstance(event, RunResumed):
                taken_over += 1
            segment = segment.apply(event)
        return whole, segment, start, taken_over

    async def _fail(
        self, job: _Job, event_log: EventLog, opening: AgentEvent, failure: str
    ) -> None:
        """End the run failed before it ran: ``opening`` (its ``RunStarted``, or the
        ``RunResumed`` of its recovery), then ``RunFailed``."""
        error_type, _, message = failure.partition(": ")
        event_log.append(opening)
        event_log.append(
            RunFailed(
                step=opening.step,
                error_type=error_type,
                message=message,
                partial=event_log.state.to_run(StopReason.ERROR),
            )
        )
        log.error("run %s failed: %s", job.run_id, failure)
        await event_log.flush()

    def _lost(self, job: _Job) -> None:
        # Another worker holds the run now (or its data is gone): stop ours, quietly.
        if job.subscription is not None:
            job.subscription.dispose()
        if job.done is not None and not job.done.done():
            job.done.set_result(None)

    def _unreachable(self, job: _Job, error: RedisUnavailable) -> None:
        # Redis has been gone too long: stop the run, which then fails (see on_next);
        # the failure, with the partial conversation, is written once Redis is back.
        if job.unreachable is None and job.run is not None and not job.run.done:
            job.unreachable = error
            job.run.cancel()
