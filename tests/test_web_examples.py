"""The web examples run as a user would run them, and do what they say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, tmp_path: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_encoders_in_a_route_of_your_own(tmp_path: Path) -> None:
    lines = run_example("web_own_route.py", tmp_path)
    split = lines.index("AG-UI:")
    chunks = [json.loads(line) for line in lines[1 : split - 1]]
    assert lines[0] == "AI SDK: v1" and lines[split - 1] == "  [DONE]"
    assert [c["type"] for c in chunks][:2] == ["start", "start-step"]
    outputs = [c for c in chunks if c["type"] == "tool-output-available"]
    assert [c["output"] for c in outputs] == [5]
    text = "".join(c["delta"] for c in chunks if c["type"] == "text-delta")
    assert text == "Adding. 2 + 3 = 5." and chunks[-1]["finishReason"] == "stop"
    kinds = [line.strip() for line in lines[split + 1 :]]
    assert kinds[0] == "RUN_STARTED" and kinds[-1] == "RUN_FINISHED"
    assert kinds.count("TOOL_CALL_RESULT") == 1


def test_the_agui_client_answers_the_interrupt(tmp_path: Path) -> None:
    lines = run_example("web_ag_ui.py", tmp_path)
    assert lines[0] == "RUN_STARTED run-1"
    assert any(line.startswith("RUN_FINISHED run-1: interrupt") for line in lines)
    interrupt = next(line for line in lines if line.startswith("interrupt "))
    assert interrupt.endswith(": tool_approval (money moves)")
    assert "RUN_STARTED run-2" in lines and "  result call_1_1: sent 5 to ana" in lines
    assert lines[-1] == "answer: Sent 5 to Ana."
