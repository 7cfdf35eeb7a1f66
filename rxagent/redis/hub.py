"""RedisHub: ``rxagent.web``'s run hub on Redis, so any web process serves any run.

::

    from rxagent.redis.hub import RedisHub
    from rxagent.web import create_app

    app = create_app(hub=RedisHub(redis.asyncio.Redis.from_url(url), agents))

Runs are started through a :class:`~rxagent.redis.RunQueue` and run on the worker
pool (``rxagent worker module:agents``, serving the same agents); every web process
with a ``RedisHub`` on the same Redis and prefix serves every run: its state, its
events from any index (so ``Last-Event-ID`` resumes across processes with no gap
and no repeat: the index is the stream entry's id), decisions and cancellation. The
semantics are :class:`~rxagent.web.hub.RunHub`'s: one log per run across pauses
(a decided run goes on as a new segment, with its own ``RunStarted``), runs outlive
their readers, a principal sees only its own runs.

Needs both extras (``rxagent[web,redis]``). A reader waiting for events costs no
connection of its own: one watcher per run and process blocks on Redis
(``XREAD BLOCK``) and wakes the readers of that run.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from rxagent.agent import Agent
from rxagent.errors import ApprovalError
from rxagent.events import AgentEvent, RunStarted
from rxagent.messages import Conversation, ConversationInput
from rxagent.redis._codec import entry_id, read_entries, stream_entries, text
from rxagent.redis._errors import CONNECTION_ERRORS, Backoff, check_reachable
from rxagent.redis._keys import DEFAULT_PREFIX, Keys, keys_of
from rxagent.redis._queue import RunQueue
from rxagent.state import RunState, RunStatus
from rxagent.web.hub import (
    CallDecision,
    EventsGone,
    HubError,
    InvalidDecision,
    Page,
    Principal,
    RunConflict,
    RunHub,
    RunInfo,
    RunNotFound,
    agent_named,
    new_run_id,
)

__all__ = ["RedisHub"]

log = logging.getLogger("rxagent.redis")

#: How long a waiting reader sleeps at most before it looks again (a run that expired).
_LOOK_AGAIN = 1.0


class _Watch:
    """One run's watcher in this process: blocks on its stream, wakes its readers."""

    __slots__ = ("readers", "seen", "task", "waiter")

    def __init__(self, seen: int) -> None:
        #: The highest index known to be in the log.
        self.seen = seen
        self.readers = 0
        self.task: asyncio.Task[None] | None = None
        self.waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake(self) -> None:
        waiter, self.waiter = self.waiter, asyncio.get_running_loop().create_future()
        if not waiter.done():
            waiter.set_result(None)


class _Fold:
    """A run's state folded so far in this process, from which to go on."""

    __slots__ = ("next", "segments", "state")

    def __init__(self) -> None:
        self.next = 0
        self.state = RunState()
        self.segments: list[int] = []


