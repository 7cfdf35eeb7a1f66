"""EventLog: one run's events, appended to its Redis Stream in batches."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from rxagent.events import (
    AgentEvent,
    Paused,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunStarted,
    StepCompleted,
    StepStarted,
    dumps,
)
from rxagent.ops._until import _STREAMING
from rxagent.redis._codec import text
from rxagent.redis._errors import CONNECTION_ERRORS, Backoff, RedisUnavailable, where
from rxagent.redis._keys import Keys
from rxagent.redis._scripts import Scripts
from rxagent.state import RunState, RunStatus

__all__ = ["DEFAULT_TTL", "EventLog", "LogSettings"]

log = logging.getLogger("rxagent.redis")

#: How long a finished run's events and metadata stay (seconds): one day.
DEFAULT_TTL = 24 * 3600
#: How long a paused run waits for its decisions before it expires: a week.
DEFAULT_PAUSED_TTL = 7 * 24 * 3600

# Events after which the batch goes out at once: the step and run boundaries.
_BOUNDARIES = frozenset({RunStarted, RunResumed, StepStarted, StepCompleted, Paused})
_ENDS = frozenset({RunCompleted, RunFailed})


class LogSettings:
    """How runs are written: batching, trimming, expiry, and patience with Redis.

    * ``flush_interval``: the longest an event waits in the buffer before its batch is
      written (seconds, at most 0.01); step and run boundaries are written at once, and
      while a write is under way the next batch gathers behind it.
    * ``max_events``: trim each run's stream to about this many events (``None``: keep
      all; an observer asking for trimmed events gets ``EventsTrimmed``).
    * ``ttl``: seconds a finished run's stream and metadata stay after it ends;
      ``paused_ttl`` the same for a paused run, waiting for decisions.
    * ``reconnect_window``: seconds to keep reconnecting after the connection was
      lost before the run fails (its partial conversation kept).
    """

    __slots__ = ("flush_interval", "max_events", "paused_ttl", "reconnect_window", "ttl")

    def __init__(
        self,
        *,
        flush_interval: float = 0.002,
        max_events: int | None = None,
        ttl: int = DEFAULT_TTL,
        paused_ttl: int = DEFAULT_PAUSED_TTL,
        reconnect_window: float = 30.0,
    ) -> None:
        if not 0 <= flush_interval <= 0.01:
            raise ValueError(f"flush_interval must be within 0 and 0.01 s, got {flush_interval!r}")
        if max_events is not None and max_events < 1:
            raise ValueError(f"max_events must be None or positive, got {max_events!r}")
        if ttl < 1 or paused_ttl < 1:
            raise ValueError("ttl and paused_ttl must be at least 1 second")
        self.flush_interval = flush_interval
        self.max_events = max_events
        self.ttl = ttl
        self.paused_ttl = paused_ttl
        self.reconnect_window = reconnect_window


class EventLog:
    """Appends one run's events to its stream, as the holder of the run's lease.

    :meth:`append` is synchronous and cheap: it folds the event into the run's
    :class:`~rxagent.state.RunState` (:attr:`state`, from ``state``: the fold of the
    events already in the log), numbers it (:attr:`next_index`)
    and buffers its JSON; a task writes the buffer in batches (one round trip per
    batch: a Lua script that appends the entries and updates the metadata hash
    atomically). A write is retried after a lost connection with backoff; entries
    already written are skipped, so nothing is written twice. ``on_lost`` is called
    when another holder took the run over (the writes are then dropped), and
    ``on_unreachable(error)`` once when Redis stayed unreachable past the settings'
    ``reconnect_window`` (the log keeps retrying; the caller decides what the run does).
    """

    def __init__(
        self,
        client: Redis,
        run_id: str,
        *,
        lease: str,
        keys: Keys | None = None,
        scripts: Scripts | None = None,
        settings: LogSettings | None = None,
        state: RunState | None = None,
        next_index: int | None = None,
        job: str | None = None,
        on_lost: Callable[[str], None] | None = None,
        on_unreachable: Callable[[RedisUnavailable], None] | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.lease = lease
        self.keys = keys or Keys()
        self.settings = settings or LogSettings()
        self._scripts = scripts or Scripts(client)
        self._state = state or RunState()
        #: The index the next event gets (events already in the log come before it):
        #: ``next_index`` if given, else how many events ``state`` folded.
        self.next_index = self._state.events if next_index is None else next_index
        self._written = self.next_index
        self._buffer: list[str] = []
        self._meta: dict[str, str] = {}
        self._ttl = 0
        self._on_lost = on_lost
        self._on_unreachable = on_unreachable
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._last_write = float("-inf")
        self._pump: asyncio.Task[None] | None = None
        #: Set when the run was taken over by another worker (or its data is gone).
        self.lost = False
        self._meta_keys = (self.keys.meta(run_id), self.keys.events(run_id), self.keys.jobs)
        #: The job to acknowledge with the write of the run's end (its worker's job).
        self.job = job
        self._ack = ""
        #: Whether the job was acknowledged (with the run's end).
        self.acked = False

    @property
    def state(self) -> RunState:
        """The run's state: the fold of its events so far (those before this log's too),
        but for the deltas (text, reasoning, argument fragments, progress, usage): they
        change nothing the log keeps (status, the conversation of the last step), and
        folding them would cost about as much as writing them."""
        return self._state

    @property
    def pending(self) -> int:
        """Events appended and not written yet."""
        return self.next_index - self._written

    def append(self, event: AgentEvent) -> int:
        """Number ``event``, fold it, buffer it for the next batch; returns its index."""
        index = self.next_index
        if self.lost:
            return index
        self.next_index += 1
        self._buffer.append(dumps(event))
        kind = type(event)
        if kind in _STREAMING:
            self._kick(now=False)
            return index
        before = self._state
        state = self._state = before.apply(event)
        if state.status is not before.status:
            self._meta["status"] = state.status.value
        if kind in _BOUNDARIES or kind in _ENDS:
            self._boundary(event, state)
            self._kick(now=True)
        else:
            self._kick(now=False)
        return index

    def _boundary(self, event: AgentEvent, state: RunState) -> None:
        meta = self._meta
        meta["status"] = state.status.value
        meta["updated"] = repr(time.time())
        kind = type(event)
        if kind is RunResumed or kind is RunStarted:
            # A run (or a new segment of it, after a pause) starts, or goes on elsewhere.
            meta["snapshot"] = state.conversation.to_json()
            meta["resuming"] = "0"
            self._ttl = -1
        elif kind is StepCompleted or kind in _ENDS:
            meta["snapshot"] = state.conversation.to_json()
            meta["steps"] = str(state.steps)
        if kind in _ENDS:
            self._ack = self.job or ""
            if state.error is not None:
                meta["error"] = state.error
            self._ttl = (
                self.settings.paused_ttl if state.status is RunStatus.PAUSED else self.settings.ttl
            )

    # -- writing -------------------------------------------------------------------------
    def _kick(self, *, now: bool) -> None:
        if self._pump is not None:
            return  # the pump takes everything buffered before it stops
        # At most one write per flush_interval: an event after a quiet spell goes at
        # once (the leading edge), the ones that follow it gather for the next write.
        wait = 0.0 if now else self._last_write + self.settings.flush_interval - self._loop.time()
        if wait <= 0:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._pump = self._loop.create_task(self._write_all())
        elif self._timer is None:
            self._timer = self._loop.call_later(wait, self._kick_now)

    def _kick_now(self) -> None:
        self._timer = None
        self._kick(now=True)

    async def _write_all(self) -> None:
        try:
            while self._buffer or self._meta:
                self._last_write = self._loop.time()
                batch, self._buffer = self._buffer, []
                meta, self._meta = self._meta, {}
                ttl, self._ttl = self._ttl, 0
                ack, self._ack = self._ack, ""
                try:
                    await self._write(self._written, batch, meta, ttl, ack)
                except Exception as error:  # a reply Redis should never give
                    log.exception("run %s: writing its events failed; the run stops", self.run_id)
                    self.lost = True
                    if self._on_lost is not None:
                        self._on_lost(f"error: {error}")
                self._written += len(batch)
                if self.lost:
                    self._buffer.clear()
                    self._meta.clear()
                    return
        finally:
            self._pump = None

    async def _write(
        self, first: int, batch: list[str], meta: dict[str, str], ttl: int, ack: str
    ) -> None:
        pairs = [item for pair in meta.items() for item in pair]
        args: list[Any] = [
            self.lease,
            first,
            self.settings.max_events or 0,
            ttl,
            len(meta),
            *pairs,
            "\n".join(batch),  # JSON has no raw newline: one a line
            self.keys.group,
            ack,
        ]
        backoff = Backoff(self.settings.reconnect_window, cap=0.5)
        told = False
        while True:
            try:
                reply = await self._scripts.append(keys=self._meta_keys, args=args)
                break
            except CONNECTION_ERRORS as error:
                if backoff.failed_at is None:
                    log.warning(
                        "run %s: lost the connection to Redis at %s (%s); reconnecting",
                        self.run_id,
                        where(self.client),
                        error or type(error).__name__,
                    )
                if backoff.expired and not told:
                    told = True
                    if self._on_unreachable is not None:
                        self._on_unreachable(
                            RedisUnavailable(
                                f"lost the connection to Redis at {where(self.client)} for "
                                f"more than {self.settings.reconnect_window:g}s while writing "
                                f"run {self.run_id}"
                            )
                        )
                await backoff.wait()
        if backoff.failed_at is not None:
            log.info("run %s: reconnected to Redis", self.run_id)
        code = int(reply[0])
        if code >= 0 and ack:
            self.acked = True
        if code == -1:
            self.lost = True
            holder = text(reply[1]) or ""
            log.warning(
                "run %s: %s; this worker stops it",
                self.run_id,
                f"taken over by {holder}"
                if holder
                else "its metadata is gone from Redis (expired, deleted, or lost in a restart)",
            )
            if self._on_lost is not None:
                self._on_lost(holder)
        elif code == -2:
            # The log ends before this batch: Redis lost entries (a restart without
            # persistence). Writing on would leave a hole in the indices.
            self.lost = True
            log.error(
                "run %s: the stream ends at index %s but this worker has written up to %d; "
                "Redis lost events (restarted without persistence?); the run stops",
                self.run_id,
                text(reply[1]),
                first - 1,
            )
            if self._on_lost is not None:
                self._on_lost("")

    async def flush(self) -> None:
        """Write everything appended so far; returns once it is in Redis (or lost)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._buffer or self._meta or self._pump is not None:
            if self._pump is None:
                self._pump = self._loop.create_task(self._write_all())
            await asyncio.shield(self._pump)

    def abandon(self) -> int:
        """Stop writing (the worker is going away); returns how many events were not written."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pump is not None:
            self._pump.cancel()
        unwritten = self.next_index - self._written
        self._buffer.clear()
        self._meta.clear()
        return unwritten
