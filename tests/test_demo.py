"""The terminal demo: ``python -m rxagent`` offline, on a server, as JSON lines, live."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from rxagent import testing as t
from rxagent.__main__ import main
from rxagent.events import RunCompleted, RunFailed, loads


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def server() -> Iterator[t.LoopbackServer]:
    with t.LoopbackServer() as server:
        yield server


def test_the_demo_command_runs_offline() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["PYTHONIOENCODING"] = "utf-8"
    done = subprocess.run(
        [sys.executable, "-m", "rxagent", "--pace", "0"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "offline" in lines[0]
    assert "\x1b[" not in done.stdout  # not a terminal: plain lines, no cursor tricks
    assert '  → lookup(topic="ReactiveX")' in lines
    assert any(line.startswith("    · lookup: searching 2/4") for line in lines)  # progress
    assert any(line.startswith("  ✓ calculate → 395") for line in lines)
    assert any(line.startswith("  ✗ weather → ") and "timed out" in line for line in lines)
    assert any(line.startswith("  ✓ weather → ") for line in lines)
    assert "17 * 23 + 4 = 395." in done.stdout  # the results made the round trip
    summary = lines[-1]
    assert summary.startswith("── 3 steps · 4 tool calls (1 failed) · ")
    assert "tokens" in summary and summary.endswith("stop: no_tool_calls")


def test_json_lines_for_piping(offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json", "--pace", "0"]) == 0
    out, err = capsys.readouterr()
    events = [loads(line) for line in out.splitlines()]
    assert "offline" in err  # the note is not mixed into the JSON
    assert isinstance(events[-1], RunCompleted) and events[-1].run.tool_calls == 4
    kinds = {e.type for e in events}
    assert {"text_delta", "tool_args_delta", "tool_progress", "tool_call_ended"} <= kinds


def test_it_talks_to_a_real_server(
    server: t.LoopbackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.push(
        ["Let me add. ", t.call("calculate", {"expression": "2 + 2"})],
        ["It is ", "4."],
    )
    argv = ["--base-url", server.url, "--api-key", "k", "--model", "m1", "--pace", "0", "2 + 2?"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"rxagent demo · m1 at {server.url}/"
    assert "  ✓ calculate → 4" in out and "It is 4." in out
    first = server.requests[0]
    assert first.model == "m1" and first.last_user_message == "2 + 2?"
    assert first.system_prompt is not None and "terminal demo" in first.system_prompt
    assert first.tool_names == ["lookup", "calculate", "weather"]


def test_a_failed_run_says_why_and_exits_1(
    server: t.LoopbackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.push(t.status(401, "Incorrect API key provided"))
    assert main(["--base-url", server.url, "--api-key", "bad", "--pace", "0"]) == 1
    out = capsys.readouterr().out
    assert "error: AuthenticationError: HTTP 401" in out and "Incorrect API key" in out
    assert "stop: error" in out.splitlines()[-1]


def test_a_failed_run_as_json_ends_with_run_failed(
    server: t.LoopbackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.push(t.status(400, "no such model"))
    assert main(["--json", "--base-url", server.url, "--pace", "0"]) == 1
    last = loads(capsys.readouterr().out.splitlines()[-1])
    assert isinstance(last, RunFailed) and last.error_type == "BadRequest"


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_the_live_view_redraws_tool_lines_in_place() -> None:
    import pty

    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.update(TERM="xterm", PYTHONIOENCODING="utf-8")
    env.pop("NO_COLOR", None)
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "rxagent", "--pace", "0"],
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    data = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        data += chunk
    os.close(leader)
    assert process.wait(30) == 0
    screen = data.decode("utf-8", "replace")
    assert "\x1b[3F" in screen  # three calls redrawn together, in place
    assert "\x1b[32m✓\x1b[0m calculate" in screen and "\x1b[31m✗\x1b[0m weather" in screen
    assert "stop: no_tool_calls" in screen
    assert json.dumps("ReactiveX") in screen
