"""An MCP server for rxagent's tests, on the official SDK's MCPServer (FastMCP in v1).

Run it over stdio (``python tests/mcp_test_server.py``) or streamable HTTP
(``python tests/mcp_test_server.py --http``: it listens on a free port of
127.0.0.1 and prints ``PORT <n>`` once the socket accepts connections).

Its tools report progress, wait until cancelled (and remember the
cancellation, which ``cancellations`` reports), add a tool at run time and
announce it, crash the process, fail, and return images, audio, embedded
resources and structured content, one of them not fitting its schema.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

import anyio
import uvicorn
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Audio, Image
from mcp.types import CallToolResult, EmbeddedResource, TextContent, TextResourceContents
from pydantic import BaseModel

#: A 1x1 transparent PNG.
PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)

server: MCPServer[Any] = MCPServer("rxagent-test", version="1.0")
#: The tags of the calls of wait_forever that were cancelled, and an event set at each.
cancelled: set[str] = set()
cancellation = anyio.Event()


class Count(BaseModel):
    n: int
    unit: str


@server.tool()
async def count_to(n: int, ctx: Context) -> str:
    """Count to n, reporting progress at each number."""
    for i in range(1, n + 1):
        await ctx.report_progress(i, n, f"counted {i}")
    return f"counted to {n}"


@server.tool()
async def wait_forever(tag: str, ctx: Context) -> str:
    """Report that the wait began, then wait until the call is cancelled; remember the
    cancellation by its tag."""
    global cancellation
    try:
        await ctx.report_progress(0, None, f"waiting ({tag})")
        await anyio.sleep_forever()
    except anyio.get_cancelled_exc_class():
        cancelled.add(tag)
        cancellation.set()
        cancellation = anyio.Event()
        raise
    return "unreachable"


@server.tool()
async def was_cancelled(tag: str, within: float = 10.0) -> bool:
    """Whether the call of wait_forever tagged ``tag`` was cancelled, waiting for that
    up to ``within`` seconds (the cancellation may still be on its way)."""
    with anyio.move_on_after(within):
        while tag not in cancelled:
            await cancellation.wait()
    return tag in cancelled


@server.tool()
async def add_tool(name: str, ctx: Context) -> str:
    """Add a tool called ``name`` (it echoes its text) and announce the new list."""

    def echo_tool(text: str) -> str:
        return f"{name}: {text}"

    server.add_tool(echo_tool, name=name, description=f"Echo, as {name}.")
    await ctx.notify_tools_changed()  # 2026-07-28: to subscriptions/listen streams
    if ctx.protocol_version != "2026-07-28":  # earlier eras: a plain notification
        await ctx.request_context.session.send_tool_list_changed()
    return f"added {name}"


@server.tool()
async def crash() -> str:
    """Exit the server process at once (code 3)."""
    print("crashing on purpose", file=sys.stderr, flush=True)
    os._exit(3)


@server.tool()
def fail(reason: str) -> str:
    """Fail with ``reason`` (an isError result)."""
    raise ToolError(reason)


@server.tool()
def echo(text: str, times: int = 1) -> str:
    """``text`` repeated ``times`` times."""
    return text * times


@server.tool()
def header(name: str, ctx: Context) -> str:
    """The value of the HTTP request header ``name`` ("" when there is none, or no HTTP)."""
    return (ctx.headers or {}).get(name.lower(), "")


@server.tool()
def measure() -> Count:
    """A structured result."""
    return Count(n=3, unit="m")


@server.tool()
def rogue_measure() -> Count:
    """A structured result that the server garbles on the way out (see the middleware)."""
    return Count(n=3, unit="m")


@server.tool(structured_output=False)
def picture() -> list[Any]:
    """A caption, an image and a sound."""
    return ["a pixel", Image(data=PIXEL, format="png"), Audio(data=b"RIFF", format="wav")]


@server.tool()
def document() -> CallToolResult:
    """An embedded text resource."""
    contents = TextResourceContents(uri="memo://1", mime_type="text/plain", text="the memo")
    return CallToolResult(
        content=[
            TextContent(type="text", text="here it is"),
            EmbeddedResource(type="resource", resource=contents),
        ]
    )


@server.tool(name="odd.name.v2")
def odd_name() -> str:
    """A tool whose name OpenAI would refuse."""
    return "odd"


async def garble(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Break ``rogue_measure``'s structured content so it no longer fits its output schema."""
    result = await call_next(ctx)
    is_rogue = ctx.method == "tools/call" and (ctx.params or {}).get("name") == "rogue_measure"
    if is_rogue and isinstance(result, CallToolResult):
        return result.model_copy(update={"structured_content": {"n": "three", "unit": "m"}})
    if is_rogue and isinstance(result, dict):
        return {**result, "structuredContent": {"n": "three", "unit": "m"}}
    return result


server.middleware.append(garble)


async def serve_http() -> None:
    # The socket listens before the port is announced, so a client that connects at
    # once waits in the backlog until uvicorn accepts: no race, no polling.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(server.streamable_http_app(), log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP")
    args = parser.parse_args()
    if args.http:
        anyio.run(serve_http)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
