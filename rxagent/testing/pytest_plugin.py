"""pytest fixtures for testing agents against the loopback server.

* ``loopback_server``: a running :class:`~rxagent.testing.LoopbackServer` with an
  empty script (``push`` the turns the test needs), stopped after the test.
* ``loopback_provider``: an ``OpenAIProvider`` pointed at that server, with fast
  retries (``server.provider()``).
* ``redis_server``: a private ``redis-server`` (:class:`rxagent.redis.testing.RedisServer`)
  on a free port in a temporary directory, stopped after the test; ``.url`` is its
  address. The test is skipped when ``redis-server`` is not installed, unless ``CI``
  is set (then it fails).
* ``redis_client``: a ``redis.asyncio.Redis`` client of ``redis_server`` (its pool
  large enough for many live observers), closed after the test.

::

    from rxagent import testing as t

    async def test_my_agent(loopback_server, loopback_provider):
        loopback_server.push(["Hello"])
        result = await ra.collect_final(ra.Agent(loopback_provider).run("hi"))
        assert result.text == "Hello"

The plugin is registered through the ``pytest11`` entry point when rxagent is
installed; without it, add ``pytest_plugins = ["rxagent.testing.pytest_plugin"]``
to your top-level ``conftest.py``. Nothing heavy is imported until a fixture is used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from rxagent.providers.openai import OpenAIProvider
    from rxagent.redis.testing import RedisServer
    from rxagent.testing import LoopbackServer

__all__ = ["loopback_provider", "loopback_server", "redis_client", "redis_server"]


@pytest.fixture
def loopback_server() -> Iterator[LoopbackServer]:
    """A running loopback server with an empty script, stopped after the test."""
    from rxagent.testing import LoopbackServer

    server = LoopbackServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def loopback_provider(loopback_server: LoopbackServer) -> OpenAIProvider:
    """An ``OpenAIProvider`` for ``loopback_server``, with fast retries."""
    return loopback_server.provider()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free port, in a temporary directory; stopped after."""
    import os

    from rxagent.redis.testing import RedisServer, find_redis_server

    if find_redis_server() is None:
        message = "redis-server is not installed (Debian: apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with RedisServer() as server:
        yield server


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of ``redis_server``, closed after the test."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_server.url, max_connections=500)
    yield client
    await client.aclose()
