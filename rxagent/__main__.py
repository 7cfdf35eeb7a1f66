"""``python -m rxagent``: a small offline demo of a streaming agent run."""

from __future__ import annotations

import sys

import rxagent as ra
from rxagent import scripted as s
from rxagent.events import TextDelta, ToolCallEnded, ToolCallStarted


@ra.tool
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@ra.tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


def demo_provider() -> ra.ScriptedProvider:
    return ra.ScriptedProvider(
        [
            [
                "Let me work that out. ",
                s.call("add", {"a": 2, "b": 3}),
                s.call("multiply", {"a": 4, "b": 5}),
                s.usage(42, 18),
            ],
            ["2 + 3 = 5 ", "and 4 x 5 = 20.", s.usage(64, 9)],
        ],
        chunk_delay=0.05,
    )


def render(event: ra.AgentEvent) -> None:
    if isinstance(event, TextDelta):
        print(event.text, end="", flush=True)
    elif isinstance(event, ToolCallStarted):
        print(f"\n  -> {event.name}({event.arguments})", flush=True)
    elif isinstance(event, ToolCallEnded):
        print(f"  <- {event.name}: {event.error or event.output}", flush=True)


def main(argv: list[str] | None = None) -> int:
    print("rxagent demo (offline: a scripted model, no API key needed)")
    agent = ra.Agent(demo_provider(), tools=[add, multiply], max_tool_concurrency=2)
    run = agent.run("What are 2 + 3 and 4 x 5?")
    run.subscribe(render)
    result = run.result(timeout=30)
    print(
        f"\n[{result.steps} steps, {result.tool_calls} tool calls, "
        f"{result.usage.total_tokens} tokens, stop: {result.stop}]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
