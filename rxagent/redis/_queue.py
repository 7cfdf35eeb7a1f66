"""RunQueue: submit runs to the worker pool, and control them from any process."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from reactivex import Observable
from redis.asyncio import Redis

from rxagent.agent import Agent
from rxagent.errors import ApprovalError
from rxagent.events import AgentEvent, AgentRun, RunCompleted, RunStarted
from rxagent.messages import Conversation, ConversationInput
from rxagent.policies import StopReason
from rxagent.redis._codec import RunMeta, text
from rxagent.redis._errors import RunNotFound, UnknownAgent, check_reachable
from rxagent.redis._keys import DEFAULT_PREFIX, Keys, keys_of
from rxagent.redis._log import EventLog
from rxagent.redis._observe import follow, observe
from rxagent.redis._scripts import Scripts
from rxagent.state import RunState, RunStatus

__all__ = ["RunQueue", "new_run_id"]


def new_run_id() -> str:
    """An unguessable run id: 192 random bits, URL-safe (as rxagent.web's)."""
    return secrets.token_urlsafe(24)


class RunQueue:
    """The front of the worker pool: submit runs, read them, cancel them, decide their
    waiting calls; from any process.

    ``agents`` (optional) are the agents the workers serve, by name: given them, the
    queue refuses a run of an unknown agent at once (:class:`UnknownAgent`, instead of
    the run failing on a worker), and checks a call's edited arguments against its
    tool's schema when it is approved (else the worker finds out when it resumes, and
    the run fails with the ``ApprovalError``).
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str | Keys = DEFAULT_PREFIX,
        agents: Mapping[str, Agent] | None = None,
    ) -> None:
        self.client = client
        self.keys = keys_of(prefix)
        self.agents = dict(agents) if agents is not None else None
        self._scripts = Scripts(client)
        self._ready = False

    async def _connect(self) -> None:
        if self._ready:
            return
        await check_reachable(self.client)
        await ensure_group(self.client, self.keys)
        self._ready = True

    # -- submitting ----------------------------------------------------------------------
    async def submit(
        self,
        agent: str,
        input: ConversationInput,
        *,
        owner: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """Queue a run of the agent named ``agent`` on ``input`` (text, messages or a
        Conversation); returns its id. A worker serving that agent picks it up.

        ``owner`` (a principal) is recorded with the run. Raises :class:`UnknownAgent`
        when the queue knows its agents and ``agent`` is not one of them, and
        ``ApprovalError`` for a conversation whose waiting calls cannot be resumed.
        """
        conversation = Conversation.of(input)
        if self.agents is not None:
            found = self.agents.get(agent)
            if found is None:
                raise UnknownAgent(
                    f"no agent named {agent!r}; known agents: {', '.join(sorted(self.agents))}"
                )
            found.run(conversation.copy())  # raises ApprovalError for a bad resume; not started
        await self._connect()
        if run_id is None:
            run_id = new_run_id()
        elif await self.client.exists(self.keys.meta(run_id)):
            raise ValueError(f"a run with id {run_id!r} exists already")
        now = repr(time.time())
        meta: dict[str | bytes | bytearray | memoryview | int | float, str | int | float] = {
            "status": RunStatus.QUEUED.value,
            "agent": agent,
            "owner": owner or "",
            "created": now,
            "updated": now,
            "last": "-1",
            "input": conversation.to_json(),
        }
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.meta(run_id), mapping=meta)
            pipe.xadd(self.keys.jobs, {"run": run_id, "kind": "start"})
            await pipe.execute()
        return run_id

    # -- reading -------------------------------------------------------------------------
    async def info(self, run_id: str) -> RunMeta:
        """The run's metadata: status, agent, owner, last index, its conversation, ..."""
        fields = await self.client.hgetall(self.keys.meta(run_id))
        if not fields:
            raise RunNotFound(run_id)
        return RunMeta.of(run_id, fields)

    async def state(self, run_id: str) -> RunState:
        """The run's state now: the fold of the events in its log."""
        info = await self.info(run_id)
        state = RunState.of(info.conversation or Conversation())
        async for _, event in follow(self.client, run_id, prefix=self.keys, live=False):
            state = state.apply(event)
        return state

    def observe(self, run_id: str, after: int | None = None) -> Observable[AgentEvent]:
        """The run's events, replayed then live (see :func:`rxagent.redis.observe`)."""
        return observe(self.client, run_id, after, prefix=self.keys)

    async def workers(self) -> dict[str, float]:
        """The workers on this prefix that are running (or died without saying so), each
        with the time of its last heartbeat."""
        found = await self.client.hgetall(self.keys.workers)
        return {text(name) or "": float(text(seen) or 0) for name, seen in found.items()}

    async def agent_names(self) -> set[str]:
        """The names of the agents the workers on this prefix serve (or have served)."""
        return {text(name) or "" for name in await self.client.hkeys(self.keys.agents)}

    # -- control -------------------------------------------------------------------------
    async def cancel(self, run_id: str) -> bool:
        """Cancel the run, from any process. A running run: the worker running it cancels
        it, and it ends with ``RunCompleted(stop="cancelled")``; a queued one ends so when
        a worker takes it up. A paused run ends at once: a segment of ``RunStarted`` and
        ``RunCompleted(stop="cancelled")`` is appended (its calls stay undecided).
        Returns ``False`` when the run had ended already."""
        await self._connect()
        meta_key = self.keys.meta(run_id)
        status, resuming, snapshot = await self.client.hmget(
            meta_key, ["status", "resuming", "snapshot"]
        )
        if status is None:
            raise RunNotFound(run_id)
        state = RunStatus(text(status) or RunStatus.QUEUED)
        if state is RunStatus.PAUSED and text(resuming) != "1" and snapshot is not None:
            return await self._cancel_paused(run_id, Conversation.from_json(text(snapshot) or ""))
        if state.is_final:
            return False
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(meta_key, "cancel", "1")
            pipe.publish(self.keys.control, json.dumps({"cancel": run_id}))
            await pipe.execute()
        return True

    async def _cancel_paused(self, run_id: str, conversation: Conversation) -> bool:
        reply = await self._scripts.acquire(
            keys=[self.keys.meta(run_id)], args=[f"cancel-{new_run_id()}", "resume", time.time()]
        )
        if int(reply[0]) < 0:
            return False  # it ended meanwhile
        event_log = EventLog(
            self.client,
            run_id,
            lease=text(reply[1]) or "",
            keys=self.keys,
            scripts=self._scripts,
            next_index=int(reply[2]) + 1,
        )
        # The events a run cancelled before it began has (see Run.cancel).
        event_log.append(RunStarted(step=1, input=conversation.copy()))
        run = AgentRun(messages=conversation.copy(), stop=StopReason.CANCELLED)
        event_log.append(RunCompleted(step=1, run=run))
        await event_log.flush()
        return not event_log.lost

    async def decide(self, run_id: str, decisions: Callable[[Conversation], None]) -> int:
        """Decide waiting calls of a paused run and queue its resume; returns the index
        the resumed segment's first event gets.

        ``decisions`` applies the decisions to (a copy of) the paused conversation with
        its own methods, e.g. ``lambda c: (c.approve("call_1"), c.reject("call_2",
        "no"))``; it is all or nothing: if it raises (``ApprovalError``: a call that does
        not wait, arguments that are not JSON), nothing changes. A worker then runs the
        run on the decided conversation under the same id, as a new segment of its log
        (its own ``RunStarted``): approved calls run, rejected ones are answered, calls
        left undecided pause it again. Where the queue knows the agent (``agents``), the
        approved arguments are checked against the tool's schema first. Raises
        :class:`RunNotFound`, or ``ApprovalError`` when the run is not paused.
        """
        await self._connect()
        meta_key = self.keys.meta(run_id)
        while True:
            agent, status, resuming, raw = await self.client.hmget(
                meta_key, ["agent", "status", "resuming", "snapshot"]
            )
            if status is None:
                raise RunNotFound(run_id)
            if text(status) != RunStatus.PAUSED.value or text(resuming) == "1" or raw is None:
                now = "running (its resume is queued)" if text(resuming) == "1" else text(status)
                raise ApprovalError(f"run {run_id} is {now}; only a paused run takes decisions")
            read = text(raw) or ""
            conversation = Conversation.from_json(read).copy()
            decisions(conversation)
            if self.agents is not None:
                found = self.agents.get(text(agent) or "")
                if found is not None:
                    found.run(conversation.copy())  # checks approved arguments; not started
            reply = await self._scripts.decide(
                keys=[meta_key, self.keys.jobs, self.keys.events(run_id)],
                args=[read, conversation.to_json(), run_id, time.time()],
            )
            code = int(reply[0])
            if code == 1:
                return int(reply[1]) + 1
            if code == -1:
                raise ApprovalError(
                    f"run {run_id} is not paused any more; only a paused run takes decisions"
                )
            # The conversation changed under us (a decision, a cancel): read it again.

    async def approve(
        self, run_id: str, call_id: str, *, arguments: Mapping[str, Any] | str | None = None
    ) -> int:
        """Approve one waiting call (with edited ``arguments``, if given) and resume the
        run: :meth:`decide` with one decision (decide several calls at once with it)."""
        return await self.decide(run_id, lambda c: c.approve(call_id, arguments=arguments))

    async def reject(
        self, run_id: str, call_id: str, reason: str = "The user declined this call."
    ) -> int:
        """Reject one waiting call (the model reads ``reason``) and resume the run."""
        return await self.decide(run_id, lambda c: c.reject(call_id, reason))


async def ensure_group(client: Redis, keys: Keys) -> None:
    """Create the jobs stream and the workers' consumer group, reading from the start
    (so no job queued before the first worker came is missed)."""
    try:
        await client.xgroup_create(keys.jobs, keys.group, id="0", mkstream=True)
    except Exception as error:
        if "BUSYGROUP" not in str(error):
            raise
