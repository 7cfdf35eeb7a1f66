"""The web app of the scale-out example: ``python -m examples.scale_out.web [--port N]``.

rxagent.web's app and chat page over a RedisHub: runs start on the worker pool, and
any number of these processes (start another with ``--port 8001``) serve any run.
"""

from __future__ import annotations

import argparse
import os
import sys

import redis.asyncio as redis

import rxagent as ra
from rxagent.redis.hub import RedisHub
from rxagent.web import create_app
from rxagent.web.demo import AGENT_NAME, demo_agent
from rxagent.web.server import serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="port (0: a free one)")
    parser.add_argument(
        "--redis", default=os.environ.get("RXAGENT_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args()
    # The hub checks agent names and decisions against the agents (their tools'
    # schemas); it never calls their model: runs run on the workers.
    agents = {AGENT_NAME: demo_agent(ra.ScriptedProvider([]))}
    hub = RedisHub(redis.Redis.from_url(args.redis), agents)

    def ready(url: str) -> None:
        print(f"chat page at {url}/ (runs on the workers, events through {args.redis})")
        sys.stdout.flush()

    serve(create_app(hub=hub), port=args.port, on_ready=ready)


if __name__ == "__main__":
    main()
