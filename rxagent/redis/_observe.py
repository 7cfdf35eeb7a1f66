"""Reading a run's log from Redis: replay from any index, then follow it live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from reactivex import Observable
from redis.asyncio import Redis

from rxagent.aio import from_async_iterable
from rxagent.events import AgentEvent, RunCompleted, RunFailed
from rxagent.redis._codec import entry_id, error_of, read_entries, stream_entries, text
from rxagent.redis._errors import (
    CONNECTION_ERRORS,
    Backoff,
    EventsTrimmed,
    RedisUnavailable,
    RunNotFound,
    check_reachable,
    where,
)
from rxagent.redis._keys import DEFAULT_PREFIX, Keys, keys_of
from rxagent.state import RunStatus

__all__ = ["follow", "observe"]

_ENDS = (RunCompleted, RunFailed)


async def follow(
    client: Redis,
    run_id: str,
    after: int | None = None,
    *,
    prefix: str | Keys = DEFAULT_PREFIX,
    live: bool = True,
    block: float = 1.0,
    count: int = 1000,
    reconnect_window: float = 30.0,
) -> AsyncIterator[tuple[int, AgentEvent]]:
    """``(index, event)`` for each event of the run after index ``after`` (``None``:
    from the first), in order; a ``RunFailed`` is yielded as data.

    ``live``: once the events so far are read, wait for new ones (``XREAD BLOCK``),
    until the run ends (``RunCompleted`` or ``RunFailed`` with nothing after it);
    otherwise stop at the events there are now. A malformed entry is skipped with a
    logged warning. A lost connection is retried with backoff, from the last index
    read, for ``reconnect_window`` seconds; then :class:`RedisUnavailable`. Raises
    :class:`RunNotFound` for an unknown (or expired) run, :class:`EventsTrimmed` when the
    events asked for were trimmed away.
    """
    keys = keys_of(prefix)
    stream, meta = keys.events(run_id), keys.meta(run_id)
    await check_reachable(client)
    if not await client.exists(meta, stream):
        raise RunNotFound(run_id)
    next_index = 0 if after is None else after + 1
    backoff = Backoff(reconnect_window)
    block_ms = max(1, int(block * 1000))
    while True:
        try:
            reply: Any = await client.xread(
                {stream: entry_id(next_index - 1) if next_index else "0-0"},
                count=count,
                block=block_ms if live else None,
            )
            if not reply and not await client.exists(meta, stream):
                raise RunNotFound(run_id)
        except CONNECTION_ERRORS as error:
            if backoff.expired:
                raise RedisUnavailable(
                    f"lost the connection to Redis at {where(client)} for more than "
                    f"{reconnect_window:g}s while reading run {run_id}"
                ) from error
            await backoff.wait()
            continue
        backoff.reset()
        entries = read_entries(stream_entries(reply), run_id)
        if not entries:
            if not live:
                return
            continue
        if entries[0].index > next_index:
            raise EventsTrimmed(
                f"events {next_index} to {entries[0].index - 1} of run {run_id} were trimmed "
                "from its stream (max_events); read from a later index"
            )
        ended = False
        for entry in entries:
            index, event = entry.index, entry.event
            next_index = index + 1
            if event is None:
                continue
            yield index, event
            ended = isinstance(event, _ENDS)
        if ended and live and not await _goes_on(client, stream, meta, next_index):
            return


async def _goes_on(client: Redis, stream: str, meta: str, next_index: int) -> bool:
    """Whether a log whose last event read ended the run goes on: events follow already,
    or the run's resume (after a pause) is queued."""
    try:
        async with client.pipeline(transaction=True) as pipe:
            pipe.xread({stream: entry_id(next_index - 1)}, count=1)
            pipe.hmget(meta, ["status", "resuming"])
            more, (status, resuming) = await pipe.execute()
    except CONNECTION_ERRORS:
        return True  # the next read reconnects and finds out
    if stream_entries(more) or text(resuming) == "1":
        return True
    return not RunStatus(text(status) or RunStatus.QUEUED).is_final


def observe(
    client: Redis,
    run_id: str,
    after: int | None = None,
    *,
    prefix: str | Keys = DEFAULT_PREFIX,
    reconnect_window: float = 30.0,
) -> Observable[AgentEvent]:
    """A run's events from Redis, as an Observable: replayed, then live.

    Replays the run's events after index ``after`` (``None``: all of them), then follows
    the new ones as they are written (``XREAD BLOCK``), from any process. It completes
    after ``RunCompleted`` and errors with the run's error after a ``RunFailed`` (an
    :class:`~rxagent.errors.AgentError` of the type the run failed with, rebuilt from
    the event, ``partial`` its run so far), so ``await ra.collect_final(observe(...))``
    gives the run's ``AgentRun``, and ``ops.materialize()`` turns the error back into
    its ``RunFailed``::

        log:     R-S-T-T-T-...-C-RC                (written by a worker)
        observe(after=3):   T-...-C-RC|            (events 4, 5, ...)

    Each subscription reads on its own (cold): it replays from ``after`` however late it
    comes, and any number of observers in any number of processes read one run without
    touching it. The run itself is hot: it runs on its worker whether or not anyone
    observes it, and disposing a subscription only stops that reader (use
    :meth:`RunQueue.cancel` to stop a run). A paused run's observation completes at its
    ``RunCompleted(stop="paused")``; once its calls are decided, the run goes on under
    the same id as a new segment of its log (its own ``RunStarted``): observe it again
    with ``after`` the index of the pause's ``RunCompleted`` (``RunQueue.decide`` returns
    the index after it); an observation that starts after the decision follows the
    new segment through. A run whose worker was lost goes on after a ``RunResumed``
    event in the same observation (drop the interrupted step's partial text there).
    A lost connection is retried from the last event seen, so nothing is
    lost or repeated; past ``reconnect_window`` seconds it errors with
    :class:`~rxagent.redis.RedisUnavailable`. Unknown run: :class:`~rxagent.redis.RunNotFound`.

    The client is a ``redis.asyncio.Redis``; subscribe on the event loop it is used on.
    A live observation holds one connection of the client's pool while it waits (size
    the pool, ``max_connections``, for your observers: redis-py's default is 100).
    """

    async def events() -> AsyncIterator[AgentEvent]:
        async for _, event in follow(
            client, run_id, after, prefix=prefix, reconnect_window=reconnect_window
        ):
            if isinstance(event, RunFailed):
                raise error_of(event)
            yield event

    return from_async_iterable(events)
