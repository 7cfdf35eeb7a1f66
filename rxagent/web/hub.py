"""The run hub: runs by unguessable id, their event logs, decisions and cancellation.

Web routes (and, past one process, workers) talk to a hub, never to each other. A
hub starts runs of named agents, keeps each run's events as a log with indices
0, 1, 2, ..., and serves that log from any index: a reader gets the events after
the index it has, then waits for more (:meth:`RunHub.read`, or the iterator
:meth:`RunHub.events` built on it). Readers never slow a run: each reads the log
at its own pace, and nothing is queued per reader.

**One log per run, across pauses.** A run that pauses for approvals ends its
segment with ``Paused`` and ``RunCompleted(stop="paused")``. :meth:`RunHub.decide`
applies decisions to (a copy of) the paused conversation and resumes it *under
the same run id*: the resumed run's events are appended to the same log, their
indices continuing, starting with the new segment's own ``RunStarted`` (whose
``input`` is the conversation with the decisions). A reader that stops at a
pause (``stop_at_pause=True``) resumes with ``after=`` the last index it read and
gets the new segment; a reader that does not stop waits through the pause.
``ra.state.fold`` over the whole log gives the run's state (a ``RunStarted``
after the end of a segment opens the next one).

**Runs outlive their readers.** The hub holds its own subscription to every run
for the run's life: a browser tab that closes (a reader that goes away) is not a
cancel. :meth:`RunHub.cancel` is, from anywhere.

**Access.** Every method takes the caller's ``principal`` (a string such as a
user id, or ``None`` for anonymous callers); a run belongs to the principal that
started it, and to any other principal it does not exist (:class:`RunNotFound`).

:class:`LocalHub` keeps runs in this process. A backend that keeps them elsewhere
(Redis) implements the abstract methods of :class:`RunHub` with the same
semantics; :meth:`RunHub.events` and :meth:`RunHub.state` come with the base class.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Literal

from reactivex import abc as rx_abc

from rxagent._ids import new_run_id
from rxagent.agent import Agent, Run
from rxagent.errors import ApprovalError
from rxagent.events import AgentEvent, dumps
from rxagent.messages import Conversation, ConversationInput
from rxagent.ops import materialize
from rxagent.state import RunState, RunStatus

__all__ = [
    "AgentNotFound",
    "CallDecision",
    "EventsGone",
    "HubError",
    "HubFull",
    "InvalidDecision",
    "LocalHub",
    "Page",
    "Principal",
    "RunConflict",
    "RunHub",
    "RunInfo",
    "RunNotFound",
    "new_run_id",
]

#: Who is asking: a user id as the app's auth hook returned it, or ``None`` (anonymous).
Principal = str | None


def agent_named(agents: Mapping[str, Agent], name: str) -> Agent:
    """The agent registered as ``name``; raises :class:`AgentNotFound` naming the others."""
    found = agents.get(name)
    if found is None:
        known = ", ".join(map(repr, agents)) or "none"
        raise AgentNotFound(f"no agent named {name!r} (agents: {known})")
    return found


# -- errors ------------------------------------------------------------------------------
class HubError(Exception):
    """Base of the hub's errors; ``message`` says what went wrong."""

    #: The HTTP status the web app answers with.
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RunNotFound(HubError, LookupError):
    """No such run (or it expired, or it belongs to another principal)."""

    status_code = 404


class AgentNotFound(HubError, LookupError):
    """No agent of that name in the hub's registry."""

    status_code = 404


class RunConflict(HubError):
    """The run is not in a state that allows this: decisions on a run that is not
    paused, a decision on a call that is not pending, cancelling a run that ended."""

    status_code = 409


class InvalidDecision(HubError):
    """Decisions that cannot resume the run: edited arguments that do not fit the
    tool's schema, a conversation that cannot be resumed. Nothing changed."""

    status_code = 422


class EventsGone(HubError):
    """The events asked for are no longer kept (a backend that trims ended runs' logs)."""

    status_code = 410


class HubFull(HubError):
    """The hub holds ``max_runs`` runs and none of them has ended (so none can go)."""

    status_code = 503


