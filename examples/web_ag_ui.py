"""An AG-UI client of rxagent.web: a run, its interrupt (a call waiting for approval), the
resume that answers it.

    python examples/web_ag_ui.py                        # serves a small agent itself
    python examples/web_ag_ui.py --url http://127.0.0.1:8000 --agent demo   # rxagent web

It posts AG-UI's ``RunAgentInput`` to ``POST /ag-ui`` and reads the AG-UI events back
(server-sent events, parsed with the ``ag-ui-protocol`` package's own types). A run that
pauses ends with ``RUN_FINISHED`` whose outcome is an ``interrupt``; the next
``RunAgentInput`` carries ``resume`` entries that approve each interrupt, and the server
resumes the paused run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
from ag_ui import core as agui
from pydantic import TypeAdapter

EVENT: TypeAdapter[Any] = TypeAdapter(agui.Event)


def run(client: httpx.Client, body: dict[str, Any]) -> Iterator[Any]:
    """The AG-UI events of one ``POST /ag-ui``."""
    with client.stream("POST", "/ag-ui", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: "):
                yield EVENT.validate_json(line[len("data: ") :])


def show(event: Any) -> None:
    kind = event.type.value
    if kind == "TEXT_MESSAGE_CONTENT":
        print(f"  text {event.delta!r}")
    elif kind == "TOOL_CALL_START":
        print(f"  tool {event.tool_call_name} ({event.tool_call_id})")
    elif kind == "TOOL_CALL_RESULT":
        print(f"  result {event.tool_call_id}: {event.content}")
    elif kind == "RUN_FINISHED":
        outcome = event.outcome.type if event.outcome is not None else "success"
        print(f"{kind} {event.run_id}: {outcome} {json.dumps(event.result)}")
    elif kind in ("RUN_STARTED", "RUN_ERROR"):
        print(f"{kind} {getattr(event, 'run_id', '')}".rstrip())


def talk(url: str, agent: str, prompt: str) -> str:
    """Run ``prompt`` on ``agent``, approving whatever waits; the final text."""
    thread = "thread-1"
    body: dict[str, Any] = {
        "threadId": thread,
        "runId": "run-1",
        "messages": [{"id": "m1", "role": "user", "content": prompt}],
        "forwardedProps": {"agent": agent},
    }
    with httpx.Client(base_url=url, timeout=60) as client:
        for turn in range(2, 10):
            last = None
            for event in run(client, body):
                show(event)
                last = event
            outcome = getattr(last, "outcome", None)
            if not isinstance(outcome, agui.RunFinishedInterruptOutcome):
                return str(last.result["text"]) if last is not None and last.result else ""
            for interrupt in outcome.interrupts:
                print(f"interrupt {interrupt.id}: {interrupt.reason} ({interrupt.message})")
            body = {
                "threadId": thread,
                "runId": f"run-{turn}",
                "messages": [],
                "resume": [
                    {"interruptId": i.id, "status": "resolved", "payload": {"approved": True}}
                    for i in outcome.interrupts
                ],
            }
    raise RuntimeError("the run kept pausing")


def small_server() -> contextlib.AbstractContextManager[Any]:
    """The app of rxagent.web on an offline agent whose transfers ask first."""
    import rxagent as ra
    from rxagent import scripted as s
    from rxagent.web import ServerThread, create_app

    @ra.tool(approval=ra.approval.require_approval("money moves"))
    def transfer(amount: int, to: str) -> str:
        """Send money."""
        return f"sent {amount} to {to}"

    provider = ra.ScriptedProvider(
        [["Sending. ", s.call("transfer", {"amount": 5, "to": "ana"})], ["Sent 5 to Ana."]]
    )
    return ServerThread(create_app({"bank": ra.Agent(provider, tools=[transfer])}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an rxagent.web app (default: start a small one here)")
    parser.add_argument("--agent", default="bank")
    parser.add_argument("--prompt", default="Pay Ana 5.")
    args = parser.parse_args()
    if args.url:
        text = talk(args.url, args.agent, args.prompt)
    else:
        with small_server() as server:
            text = talk(server.url, args.agent, args.prompt)
    print(f"answer: {text}")


if __name__ == "__main__":
    main()
