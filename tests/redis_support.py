"""Helpers of the Redis tests: worker processes, reading a run's log with its indices."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as redis

import rxagent as ra
from rxagent.events import AgentEvent
from rxagent.redis import Keys, follow
from rxagent.state import fold

ROOT = Path(__file__).resolve().parent.parent


class Workers:
    """Worker processes (``python -m rxagent worker tests.redis_agents:agents``)."""

    def __init__(self, url: str, marks: Path, **options: Any) -> None:
        self.url = url
        self.marks = marks
        self.options = {"heartbeat": 0.1, "claim_after": 1.0, **options}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, Any] = {}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        args = [
            sys.executable,
            "-m",
            "rxagent",
            "worker",
            "tests.redis_agents:agents",
            "--redis",
            self.url,
            "--name",
            name,
            "--log-level",
            "INFO",
        ]
        for key, value in self.options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        env = {**os.environ, "RXAGENT_TEST_MARKS": str(self.marks), "PYTHONPATH": str(ROOT)}
        log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self._logs[name] = log
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=log)
        self.processes[name] = process
        return process

    def kill(self, name: str) -> None:
        """``kill -9`` the worker."""
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def terminate(self, name: str, timeout: float = 20.0) -> int:
        """SIGTERM (drain), and wait for the exit status."""
        process = self.processes[name]
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout)

    def output(self, name: str) -> str:
        log = self._logs[name]
        log.seek(0)
        return str(log.read().decode(errors="replace"))

    def close(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
            self._logs[name].close()

    def pid_of(self, name: str) -> int:
        return self.processes[name].pid

    def name_of_pid(self, pid: int) -> str:
        return next(n for n, p in self.processes.items() if p.pid == pid)


@contextmanager
def workers(url: str, marks: Path, names: list[str], **options: Any) -> Iterator[Workers]:
    """Worker processes, started (not waited for) and killed at the end."""
    pool = Workers(url, marks, **options)
    try:
        for name in names:
            pool.start(name)
        yield pool
    finally:
        pool.close()


@asynccontextmanager
async def ready_workers(
    client: redis.Redis, url: str, marks: Path, names: list[str], **options: Any
) -> AsyncIterator[Workers]:
    """Worker processes, once each has said it joined (on the control channel)."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(Keys().control)
    try:
        with workers(url, marks, names, **options) as pool:
            joined: set[str] = set()
            async with asyncio.timeout(20):
                while joined != set(names):
                    message = await pubsub.get_message(timeout=5.0)
                    if message is not None:
                        joined.add(json.loads(message["data"]).get("joined"))
            await pubsub.aclose()
            yield pool
    finally:
        await pubsub.aclose()


async def log_of(client: redis.Redis, run_id: str) -> list[tuple[int, AgentEvent]]:
    """The run's whole log as it is now: ``(index, event)`` pairs."""
    return [item async for item in follow(client, run_id, live=False)]


def assert_coherent(log: list[tuple[int, AgentEvent]], *, ends: int = 1) -> ra.AgentRun:
    """Indices 0..n without gap or repeat, one start, one end; the fold of the events
    gives the run's final AgentRun, whose conversation validates. Returns it.

    ``ends``: how many ``RunCompleted`` (a paused run that was resumed has two)."""
    assert [i for i, _ in log] == list(range(len(log)))
    events = [e for _, e in log]
    assert events[0].type == "run_started"
    assert [e.type for e in events].count("run_completed") == ends
    assert events[-1].type == "run_completed"
    state = fold(events)
    assert state.result is not None
    assert state.result == events[-1].run  # type: ignore[union-attr]
    assert list(state.messages) == list(state.result.messages)
    assert ra.validate_conversation(state.result.messages) == []
    return state.result


class WebServers:
    """Web processes (``python -m tests.redis_web_app``), each on a RedisHub."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.processes: list[subprocess.Popen[str]] = []
        self.urls: list[str] = []

    def start(self, timeout: float = 20.0) -> str:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.redis_web_app", self.url],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline().strip()  # the server says where it listens
        if not line.startswith("http://"):
            raise RuntimeError(f"the web process did not start (it said {line!r})")
        self.urls.append(line)
        return line

    def close(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGKILL)
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