# -- data ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CallDecision:
    """A human's decision on a call waiting for approval.

    ``approve`` runs the call (with ``arguments`` instead of the model's, when
    given); ``reject`` refuses it, and the model reads ``reason``.
    """

    call_id: str
    decision: Literal["approve", "reject"]
    arguments: Mapping[str, object] | None = None
    reason: str | None = None


@dataclasses.dataclass(frozen=True)
class Page:
    """Events of a run's log from index ``start``, as :meth:`RunHub.read` returns them.

    ``json`` holds each event's JSON text (as :func:`rxagent.events.dumps` writes
    it), so encoders need not serialize an event once per reader. ``end`` is
    ``None`` while the log may grow past this page (events follow it, or the run
    is running); otherwise the page reaches the end of the log and ``end`` is the
    run's status there: ``paused`` (decisions may resume it), or a final one.
    """

    start: int
    events: Sequence[AgentEvent]
    json: Sequence[str]
    end: RunStatus | None

    @property
    def last(self) -> int | None:
        """The index of the last event of the page (``None`` when it has none)."""
        return self.start + len(self.events) - 1 if self.events else None

    def finished(self, stop_at_pause: bool) -> bool:
        """Whether a reader is done after this page: the log ended for good (or at a
        pause, for a reader that stops there)."""
        if self.end is None:
            return False
        return self.end is not RunStatus.PAUSED or stop_at_pause


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a hub knows of a run: who started it, when, on which agent, and its state."""

    run_id: str
    agent: str
    owner: Principal
    #: ``time.time()`` when the run was started.
    created_at: float
    #: The index of the first event of each segment: ``(0,)``, then one more per resume.
    segments: tuple[int, ...]
    #: The fold of the run's whole log (:class:`~rxagent.state.RunState`).
    state: RunState


# -- the interface -----------------------------------------------------------------------
class RunHub(abc.ABC):
    """Where runs live: start, read, decide, cancel; by run id, for a principal.

    Implementations provide the abstract methods; they must be safe to call from
    the event loop the web app runs on, and :meth:`read` must wake as soon as an
    event is appended (no polling interval adds latency). What every backend keeps
    true, and the web app relies on:

    - A run's events have indices 0, 1, 2, ... across all its segments; ``read``
      returns events strictly after ``after``, in order, with no gap, and each
      event's JSON as :func:`rxagent.events.dumps` writes it.
    - The hub follows every run it starts to its end, whoever reads it; a failed
      run's log ends in ``RunFailed`` (``ops.materialize()``).
    - ``decide`` works on a copy of the paused run's conversation, resumes it
      under the same id, and returns the index of the new segment's ``RunStarted``.
    - A run of another principal, or an expired one, is :class:`RunNotFound`;
      run ids come from :func:`new_run_id`.
    - ``info`` is called once per stream request and per ``GET /runs/{id}``: its
      ``state`` is the fold of the whole log (:func:`rxagent.state.fold`).
    """

    @abc.abstractmethod
    def agent_names(self) -> Sequence[str]:
        """The names of the agents runs can be started on, the default one first."""

    @abc.abstractmethod
    async def start(
        self, agent: str, input: ConversationInput, *, principal: Principal = None
    ) -> str:
        """Start a run of agent ``agent`` on ``input`` (text, messages, a Conversation);
        return its new run id. The run goes on whether or not anyone reads it.

        Raises :class:`AgentNotFound`, :class:`InvalidDecision` (an input whose open
        turn cannot be resumed) or :class:`HubFull`.
        """

    @abc.abstractmethod
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
        """The events after index ``after`` (all of them for ``None``), at most ``limit``.

        When there are none yet, wait until one is appended, or ``wait`` seconds
        pass (then the page is empty and ``end`` is ``None``, unless the run is
        paused), or the log ends. A paused run's log ends for now: with
        ``stop_at_pause`` the empty page at its end comes back at once, without it
        the read waits for a resume like for a running run. Raises
        :class:`RunNotFound` (also when the run expires while waiting).
        """

    @abc.abstractmethod
    async def info(self, run_id: str, *, principal: Principal = None) -> RunInfo:
        """What the hub knows of the run now. Raises :class:`RunNotFound`."""

    @abc.abstractmethod
    async def decide(
        self, run_id: str, decisions: Sequence[CallDecision], *, principal: Principal = None
    ) -> int:
        """Apply ``decisions`` to the paused run and resume it under the same id.

        All or nothing: on any error the run is unchanged. Calls left without a
        decision stay pending (the resumed run pauses again once the decided ones
        are done). Returns the index of the resumed segment's first event (its
        ``RunStarted``). Raises :class:`RunNotFound`, :class:`RunConflict` (the run
        is not paused, a call is not pending) or :class:`InvalidDecision` (edited
        arguments do not fit the tool's schema).
        """

    @abc.abstractmethod
    async def cancel(self, run_id: str, *, principal: Principal = None) -> None:
        """Stop the run: a running one ends ``cancelled`` (``RunCompleted(stop=
        "cancelled")``); a paused one too (a segment of ``RunStarted`` and that
        ``RunCompleted`` is appended). Raises :class:`RunNotFound`, or
        :class:`RunConflict` when the run has already ended.
        """

    async def close(self) -> None:  # noqa: B027 (a hook with nothing to do by default)
        """Release the hub's resources (a local hub cancels its running runs)."""

    # -- built on the above ------------------------------------------------------------
    async def state(self, run_id: str, *, principal: Principal = None) -> RunState:
        """The run's state now: the fold of its log."""
        return (await self.info(run_id, principal=principal)).state

    async def events(
        self,
        run_id: str,
        after: int | None = None,
        *,
        principal: Principal = None,
        stop_at_pause: bool = False,
    ) -> AsyncIterator[tuple[int, AgentEvent]]:
        """``(index, event)`` after ``after``: the log so far, then live events.

        Completes after the run's last event: when it ends for good, or at a pause
        with ``stop_at_pause`` (without it, waits for the run to resume).
        """
        while True:
            page = await self.read(run_id, after, principal=principal, stop_at_pause=stop_at_pause)
            for offset, event in enumerate(page.events):
                yield page.start + offset, event
            if page.last is not None:
                after = page.last
            if page.finished(stop_at_pause):
                return


# -- in process --------------------------------------------------------------------------
class _Entry:
    """One run in a LocalHub: its log, its fold, the run under way, its readers' wake-up."""

    __slots__ = (
        "_folded",
        "_state",
        "agent",
        "created_at",
        "ended_at",
        "events",
        "json",
        "live",
        "owner",
        "run",
        "run_id",
        "segments",
        "subscription",
        "waiters",
    )

    def __init__(self, run_id: str, agent: str, owner: Principal, input: Conversation) -> None:
        self.run_id = run_id
        self.agent = agent
        self.owner = owner
        self.created_at = time.time()
        self.events: list[AgentEvent] = []
        self.json: list[str | None] = []
        self._state = RunState(input)
        self._folded = 0
        self.segments: list[int] = []
        self.run: Run | None = None
        self.subscription: rx_abc.DisposableBase | None = None
        self.live = False
        #: Monotonic time the last segment ended (``None`` while live).
        self.ended_at: float | None = None
        #: One future per waiting reader, resolved at the next append or end.
        self.waiters: list[asyncio.Future[None]] = []

    def wake(self) -> None:
        if self.waiters:
            waiters, self.waiters = self.waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def append(self, event: AgentEvent) -> None:
        self.events.append(event)
        self.json.append(None)
        self.wake()

    @property
    def state(self) -> RunState:
        """The fold of the log (folded when asked, from where the last fold stopped)."""
        if self._folded < len(self.events):
            state = self._state
            for event in self.events[self._folded :]:
                state = state.apply(event)
            self._state, self._folded = state, len(self.events)
        return self._state

    def json_of(self, start: int, stop: int) -> list[str]:
        # Serialized once, when first read, and shared by every reader.
        out = self.json[start:stop]
        for i, text in enumerate(out):
            if text is None:
                out[i] = self.json[start + i] = dumps(self.events[start + i])
        return out  # type: ignore[return-value]


class LocalHub(RunHub):
    """Runs in this process, on the event loop that starts them.

    ``agents`` maps names to agents (the first is the default). A run that ended
    (or paused) is kept ``ttl`` seconds after its last event, then forgotten
    (a paused run's decisions must come within that time); at most ``max_runs``
    runs are kept, the ones that ended longest ago going first when a new run
    needs room (:class:`HubFull` when every run is still going).
    """

    def __init__(
        self,
        agents: Mapping[str, Agent],
        *,
        ttl: float = 3600.0,
        max_runs: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or max_runs < 1:
            raise ValueError("ttl must be positive and max_runs at least 1")
        self.agents = dict(agents)
        self.ttl = ttl
        self.max_runs = max_runs
        self._clock = clock
        self._runs: dict[str, _Entry] = {}
        self._closed = False
        # Readers that wait with a time limit, and one timer for the earliest limit
        # (a timer per wait would cost more than the wait: readers wait once an event).
        self._deadlines: dict[asyncio.Future[None], tuple[float, _Entry]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def __repr__(self) -> str:
        return f"<LocalHub agents={list(self.agents)} runs={len(self._runs)}>"

    def agent_names(self) -> Sequence[str]:
        return list(self.agents)

    # -- lifecycle of a run ------------------------------------------------------------
    async def start(
        self, agent: str, input: ConversationInput, *, principal: Principal = None
    ) -> str:
        if self._closed:
            raise HubError("the hub is closed")
        found = agent_named(self.agents, agent)
        try:
            run = found.run(input)
        except ApprovalError as error:
            raise InvalidDecision(error.message) from None
        self._make_room()
        run_id = new_run_id()
        entry = _Entry(run_id, agent, principal, run.input)
        self._runs[run_id] = entry
        self._follow(entry, run)
        return run_id

    def _follow(self, entry: _Entry, run: Run) -> None:
        """Hold the hub's own subscription to ``run`` (a new segment of ``entry``'s log)."""
        entry.segments.append(len(entry.events))
        entry.run = run
        entry.live = True
        entry.ended_at = None

        def ended() -> None:
            entry.live = False
            entry.run = None
            entry.subscription = None
            entry.ended_at = self._clock()
            entry.wake()

        # materialize(): a failed run's log ends in a RunFailed event, as data.
        entry.subscription = run.pipe(materialize()).subscribe(
            entry.append, lambda _error: ended(), ended
        )

    async def decide(
        self, run_id: str, decisions: Sequence[CallDecision], *, principal: Principal = None
    ) -> int:
        entry = self._get(run_id, principal)
        result = entry.state.result
        if entry.live or entry.state.status is not RunStatus.PAUSED or result is None:
            raise RunConflict(
                f"run {run_id} is {_status_of(entry)}; only a paused run takes decisions"
            )
        if not decisions:
            raise InvalidDecision("no decisions given")
        conversation = result.messages.copy()
        try:
            for decision in decisions:
                if decision.decision == "approve":
                    conversation.approve(decision.call_id, arguments=decision.arguments)
                elif decision.reason:
                    conversation.reject(decision.call_id, decision.reason)
                else:
                    conversation.reject(decision.call_id)
        except ApprovalError as error:
            raise RunConflict(error.message) from None
        try:
            run = self.agents[entry.agent].run(conversation)
        except ApprovalError as error:
            raise InvalidDecision(error.message) from None
        index = len(entry.events)
        self._follow(entry, run)
        return index

    async def cancel(self, run_id: str, *, principal: Principal = None) -> None:
        entry = self._get(run_id, principal)
        if entry.live and entry.run is not None:
            entry.run.cancel()
            return
        result = entry.state.result
        if entry.state.status is RunStatus.PAUSED and result is not None:
            # A run cancelled before it is observed ends at once, with a valid
            # conversation: the paused one, its calls still undecided.
            run = self.agents[entry.agent].run(result.messages.copy())
            run.cancel()
            self._follow(entry, run)
            return
        raise RunConflict(f"run {run_id} is already {_status_of(entry)}")

    async def close(self) -> None:
        """Cancel the runs still going and wait (up to 5 s) until they have ended."""
        self._closed = True
        live = [e for e in self._runs.values() if e.live]
        for entry in live:
            if entry.run is not None:
                entry.run.cancel()
        deadline = self._clock() + 5.0
        for entry in live:
            while entry.live and self._clock() < deadline:
                await self._wait(entry, max(0.0, deadline - self._clock()))
            if entry.subscription is not None:
                entry.subscription.dispose()
        for entry in self._runs.values():
            entry.wake()
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf

    # -- reading -----------------------------------------------------------------------
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
        entry = self._get(run_id, principal)
        start = 0 if after is None else max(0, after + 1)
        if start >= len(entry.events) and self._may_grow(entry, stop_at_pause):
            await self._wait(entry, wait)
            entry = self._get(run_id, principal)  # it may have expired meanwhile
        stop = min(len(entry.events), start + max(1, limit))
        events = entry.events[start:stop]
        end = None
        if stop >= len(entry.events) and not entry.live:
            end = entry.state.status
        return Page(start, events, entry.json_of(start, stop) if events else [], end)

    def _may_grow(self, entry: _Entry, stop_at_pause: bool) -> bool:
        if entry.live:
            return True
        return entry.state.status is RunStatus.PAUSED and not stop_at_pause and not self._closed

    async def _wait(self, entry: _Entry, seconds: float | None) -> None:
        """Until ``entry`` changes, or ``seconds`` pass."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        entry.waiters.append(waiter)
        if seconds is not None:
            deadline = loop.time() + seconds
            self._deadlines[waiter] = (deadline, entry)
            if deadline < self._timer_at:
                self._arm(loop, deadline)
        try:
            await waiter
        finally:
            self._deadlines.pop(waiter, None)
            if waiter.cancelled():  # the reader went away: out of the entry's list
                with contextlib.suppress(ValueError):
                    entry.waiters.remove(waiter)

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = loop.call_at(deadline, self._expire_waits, loop)

    def _expire_waits(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer, self._timer_at = None, math.inf
        now = loop.time() + 0.01  # those due within 10 ms go now too
        for waiter, (deadline, entry) in list(self._deadlines.items()):
            if deadline <= now:
                del self._deadlines[waiter]
                with contextlib.suppress(ValueError):
                    entry.waiters.remove(waiter)
                if not waiter.done():
                    waiter.set_result(None)
        if self._deadlines:
            self._arm(loop, min(deadline for deadline, _ in self._deadlines.values()))

    async def info(self, run_id: str, *, principal: Principal = None) -> RunInfo:
        entry = self._get(run_id, principal)
        return RunInfo(
            run_id=entry.run_id,
            agent=entry.agent,
            owner=entry.owner,
            created_at=entry.created_at,
            segments=tuple(entry.segments),
            state=entry.state,
        )

    # -- bookkeeping -------------------------------------------------------------------
    def _get(self, run_id: str, principal: Principal) -> _Entry:
        entry = self._runs.get(run_id)
        if entry is not None and self._expired(entry):
            self._drop(entry)
            entry = None
        if entry is None or entry.owner != principal:
            raise RunNotFound(f"no run {run_id!r}")
        return entry

    def _expired(self, entry: _Entry) -> bool:
        return entry.ended_at is not None and self._clock() - entry.ended_at >= self.ttl

    def _drop(self, entry: _Entry) -> None:
        self._runs.pop(entry.run_id, None)
        entry.wake()  # its readers find it gone

    def _make_room(self) -> None:
        for entry in [e for e in self._runs.values() if self._expired(e)]:
            self._drop(entry)
        if len(self._runs) < self.max_runs:
            return
        ended = sorted(
            (e for e in self._runs.values() if e.ended_at is not None),
            key=lambda e: e.ended_at or 0.0,
        )
        for entry in ended[: len(self._runs) - self.max_runs + 1]:
            self._drop(entry)
        if len(self._runs) >= self.max_runs:
            raise HubFull(f"the hub holds {self.max_runs} runs, all still going; try later")

    def __len__(self) -> int:
        return len(self._runs)


def _status_of(entry: _Entry) -> str:
    return "running" if entry.live else entry.state.status.value
