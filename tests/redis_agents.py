"""The agents the Redis tests' worker processes serve:
``python -m rxagent worker tests.redis_agents:agents``.

The models are scripted (no LLM), as functions of the conversation, so that a run
resumed in another process gets the same answers. ``$RXAGENT_TEST_MARKS`` names a
file where models and tools append what they did (one line each, with the worker's
pid), so a test can see which process did what, and a tool can see whether its call
id ran before (its idempotency key).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import rxagent as ra
from rxagent import approval
from rxagent import scripted as s
from rxagent.messages import ToolMessage, UserMessage
from rxagent.providers import ProviderRequest
from rxagent.tools import current_call


def _marks() -> Path | None:
    path = os.environ.get("RXAGENT_TEST_MARKS")
    return Path(path) if path else None


def mark(line: str) -> None:
    """Append ``line`` (with this process's pid) to the marks file."""
    path = _marks()
    if path is not None:
        with path.open("a") as f:
            f.write(f"{line} pid={os.getpid()}\n")


def marked(prefix: str) -> list[str]:
    """The marks that start with ``prefix``."""
    path = _marks()
    if path is None or not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line.startswith(prefix)]


def _prompt(request: ProviderRequest) -> str:
    for message in request.messages:
        if isinstance(message, UserMessage) and isinstance(message.content, str):
            return message.content
    return ""


def _answered(request: ProviderRequest) -> list[ToolMessage]:
    return [m for m in request.messages if isinstance(m, ToolMessage)]


# -- echo: one short step ---------------------------------------------------------------
def _echo(request: ProviderRequest) -> s.Turn:
    return ["echo: ", _prompt(request), s.usage(3, 2)]


# -- slow: a long stream, paced like a model; "hang-once" stalls the first time ---------
def _slow(request: ProviderRequest) -> s.Turn:
    prompt = _prompt(request)
    if prompt.startswith("hang-once"):
        seen = marked(f"model {prompt} ")
        mark(f"model {prompt} request={len(seen) + 1}")
        if not seen:  # the first worker to get it streams a little, then stalls
            return ["Hello ", "there, ", s.hang()]
        return ["Hello ", "there, ", "world."]
    pieces = int(prompt.split()[-1]) if prompt.split()[-1].isdigit() else 200
    items: list[s.ScriptItem] = []
    for i in range(pieces):
        items += [f"w{i} ", s.delay(0.005)]
    return items


# -- tools: a step with a tool call, then the answer ------------------------------------
@ra.tool
async def work(label: str) -> str:
    """Do some work on ``label``. The first run of a call id blocks when the label says
    so (a test kills its worker then); a run again of the same call id (its idempotency
    key) finishes."""
    call_id = current_call.get()
    before = marked(f"work {call_id} ")
    mark(f"work {call_id} run={len(before) + 1}")
    if label == "block-once" and not before:
        await asyncio.Event().wait()
    return f"worked on {label}"


def _tools(request: ProviderRequest) -> s.Turn:
    answers = _answered(request)
    if answers:
        return ["Done: ", answers[-1].content]
    label = _prompt(request)
    return ["Working. ", s.call("work", {"label": label}, id=f"call-{label}"), s.usage(5, 3)]


# -- approval: a transfer waits for a human ---------------------------------------------
transfers: list[int] = []


@ra.tool(approval=approval.require_approval("transfers need a human"))
def transfer(amount: int) -> str:
    """Transfer ``amount``."""
    mark(f"transfer {amount} call={current_call.get()}")
    return f"transferred {amount}"


def _bank(request: ProviderRequest) -> s.Turn:
    answers = _answered(request)
    if answers:
        return ["Bank says: ", answers[-1].content]
    return ["Transferring. ", s.call("transfer", {"amount": 100}, id="call-transfer")]


agents = {
    "echo": ra.Agent(ra.ScriptedProvider(_echo)),
    "slow": ra.Agent(ra.ScriptedProvider(_slow)),
    "tools": ra.Agent(ra.ScriptedProvider(_tools), tools=[work]),
    "bank": ra.Agent(ra.ScriptedProvider(_bank), tools=[transfer]),
}
