"""Helpers for the web tests: agents to serve, and a small SSE reader."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

import rxagent as ra
from rxagent import scripted as s
from rxagent.events import AgentEvent, loads
from rxagent.providers import ProviderRequest


def require(tool: str, found: bool) -> None:
    """Skip when ``tool`` is missing, locally; in CI (``CI`` set) that is a failure."""
    if found:
        return
    message = f"{tool} is not installed (.ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must run this test")
    pytest.skip(message)


@ra.tool(approval=ra.approval.require_approval("transfers need a human"))
def transfer(amount: int, to: str) -> str:
    """Send money."""
    return f"sent {amount} to {to}"


@ra.tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@ra.tool
def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(reason)


def bank_turn(request: ProviderRequest) -> list[Any]:
    """Every run: add, ask to transfer (the run pauses), then answer from the results."""
    if not any(isinstance(m, ra.ToolMessage) for m in request.messages[-3:]):
        return [
            "Adding first. ",
            s.call("add", {"a": 2, "b": 3}, id="call_add"),
            s.call("transfer", {"amount": 5, "to": "ana"}, id="call_pay"),
            s.usage(30, 12),
        ]
    return ["Added 5 and ", "paid Ana.", s.usage(50, 6)]


def bank_agent(script: Any = None, **options: Any) -> ra.Agent:
    provider = ra.ScriptedProvider(script if script is not None else bank_turn)
    return ra.Agent(provider, tools=[add, transfer, explode], **options)


@dataclass
class Message:
    """One SSE message."""

    id: str | None = None
    event: str | None = None
    data: str = ""
    comments: list[str] = field(default_factory=list)

    def agent_event(self) -> AgentEvent:
        return loads(self.data)

    def json(self) -> Any:
        return json.loads(self.data)


def sse_messages(lines: Iterator[str], *, keep_comments: bool = False) -> Iterator[Message]:
    """SSE messages from the lines of a stream (comments become messages of their own
    when ``keep_comments``)."""
    current = Message()
    pending = False
    for line in lines:
        if line == "":
            if pending:
                yield current
            current, pending = Message(), False
        elif line.startswith(":"):
            if keep_comments:
                yield Message(comments=[line[1:].strip()])
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            pending = True
            if name == "id":
                current.id = value
            elif name == "event":
                current.event = value
            elif name == "data":
                current.data = value if not current.data else current.data + "\n" + value
    if pending:
        yield current


def read_stream(
    client: httpx.Client, path: str, *, headers: dict[str, str] | None = None, limit: int = 0
) -> list[Message]:
    """The messages of a stream until it ends (or the first ``limit`` of them)."""
    out: list[Message] = []
    with client.stream("GET", path, headers=headers or {}) as response:
        assert response.status_code == 200, response.read()
        for message in sse_messages(response.iter_lines()):
            out.append(message)
            if limit and len(out) >= limit:
                break
    return out


def indexed_events(messages: list[Message]) -> list[tuple[int, AgentEvent]]:
    return [(int(m.id or -1), m.agent_event()) for m in messages if m.event]
