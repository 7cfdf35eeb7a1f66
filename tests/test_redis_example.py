"""examples/scale_out: its three commands (Redis, a worker pool, the web app) work as its
README says: the page is served, a run started over HTTP pauses for approval, is
approved, and completes on the pool."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from rxagent.redis.testing import RedisServer
from tests.redis_support import ROOT
from tests.web_support import read_stream, sse_messages

pytestmark = pytest.mark.timeout(60)


def test_the_scale_out_example_runs_as_its_readme_says(redis_server: RedisServer) -> None:
    env = {**os.environ, "SCALE_OUT_PACE": "0", "PYTHONPATH": str(ROOT)}
    for key in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        env.pop(key, None)
    worker = [sys.executable, "-m", "rxagent", "worker", "examples.scale_out.agents:agents"]
    pool = subprocess.Popen(
        [*worker, "--processes", "2", "--redis", redis_server.url, "--log-level", "WARNING"],
        cwd=ROOT,
        env=env,
    )
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.scale_out.web",
            "--port",
            "0",
            "--redis",
            redis_server.url,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert web.stdout is not None
        line = web.stdout.readline()
        assert line.startswith("chat page at http://"), line
        url = line.split()[3].rstrip("/")
        with httpx.Client(base_url=url, timeout=30) as client:
            assert "rxagent chat" in client.get("/").text
            question = "Tell me about ReactiveX and work out 17 * 23 + 4"
            run_id = client.post("/runs", json={"agent": "demo", "input": question}).json()[
                "run_id"
            ]
            with client.stream("GET", f"/runs/{run_id}/events") as response:
                for message in sse_messages(response.iter_lines()):
                    if message.event == "paused":
                        break
            state = client.get(f"/runs/{run_id}").json()
            assert state["status"] == "paused"
            (pending,) = state["pending"]
            approval = {"call_id": pending["id"], "decision": "approve"}
            assert client.post(f"/runs/{run_id}/approvals", json=approval).status_code == 202
            events = read_stream(client, f"/runs/{run_id}/events")
            assert events[-1].event == "run_completed"
            done = client.get(f"/runs/{run_id}").json()
            assert done["status"] == "completed"
            assert "395" in done["result"]["messages"][-1]["content"]  # 17 * 23 + 4
    finally:
        web.send_signal(signal.SIGTERM)
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(20) == 0
        web.wait(20)
        if web.stdout is not None:
            web.stdout.close()
