"""The errors of ``rxagent.redis``, and how it waits out a lost connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.exceptions
from redis.asyncio import Redis

from rxagent.errors import AgentError

__all__ = ["EventsTrimmed", "RedisUnavailable", "RunNotFound", "UnknownAgent"]

_T = TypeVar("_T")

#: What a lost or refused connection raises (redis-py wraps most ``OSError`` in these).
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)
_UNREACHABLE: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, OSError)


class RedisUnavailable(AgentError):
    """Redis could not be reached: at start, or for longer than the reconnect window."""


class RunNotFound(LookupError):
    """No run has this id (never submitted, or expired after its TTL)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run {run_id!r} in Redis (never submitted, or expired)")
        self.run_id = run_id


class UnknownAgent(LookupError):
    """No worker serves an agent of this name."""


class EventsTrimmed(LookupError):
    """The events asked for were trimmed from the run's stream (``max_events``)."""


def where(client: Redis) -> str:
    """The address of ``client``'s server, for error messages."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


async def check_reachable(client: Redis, within: float = 5.0) -> None:
    """Raise :class:`RedisUnavailable` with a clear message when ``client`` cannot reach
    its server (within ``within`` seconds)."""
    try:
        await asyncio.wait_for(client.ping(), within)
    except redis.exceptions.MaxConnectionsError:
        raise  # reachable, but the client's pool is used up: its own clear error
    except _UNREACHABLE as error:
        raise RedisUnavailable(
            f"cannot reach Redis at {where(client)}: "
            f"{str(error).rstrip('.') or type(error).__name__}. "
            "Is redis-server running there? Point rxagent at your Redis with a client "
            "(redis.asyncio.Redis.from_url(...)) or `--redis URL`."
        ) from error


class Backoff:
    """Exponential waits (``first``, doubling, at most ``cap`` seconds) within a window.

    ``window`` seconds after the first failure, :attr:`expired` turns true.
    """

    def __init__(self, window: float, *, first: float = 0.02, cap: float = 1.0) -> None:
        self.window = window
        self.first = first
        self.cap = cap
        self.failed_at: float | None = None
        self._next = first

    @property
    def expired(self) -> bool:
        return self.failed_at is not None and time.monotonic() - self.failed_at > self.window

    async def wait(self) -> None:
        if self.failed_at is None:
            self.failed_at = time.monotonic()
        await asyncio.sleep(self._next)
        self._next = min(self.cap, self._next * 2)

    def reset(self) -> None:
        self.failed_at = None
        self._next = self.first


async def retrying(
    op: Callable[[], Awaitable[_T]], *, window: float, what: str, client: Redis
) -> _T:
    """``await op()``, again after a lost connection, with backoff, for up to ``window``
    seconds; then :class:`RedisUnavailable` (saying ``what`` failed)."""
    backoff = Backoff(window)
    while True:
        try:
            return await op()
        except CONNECTION_ERRORS as error:
            if backoff.expired:
                raise RedisUnavailable(
                    f"{what}: lost the connection to Redis at {where(client)} for more than "
                    f"{window:g}s ({error or type(error).__name__})"
                ) from error
            await backoff.wait()


def is_connection_error(error: BaseException) -> bool:
    return isinstance(error, CONNECTION_ERRORS)
