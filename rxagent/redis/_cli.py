"""``rxagent worker module:agents``: one worker process of the pool."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from rxagent.agent import Agent

__all__ = ["load_agents", "main"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"

#: Signals received before the worker's event loop took them over.
_early: list[int] = []


def load_agents(spec: str, *, make: bool = True) -> dict[str, Agent]:
    """The agents named by ``module:attribute``: a mapping of names to agents, or a
    function returning one (called unless ``make`` is false: then only the import is
    checked, and the result is empty). Raises ``ValueError`` with what is wrong."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected module:attribute (e.g. myapp.agents:agents), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would, for a module of the project
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import {module_name!r}: {error}") from error
    try:
        found: Any = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if callable(found) and not isinstance(found, Mapping):
        if not make:
            return {}
        found = found()
    if not isinstance(found, Mapping) or not found:
        raise ValueError(f"{spec} must be a non-empty mapping of names to agents")
    agents: dict[str, Agent] = {}
    for name, agent in found.items():
        if not isinstance(name, str) or not isinstance(agent, Agent):
            raise ValueError(f"{spec}: {name!r} is not an agent name mapped to an Agent")
        agents[name] = agent
    return agents


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rxagent worker",
        description=(
            "Run one worker of an rxagent pool on Redis: it takes queued runs of the given "
            "agents, publishes their events, and recovers runs of workers that died. "
            "SIGTERM (or Ctrl-C) drains it: running runs finish first; a second one stops "
            "it at once (its runs resume on other workers)."
        ),
    )
    parser.add_argument("agents", help="module:attribute, a mapping of names to agents")
    parser.add_argument(
        "--redis",
        default=os.environ.get("RXAGENT_REDIS_URL", DEFAULT_URL),
        metavar="URL",
        help="the Redis server (default: $RXAGENT_REDIS_URL or %(default)s)",
    )
    parser.add_argument("--prefix", default="rxagent", help="key prefix (default: %(default)s)")
    parser.add_argument("--name", help="worker name (default: host-pid)")
    parser.add_argument(
        "--concurrency", type=int, default=16, metavar="N", help="runs at once (default: 16)"
    )
    parser.add_argument(
        "--heartbeat", type=float, default=1.0, metavar="S", help="seconds between heartbeats"
    )
    parser.add_argument(
        "--claim-after",
        type=float,
        default=10.0,
        metavar="S",
        help="take over a run whose worker was silent this long (default: 10)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        metavar="S",
        help="on SIGTERM, wait at most this long for running runs (default: no limit)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="run N worker processes (a pool; signals go to all of them)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a worker until SIGTERM/SIGINT; the exit status is 0, or 2 on bad arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.processes < 1 or args.concurrency < 1:
        parser.error("--processes and --concurrency must be at least 1")
    # A signal while the agents load (imports can take seconds) is kept for later: the
    # worker then starts and stops at once, with nothing to drain.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _: _early.append(number))
    try:
        # A pool's parent only checks the spec: each worker process makes its agents.
        agents = load_agents(args.agents, make=args.processes == 1)
    except ValueError as error:
        parser.error(str(error))
    if args.processes > 1:
        return _pool(args, list(sys.argv[1:] if argv is None else argv))
    try:
        return asyncio.run(_serve(args, agents))
    except KeyboardInterrupt:
        return 130


async def _serve(args: argparse.Namespace, agents: dict[str, Agent]) -> int:
    import redis.asyncio as redis

    from rxagent.redis import RedisUnavailable, Worker

    client = redis.Redis.from_url(args.redis)
    worker = Worker(
        client,
        agents,
        prefix=args.prefix,
        name=args.name,
        concurrency=args.concurrency,
        heartbeat=args.heartbeat,
        claim_after=args.claim_after,
        drain_timeout=args.drain_timeout,
    )
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            logging.getLogger("rxagent.redis").info("draining (signal again to stop at once)")
        worker.stop(now=signals > 1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    for _ in _early:
        on_signal()
    try:
        await worker.run()
    except RedisUnavailable as error:
        print(f"rxagent worker: {error.message}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()
    return 0


def _pool(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``args.processes`` workers as child processes; pass SIGTERM/SIGINT on to them."""
    import subprocess

    rest: list[str] = []
    skip = False
    for item in argv:  # the same arguments, without --processes and --name
        if skip:
            skip = False
        elif item in ("--processes", "--name"):
            skip = True
        elif not item.startswith(("--processes=", "--name=")):
            rest.append(item)
    children = []
    for i in range(args.processes):
        name = ["--name", f"{args.name}-{i + 1}"] if args.name else []
        # A session of their own: a terminal's Ctrl-C reaches them once, through us.
        command = [sys.executable, "-m", "rxagent", "worker", *rest, *name]
        children.append(subprocess.Popen(command, start_new_session=True))

    forwarded: set[int] = set()

    def forward(sig: int, _: Any = None) -> None:
        forwarded.add(sig)
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for sig in _early:
        forward(sig)
    codes = [child.wait() for child in children]
    # A child that a forwarded signal ended before it could handle it had nothing to do.
    return next((code for code in codes if code and -code not in forwarded), 0)
