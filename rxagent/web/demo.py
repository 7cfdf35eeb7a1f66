"""``rxagent web``: the chat page on the terminal demo's agent, in a browser.

The agent is the terminal demo's (``python -m rxagent``): three tools (``lookup``
streams its progress, ``weather`` fails now and then), and here ``calculate`` asks
for approval before it runs, so the page shows approve / edit / reject. With no
``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``--api-key`` or ``--base-url`` the model
is the demo's offline model on a loopback server, reached through the real
``OpenAIProvider``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette

import rxagent as ra
from rxagent import __main__ as terminal_demo
from rxagent.web.app import create_app
from rxagent.web.server import serve

__all__ = ["demo_agent", "demo_app", "main"]

AGENT_NAME = "demo"


def demo_agent(provider: ra.Provider, *, max_steps: int = 6, approval: bool = True) -> ra.Agent:
    """The demo agent on ``provider``; with ``approval``, ``calculate`` waits for a human."""
    lookup, calculate, weather = terminal_demo.TOOLS
    tools: list[Any] = [lookup, weather]
    if approval:
        ask = ra.approval.require_approval("the calculator asks before it runs")
        tools.append(ra.Toolset([calculate], approval=ask, name="needs approval"))
    else:
        tools.append(calculate)
    return ra.Agent(
        provider,
        tools=tools,
        instructions=terminal_demo.INSTRUCTIONS,
        policy=ra.policies.until_no_tool_calls() | ra.policies.max_steps(max_steps),
        max_tool_concurrency=4,
        name=AGENT_NAME,
    )


def demo_app(
    *,
    pace: float = 1.0,
    approval: bool = True,
    provider: ra.Provider | None = None,
    **app_options: Any,
) -> Starlette:
    """The app of ``rxagent web``: the chat page and the demo agent.

    Without ``provider``, the offline demo model serves on a loopback server
    started with the app and stopped at its shutdown. ``pace`` scales the demo's
    waits (0: none). Other options go to :func:`~rxagent.web.create_app`.
    """
    terminal_demo._pace = pace  # the demo tools' waits
    server = None
    if provider is None:
        from rxagent.testing import LoopbackServer

        server = LoopbackServer(terminal_demo.offline_model(pace), model="rxagent-demo").start()
        provider = server.provider(read_timeout=30.0)
    app = create_app({AGENT_NAME: demo_agent(provider, approval=approval)}, **app_options)
    inner: Callable[[Starlette], Any] = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with inner(app):
                yield
        finally:
            if server is not None:
                server.stop()

    app.router.lifespan_context = lifespan
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rxagent web",
        description=(
            "Serve rxagent's chat page on the demo agent. Without OPENAI_API_KEY, "
            "OPENAI_BASE_URL, --api-key or --base-url it runs offline on a built-in demo model."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port, 0 for a free one (default: %(default)s)"
    )
    terminal_demo.add_model_options(parser)
    parser.add_argument(
        "--no-approval", action="store_true", help="let calculate run without asking"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``rxagent web``: serve the page until interrupted."""
    args = build_parser().parse_args(argv)
    if args.pace < 0:
        build_parser().error("--pace must not be negative")
    offline = terminal_demo.is_offline(args)
    provider = None
    if not offline:
        from rxagent.providers.openai import OpenAIProvider

        provider = OpenAIProvider(args.model, base_url=args.base_url, api_key=args.api_key)
    app = demo_app(pace=args.pace, approval=not args.no_approval, provider=provider)
    model = "the offline demo model" if offline else args.model

    def ready(url: str) -> None:
        print(f"rxagent web · chat page on {model} at {url}/ (Ctrl-C stops)", file=sys.stderr)
        sys.stderr.flush()

    serve(app, host=args.host, port=args.port, on_ready=ready)
    return 0