class RedisHub(RunHub):
    """A :class:`~rxagent.web.hub.RunHub` whose runs live in Redis and run on workers.

    ``agents`` are the agents the workers serve, by name (the first is the default):
    the hub checks names and decisions against them (unknown agent: 404; edited
    arguments that do not fit: 422) before anything reaches Redis. ``prefix`` must be
    the workers'. The run's time to live is the workers' (``LogSettings.ttl``); a
    paused run waits ``paused_ttl``. ``folds`` bounds how many runs' folded states this
    process keeps to answer :meth:`info` incrementally.
    """

    def __init__(
        self,
        client: Redis,
        agents: Mapping[str, Agent],
        *,
        prefix: str | Keys = DEFAULT_PREFIX,
        folds: int = 1000,
    ) -> None:
        if not agents:
            raise ValueError("a hub needs at least one agent")
        self.client = client
        self.agents = dict(agents)
        self.keys = keys_of(prefix)
        self.queue = RunQueue(client, prefix=self.keys)
        self._watches: dict[str, _Watch] = {}
        self._folds: OrderedDict[str, _Fold] = OrderedDict()
        self._max_folds = folds
        self._checked = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisHub agents={list(self.agents)} prefix={self.keys.prefix!r}>"

    def agent_names(self) -> Sequence[str]:
        return list(self.agents)

    # -- starting, deciding, cancelling --------------------------------------------------
    async def start(
        self, agent: str, input: ConversationInput, *, principal: Principal = None
    ) -> str:
        if self._closed:
            raise HubError("the hub is closed")
        found = agent_named(self.agents, agent)
        conversation = Conversation.of(input)
        try:
            found.run(conversation.copy())  # checks a resumed turn; nothing starts here
        except ApprovalError as error:
            raise InvalidDecision(error.message) from None
        return await self.queue.submit(agent, conversation, owner=principal, run_id=new_run_id())

    async def decide(
        self, run_id: str, decisions: Sequence[CallDecision], *, principal: Principal = None
    ) -> int:
        agent, _ = await self._owned(run_id, principal)
        if not decisions:
            raise InvalidDecision("no decisions given")
        found = self.agents.get(agent)

        def apply(conversation: Conversation) -> None:
            try:
                for decision in decisions:
                    if decision.decision == "approve":
                        conversation.approve(decision.call_id, arguments=decision.arguments)
                    else:
                        conversation.reject(
                            decision.call_id, decision.reason or "The user declined this call."
                        )
            except ApprovalError as error:
                raise RunConflict(error.message) from None
            if found is not None:
                try:
                    found.run(conversation.copy())  # the approved arguments fit? not started
                except ApprovalError as error:
                    raise InvalidDecision(error.message) from None

        try:
            return await self.queue.decide(run_id, apply)
        except ApprovalError as error:  # not paused (any more)
            raise RunConflict(error.message) from None

    async def cancel(self, run_id: str, *, principal: Principal = None) -> None:
        _, status = await self._owned(run_id, principal)
        if not await self.queue.cancel(run_id):
            raise RunConflict(f"run {run_id} is already {status.value}")

    async def close(self) -> None:
        """Stop this process's watchers (the runs go on, on their workers)."""
        self._closed = True
        for watch in self._watches.values():
            if watch.task is not None:
                watch.task.cancel()
            watch.wake()
        tasks = [w.task for w in self._watches.values() if w.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watches.clear()

    # -- reading -------------------------------------------------------------------------
    async def read(
        self,
        run_id: str,
        after: int | None = None,
        *,
        principal: Principal = None,
        wait: float | None = None,
        limit: int = 1000,
        stop_at_pause: bool = False,
    ) -> Page:
        if not self._checked:
            await check_reachable(self.client)
            self._checked = True
        start = 0 if after is None else max(0, after + 1)
        loop = asyncio.get_running_loop()
        deadline = None if wait is None else loop.time() + wait
        while True:
            page, last = await self._page(run_id, start, principal, max(1, limit))
            if page.events:
                return page
            if page.end is not None and (page.end is not RunStatus.PAUSED or stop_at_pause):
                return page  # the log ended (for good, or at a pause for this reader)
            if self._closed:
                raise HubError("the hub is closed")
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return page
            await self._wait(run_id, page.start, last, min(left or _LOOK_AGAIN, _LOOK_AGAIN))

    async def _page(
        self, run_id: str, start: int, principal: Principal, limit: int
    ) -> tuple[Page, int]:
        """The page from ``start``, and the log's last index."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hmget(self.keys.meta(run_id), ["owner", "status", "last", "resuming"])
            pipe.xrange(self.keys.events(run_id), entry_id(start), "+", count=limit)
            (owner, status_text, last_text, resuming), entries = await pipe.execute()
        if status_text is None or (text(owner) or None) != principal:
            raise RunNotFound(f"no run {run_id!r}")
        status = RunStatus(text(status_text) or RunStatus.QUEUED)
        last = int(text(last_text) or -1)
        events: list[AgentEvent] = []
        json: list[str] = []
        first = start
        for entry in read_entries(entries, run_id):
            index, event = entry.index, entry.event
            if not events and index > first and event is not None:
                # The log was trimmed past what was asked for (max_events, once the run
                # ended): those events are gone; say so rather than skip over them.
                raise EventsGone(
                    f"events {first} to {index - 1} of run {run_id} are no longer kept "
                    f"(max_events); read from index {index}"
                )
            if event is None:  # malformed: skipped (and logged); the page stops before it
                if not events:
                    first = index + 1
                    continue
                break
            if index != first + len(events):
                break  # a gap (trimmed entries): the next page starts after it
            events.append(event)
            json.append(entry.json)
        # The page ends the log (for now) when it reaches its last event and the run
        # is over: it ended, or it is paused with no resume queued.
        over = status.is_final and not (status is RunStatus.PAUSED and text(resuming) == "1")
        end = status if over and first + len(events) - 1 >= last else None
        return Page(first, events, json, end), last

    async def _wait(self, run_id: str, start: int, last: int, seconds: float) -> None:
        """Wait until the log has an event of index ``start`` or later (or ``seconds``)."""
        watch = self._watches.get(run_id)
        if watch is None:
            watch = self._watches[run_id] = _Watch(last)
        watch.seen = max(watch.seen, last)
        if watch.seen >= start:
            return
        watch.readers += 1
        if watch.task is None or watch.task.done():
            watch.task = asyncio.get_running_loop().create_task(self._watch(run_id, watch))
        try:
            # asyncio.wait, not await: a reader that is cancelled must not cancel the
            # future the other readers wait on.
            await asyncio.wait((watch.waiter,), timeout=seconds)
        finally:
            watch.readers -= 1

    async def _watch(self, run_id: str, watch: _Watch) -> None:
        stream = self.keys.events(run_id)
        backoff = Backoff(float("inf"), cap=1.0)
        try:
            while watch.readers > 0 and not self._closed:
                try:
                    reply: Any = await self.client.xread(
                        {stream: entry_id(watch.seen)}, count=1000, block=1000
                    )
                except CONNECTION_ERRORS:
                    await backoff.wait()
                    continue
                backoff.reset()
                entries = stream_entries(reply)
                if entries:
                    indices = [entry.index for entry in read_entries(entries, run_id)]
                    if indices:
                        watch.seen = max(watch.seen, *indices)
                    watch.wake()
        finally:
            if self._watches.get(run_id) is watch and watch.readers == 0:
                del self._watches[run_id]

    async def info(self, run_id: str, *, principal: Principal = None) -> RunInfo:
        fields = await self.client.hgetall(self.keys.meta(run_id))
        data = {text(k): text(v) for k, v in fields.items()}
        if not data or (data.get("owner") or None) != principal:
            raise RunNotFound(f"no run {run_id!r}")
        fold = self._folds.pop(run_id, None) or _Fold()
        self._folds[run_id] = fold  # the most recently used last
        while len(self._folds) > self._max_folds:
            self._folds.popitem(last=False)
        input_json = data.get("input")
        if fold.next == 0 and input_json:
            fold.state = RunState.of(Conversation.from_json(input_json))
        while True:
            entries: Any = await self.client.xrange(
                self.keys.events(run_id), entry_id(fold.next), "+", count=1000
            )
            if not entries:
                break
            for entry in read_entries(entries, run_id):
                index, event = entry.index, entry.event
                fold.next = index + 1
                if event is None:
                    continue
                if isinstance(event, RunStarted):
                    fold.segments.append(index)
                fold.state = fold.state.apply(event)
        return RunInfo(
            run_id=run_id,
            agent=data.get("agent") or "",
            owner=principal,
            created_at=float(data.get("created") or 0),
            segments=tuple(fold.segments),
            state=fold.state,
        )

    async def _owned(self, run_id: str, principal: Principal) -> tuple[str, RunStatus]:
        agent, owner, status = await self.client.hmget(
            self.keys.meta(run_id), ["agent", "owner", "status"]
        )
        if status is None or (text(owner) or None) != principal:
            raise RunNotFound(f"no run {run_id!r}")
        return text(agent) or "", RunStatus(text(status) or RunStatus.QUEUED)
