"""The examples under examples/ run as a user would run them, and do what they say."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import rxagent as ra
from rxagent import events

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_asyncio_app_runs_agents_at_once_and_routes_their_events(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "asyncio_app.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = [re.fullmatch(r"\[(\w+)\] (\w+) (.*)", line) for line in done.stdout.splitlines()]
    assert all(lines), done.stdout
    said = [(m[1], m[2], m[3]) for m in lines if m]

    # The JSON-lines recorder: one file per agent, every line an event that reads back.
    recorded = {path.stem: events.from_jsonl(path.read_text()) for path in out.glob("*.jsonl")}
    assert set(recorded) == {"weather", "calculator", "news"}
    weather, calculator, news = (recorded[n] for n in ("weather", "calculator", "news"))
    assert isinstance(weather[-1], events.RunCompleted)
    assert weather[-1].run.text == "Paris is sunny, Oslo is rainy."
    assert isinstance(calculator[-1], events.RunCompleted)
    assert calculator[-1].run.text == "The answer is 50." and calculator[-1].run.steps == 3
    # The news run failed; its failure was recorded as data, and the app went on.
    assert isinstance(news[-1], events.RunFailed)
    assert news[-1].error_type == "ToolExecutionError" and "wire" in news[-1].message
    assert ("news", "failed") in {(a, k) for a, k, _ in said}

    # The agents ran at the same time: each started before any other finished.
    starts = {n: e[0].at for n, e in recorded.items() if isinstance(e[0], events.RunStarted)}
    ends = {n: e[-1].at for n, e in recorded.items()}
    assert len(starts) == 3 and max(starts.values()) < min(ends.values())

    # The token printer: each agent's pieces, as they came, add up to what it said, and the
    # agents' pieces are interleaved on stdout.
    pieces: dict[str, list[str]] = defaultdict(list)
    for agent, kind, detail in said:
        if kind == "text":
            pieces[agent].append(json.loads(detail))
    for name, evs in recorded.items():
        assert pieces[name] == [e.text for e in evs if isinstance(e, events.TextDelta)]
    order = [agent for agent, kind, _ in said if kind == "text"]
    assert order.index("calculator") < max(i for i, a in enumerate(order) if a == "weather")

    # The tool log: a start and an end for each call that ran, with the failure.
    tools = [(agent, detail) for agent, kind, detail in said if kind == "tool"]
    assert ("calculator", 'multiply {"a": 6, "b": 7} started') in tools
    assert ("calculator", "multiply -> 42") in tools
    assert any(a == "news" and "failed: " in d and "wire service is down" in d for a, d in tools)

    # The usage counter agrees with the runs' own totals.
    usage = {agent: detail for agent, kind, detail in said if kind == "usage"}
    for name, evs in recorded.items():
        final = evs[-1].run if isinstance(evs[-1], events.RunCompleted) else evs[-1].partial
        assert final is not None
        assert usage[name] == (
            f"{final.usage.prompt_tokens} prompt + {final.usage.completion_tokens} completion"
        )
    assert usage["weather"] == "85 prompt + 21 completion"
    # Every recorded event counted.
    recorded_counts = {agent: detail for agent, kind, detail in said if kind == "recorded"}
    for name, evs in recorded.items():
        assert recorded_counts[name].startswith(f"{len(evs)} events in ")
    assert ra.validate_conversation(weather[-1].run.messages) == []
