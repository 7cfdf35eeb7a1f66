"""The web app the Redis tests serve in processes of its own, on a RedisHub:
``python -m tests.redis_web_app REDIS_URL`` prints its URL once it listens."""

from __future__ import annotations

import sys

import redis.asyncio as redis

from rxagent.redis.hub import RedisHub
from rxagent.web import create_app
from rxagent.web.server import serve
from tests.redis_agents import agents


def main() -> None:
    hub = RedisHub(redis.Redis.from_url(sys.argv[1]), agents)
    serve(create_app(hub=hub, heartbeat=1.0), port=0, on_ready=lambda url: print(url, flush=True))


if __name__ == "__main__":
    main()
