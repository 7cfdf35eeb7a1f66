"""The AI SDK's own client (the ``ai`` npm package, pinned) reads rxagent's UI message
stream, and useChat's engine approves an rxagent call through the chat endpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rxagent.web import ServerThread, create_app
from tests.web_support import bank_agent, require

#: The ai package the test runs: v6 has the tool approval chunks and still runs on
#: Debian's Node 18 (v7 asks for Node 22).
#: AI SDK 6 (tool approvals arrived in 6) and today's 7 (which asks for Node 22 and, as its
#: maintainers' note says, works on the Node 20 this project's machines have).
AI_VERSIONS = ["6.0.333", "7.0.173"]
# The first run installs the package (kept in pytest's cache after that).
pytestmark = pytest.mark.timeout(300)

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "web_ai_sdk" / "client.mjs"


@pytest.fixture(scope="session", params=AI_VERSIONS)
def ai_package(request: pytest.FixtureRequest) -> Path:
    """A directory with ``ai`` installed (once: it is kept in pytest's cache)."""
    require("node", shutil.which("node") is not None)
    require("npm", shutil.which("npm") is not None)
    version: str = request.param
    root = Path(request.config.cache.mkdir(f"ai-sdk-{version}"))
    installed = root / "node_modules" / "ai" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != version:
        (root / "package.json").write_text('{"name": "rxagent-ai-sdk-test", "private": true}')
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", f"ai@{version}"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
    return root


def run_client(package: Path, url: str, agent: str) -> dict[str, Any]:
    script = package / SCRIPT.name  # next to node_modules, so node resolves "ai"
    script.write_text(SCRIPT.read_text())
    done = subprocess.run(
        ["node", str(script), url, agent], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def tool_parts(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["toolCallId"]: p for p in message["parts"] if p["type"].startswith("tool-")}


def test_the_ai_client_assembles_rxagent_runs_and_approves_their_calls(ai_package: Path) -> None:
    with ServerThread(create_app({"bank": bank_agent()})) as server:
        result = run_client(ai_package, server.url, "bank")

    assert result["header"] == "v1"
    # readUIMessageStream over GET /runs/{id}/ai-sdk: the message up to the pause.
    paused = result["paused"]
    assert paused["role"] == "assistant"
    assert paused["metadata"]["runId"] == result["runId"]
    assert paused["metadata"]["stop"] == "paused"
    kinds = [p["type"] for p in paused["parts"]]
    assert kinds == ["step-start", "text", "tool-add", "tool-transfer"]
    assert paused["parts"][1] == {"type": "text", "text": "Adding first. ", "state": "done"}
    tools = tool_parts(paused)
    assert tools["call_add"]["state"] == "output-available"
    assert tools["call_add"]["input"] == {"a": 2, "b": 3}
    assert tools["call_add"]["output"] == 5
    pay = tools["call_pay"]
    assert pay["state"] == "approval-requested"
    assert pay["input"] == {"amount": 5, "to": "ana"}
    assert pay["approval"] == {"id": f"{result['runId']}:call_pay"}

    # useChat's engine: the prompt pauses; approving resumes the same run, in the same
    # assistant message, and the model's answer follows in a step of its own.
    assert result["firstFinish"] == "tool-calls" and result["secondFinish"] == "stop"
    user, assistant = result["chat"]
    assert user["role"] == "user" and user["parts"][0]["text"] == "Add 2 and 3, then pay Ana 5."
    kinds = [p["type"] for p in assistant["parts"]]
    assert kinds == ["step-start", "text", "tool-add", "tool-transfer", "step-start", "text"]
    tools = tool_parts(assistant)
    assert tools["call_pay"]["state"] == "output-available"
    assert tools["call_pay"]["output"] == "sent 5 to ana"
    assert tools["call_pay"]["approval"]["approved"] is True
    assert assistant["parts"][-1]["text"] == "Added 5 and paid Ana."
    assert assistant["metadata"]["usage"]["totalTokens"] == 56
