"""MCP servers as rxagent toolsets (the ``mcp`` extra: ``pip install rxagent[mcp]``).

An :class:`MCPToolset` connects to one MCP server, over stdio (a subprocess) or
streamable HTTP, and offers the server's tools to an agent like any
:class:`~rxagent.tools.Toolset`::

    async with MCPToolset.stdio("uvx", ["mcp-server-time"]) as time_tools:
        agent = ra.Agent(provider, tools=[time_tools, get_weather])
        result = await ra.collect_final(agent.run("What time is it in Tokyo?"))

Each call is an MCP ``tools/call`` request: the server's progress
notifications are ``ToolProgress`` events, its result is the call's output
(the structured content where the tool has some, else its text, else its
content blocks as MCP data), a result with ``isError`` is a tool error for the
join policy, and cancelling the run (or a timeout) sends the server MCP's
cancellation. When the server announces that its tool list changed, the
toolset lists the tools again and the agent offers the new list from its next
provider request.

Built on the official ``mcp`` SDK (v2), which speaks both protocol eras
(2025-11-25 and 2026-07-28) and every transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import IO, Any, Literal, TextIO, TypedDict, Unpack, cast
from urllib.parse import urlsplit

import httpx2
import mcp.types as mcp_types
from jsonschema import SchemaError
from jsonschema.validators import validator_for
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ToolsListChanged
from mcp.shared.exceptions import MCPError
from mcp.types import CONNECTION_CLOSED
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from rxagent._text import clip, one_line
from rxagent.approval import Decision, Strategy, as_strategy
from rxagent.errors import ToolArgumentsError, ToolError, ToolExecutionError, ToolOutputError
from rxagent.tools import (
    BoundCall,
    Tool,
    Toolset,
    _clean_schema,
    _too_deep,
    current_call,
    parse_arguments,
)

__all__ = ["MCPServerError", "MCPTool", "MCPToolset", "Options"]

log = logging.getLogger("rxagent")

#: How the SDK settles the protocol version: ``"auto"`` asks the server (2026-07-28 where
#: it speaks it, else the 2025-11-25 handshake); ``"legacy"`` forces the handshake.
Mode = Literal["auto", "legacy"]

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_PAGES = 100  # a server whose tools/list pagination never ends cannot hang a refresh


class Options(TypedDict, total=False):
    """The options every :class:`MCPToolset` takes, whatever its transport."""

    name: str | None
    prefix: str | None
    approval: Strategy | Decision | None
    approvals: Mapping[str, Strategy | Decision] | None
    timeout: float | None
    timeouts: Mapping[str, float] | None
    connect_timeout: float
    mode: Mode


class MCPServerError(ToolError):
    """An MCP server could not be started or reached, or went away (it exited, the
    connection broke); the message says which server and what its stderr last said."""


class MCPTool(Tool[..., Any]):
    """A tool of an MCP server, as the model sees it: the server's name (made valid for
    OpenAI, with the toolset's prefix), description and input schema.

    Arguments are validated against the server's JSON schema before the call.
    ``metadata`` holds ``mcp_server``, ``mcp_tool`` (the server's name for it),
    ``title`` and ``annotations`` (``readOnlyHint``, ``destructiveHint``, ...), so an
    approval strategy can tell a read from a write. Calling the tool (``await
    tool(**arguments)``) calls the server and returns the output.
    """

    def __init__(
        self,
        toolset: MCPToolset,
        listed: mcp_types.Tool,
        name: str,
        *,
        timeout: float | None = None,
        approval: Strategy | Decision | None = None,
    ) -> None:
        # Not Tool.__init__: the schema is the server's, not a Python signature's.
        self.toolset = toolset
        self.remote_name = listed.name
        self.name = name
        self.description = listed.description or listed.title or ""
        self.timeout = timeout
        self.strict = False
        annotations = listed.annotations
        self.metadata: dict[str, Any] = {
            "mcp_server": toolset.name,
            "mcp_tool": listed.name,
            "title": listed.title or (annotations.title if annotations else None),
            "annotations": (
                annotations.model_dump(mode="json", by_alias=True, exclude_none=True)
                if annotations
                else {}
            ),
        }
        self.approval = as_strategy(approval)
        self.input_schema: dict[str, Any] = dict(listed.input_schema)
        self.output_schema = listed.output_schema
        self.parameters = _object_schema(_clean_schema(self.input_schema))
        self._validator = _validator(self.input_schema, toolset.name, listed.name)
        self.fn = self._call

    def __repr__(self) -> str:
        return f"MCPTool({self.name!r} of {self.toolset.name!r})"

    async def _call(self, **arguments: Any) -> Any:
        output: Any = None
        async for final, value in self.toolset._call(self, arguments):
            if final:
                output = value
        return output

    def bind(self, arguments: str | Mapping[str, Any], call_id: str = "") -> BoundCall:
        """Parse ``arguments`` and check them against the server's input schema;
        raises :class:`~rxagent.errors.ToolArgumentsError`."""
        data = parse_arguments(self.name, arguments, call_id)
        if self._validator is not None:
            try:
                errors = sorted(self._validator.iter_errors(data), key=lambda e: list(e.path))
            except RecursionError:
                raise _too_deep(self.name, call_id) from None
            if errors:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e.absolute_path) or '(arguments)'}: {e.message}"
                    for e in errors[:8]
                )
                raise ToolArgumentsError(
                    f"arguments for tool {self.name!r} do not fit its schema: {problems}",
                    call_id=call_id,
                    tool_name=self.name,
                )
        return BoundCall(self, data, data)

    async def stream(
        self,
        kwargs: Mapping[str, Any],
        *,
        executor: Executor | None = None,
        call_id: str | None = None,
    ) -> AsyncIterator[tuple[bool, Any]]:
        """Call the server: yields ``(False, progress)`` items, then ``(True, output)``."""
        if call_id is not None:
            current_call.set(call_id)  # as for any tool (see rxagent.tools.current_call)
        async for item in self.toolset._call(self, dict(kwargs)):
            yield item


class MCPToolset(Toolset):
    """The tools of one MCP server, for ``ra.Agent(tools=[toolset, ...])``.

    Make one with :meth:`stdio` or :meth:`http` (or give ``server`` anything the
    SDK's ``mcp.Client`` takes: a URL, ``StdioServerParameters``, a transport, an
    in-process ``MCPServer``). Connect with ``async with toolset:`` or, in a
    notebook, ``await toolset.connect()`` and later ``await toolset.aclose()``;
    connect on the event loop that runs the agent. Until connected the toolset has
    no tools; an agent made earlier sees them from its next step.

    * ``name``: the server's name in messages (default: the name it reports).
    * ``prefix``: ``prefix="git"`` offers the server's ``status`` as ``git_status``,
      against clashes with other toolsets. Names are made valid for OpenAI
      (``[A-Za-z0-9_-]``, at most 64 characters).
    * ``approval``: the strategy for every tool of the server; ``approvals`` maps a
      tool (by the server's name for it) to its own, which wins.
    * ``timeout``: seconds for every call to the server; ``timeouts`` per tool.
      A call past its time fails with ``ToolTimeoutError`` and is cancelled on the
      server. (Without either, the agent's ``tool_timeout`` applies.)
    * ``connect_timeout``: seconds for starting the server and listing its tools.
    * ``mode``: the SDK's protocol negotiation (``"auto"`` or ``"legacy"``).

    A server that cannot be started or reached makes :meth:`connect` raise
    :class:`MCPServerError`. A server that exits or drops the connection later fails
    the calls running then, and every later call, with :class:`MCPServerError`; under
    ``REPORT_TO_MODEL`` the model reads why and the run goes on. ``connect()`` again
    starts a new session.
    """

    def __init__(
        self,
        server: StdioServerParameters | str | Any,
        *,
        name: str | None = None,
        prefix: str | None = None,
        approval: Strategy | Decision | None = None,
        approvals: Mapping[str, Strategy | Decision] | None = None,
        timeout: float | None = None,
        timeouts: Mapping[str, float] | None = None,
        headers: Mapping[str, str] | None = None,
        errlog: TextIO | None = None,
        connect_timeout: float = 30.0,
        mode: Mode = "auto",
    ) -> None:
        for value in (timeout, *(timeouts or {}).values()):
            if value is not None and value <= 0:
                raise ValueError(f"an MCP tool's timeout must be positive, got {value!r}")
        super().__init__((), approval=approval, name=name or _default_name(server))
        self.tools: list[Tool[..., Any]] = []
        self.server = server
        self.prefix = prefix
        self.approvals = dict(approvals or {})
        self.timeout = timeout
        self.timeouts = dict(timeouts or {})
        self.headers = dict(headers or {})
        self.errlog = errlog
        self.connect_timeout = connect_timeout
        self.mode: Mode = mode
        self._named = name is not None
        self._client: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        #: Why the server is gone, once it is (it exited, the connection broke).
        self._gone: str | None = None
        self._stderr: IO[str] | None = None
        #: Tool-list changes the server announced; a refresh runs while it moves.
        self._changes = 0
        self._refreshing: asyncio.Task[None] | None = None

    # -- making one ---------------------------------------------------------------
    @classmethod
    def stdio(
        cls,
        command: str,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        errlog: TextIO | None = None,
        **options: Unpack[Options],
    ) -> MCPToolset:
        """A server run as a subprocess, spoken to over its stdin and stdout.

        ``env`` is added to a minimal inherited environment (``PATH``, ``HOME``, ...;
        the SDK's rule). The server's stderr is kept, and its last lines are quoted
        in errors; give ``errlog`` (a file) to have it written there instead.
        ``options`` are :class:`MCPToolset`'s (``name``, ``prefix``, ``approval``, ...).
        """
        params = StdioServerParameters(
            command=command,
            args=list(args),
            env=dict(env) if env is not None else None,
            cwd=os.fspath(cwd) if cwd is not None else None,
        )
        return cls(params, errlog=errlog, **options)

    @classmethod
    def http(
        cls, url: str, *, headers: Mapping[str, str] | None = None, **options: Unpack[Options]
    ) -> MCPToolset:
        """A server at ``url`` (its MCP endpoint, e.g. ``http://127.0.0.1:8000/mcp``),
        over streamable HTTP; ``headers`` go with every request (an API key, say).
        ``options`` are :class:`MCPToolset`'s (``name``, ``prefix``, ``approval``, ...)."""
        return cls(url, headers=headers, **options)

    def __repr__(self) -> str:
        state = (
            "connected"
            if self.connected
            else (f"gone: {self._gone}" if self._gone else "not connected")
        )
        return f"MCPToolset({self.name!r}, {state}, {[t.name for t in self.tools]})"

    # -- lifecycle ----------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Whether a session with the server is open."""
        return self._client is not None and self._gone is None

    async def __aenter__(self) -> MCPToolset:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Start (or reach) the server and list its tools; raises :class:`MCPServerError`.

        The session lives in a task of its own on this event loop, so ``connect()``
        and ``aclose()`` may be awaited from different tasks (notebook cells).
        Connecting a connected toolset does nothing; one whose server went away
        starts a new session.
        """
        if self.connected:
            return
        if self._task is not None:
            await self.aclose()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._closing = asyncio.Event()
        self._gone = None
        ready: asyncio.Future[None] = loop.create_future()
        task = loop.create_task(self._serve(ready), name=f"rxagent-mcp-{self.name}")
        self._task = task
        try:
            await asyncio.shield(ready)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait([task])
            self._task = None
            raise
        except MCPServerError:
            await asyncio.wait([task])
            self._task = None
            raise

    async def aclose(self) -> None:
        """End the session: stop the server process or close the HTTP session. The
        tools stay listed; calling one now fails with :class:`MCPServerError`."""
        task = self._task
        if task is None:
            return
        self._closing.set()
        # Shielded: a caller cancelled while closing must not leave the server half-stopped.
        await asyncio.shield(task)
        self._task = None

    async def refresh(self) -> None:
        """List the server's tools again (done by itself when the server announces a
        change); agents see the new list from their next provider request."""
        client = self._connected_client(None)
        listed: list[mcp_types.Tool] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            page = await client.list_tools(cursor=cursor)
            listed.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        self.tools = list(self._make_tools(listed))
        self.revision += 1

    async def _serve(self, ready: asyncio.Future[None]) -> None:
        """The session, from connecting to closing, in a task of its own (the SDK's
        cancel scopes must be entered and left in one task)."""
        # The server's stderr, kept to quote its last lines in errors.
        keep = isinstance(self.server, StdioServerParameters) and self.errlog is None
        with contextlib.ExitStack() as files:
            if keep:
                self._stderr = files.enter_context(tempfile.TemporaryFile("w+", errors="replace"))
            try:
                await self._session(ready)
            except asyncio.CancelledError:
                if not ready.done():
                    ready.cancel()
                raise
            except (Exception, BaseExceptionGroup) as error:  # groups: the SDK's task groups
                problem = _root_cause(error)
                if not ready.done():
                    ready.set_exception(self._connect_error(problem))
                elif not self._closing.is_set():
                    self._went_away(f"the connection broke ({_describe(problem)})")
                else:
                    log.debug("MCP server %r: error while closing", self.name, exc_info=error)
            else:
                if not self._closing.is_set():
                    self._went_away("the connection closed")
            finally:
                self._client = None
                self._stderr = None
                if self._refreshing is not None:
                    self._refreshing.cancel()

    async def _session(self, ready: asyncio.Future[None]) -> None:
        async with contextlib.AsyncExitStack() as stack:
            client = Client(
                self._transport(),
                cache=None,  # a list_changed announcement must never be answered from a cache
                mode=self.mode,
                message_handler=self._on_message,
                client_info=mcp_types.Implementation(name="rxagent", version=_version()),
            )
            async with asyncio.timeout(self.connect_timeout):
                await stack.enter_async_context(client)
                info = client.server_info
                if not self._named and info is not None and info.name:
                    self.name = info.name
                self._client = client
                await self.refresh()
                self._warn_unknown_names()
                capability = client.server_capabilities.tools
                modern = client.protocol_version in MODERN_PROTOCOL_VERSIONS
                if modern and capability is not None and capability.list_changed:
                    # 2026-07-28: announcements come on a subscriptions/listen stream.
                    subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    listener = asyncio.create_task(self._listen(client, subscribed))
                    stack.push_async_callback(_cancel, listener)
                    await subscribed
            ready.set_result(None)
            await self._closing.wait()

    def _transport(self) -> Any:
        server = self.server
        if isinstance(server, StdioServerParameters):
            errlog = self.errlog or cast(TextIO, self._stderr)
            return stdio_client(server, errlog=errlog)
        if isinstance(server, str):
            return _http_transport(server, self.headers)
        return server

    async def _listen(self, client: Client, subscribed: asyncio.Future[None]) -> None:
        try:
            async with client.listen(tools_list_changed=True) as subscription:
                subscribed.set_result(None)
                async for event in subscription:
                    if isinstance(event, ToolsListChanged):
                        self._list_changed()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.info("MCP server %r: no more tool-list announcements (%s)", self.name, error)
        finally:
            if not subscribed.done():
                subscribed.set_result(None)

    async def _on_message(self, message: Any) -> None:
        # 2025-11-25: announcements are plain notifications.
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self._list_changed()

    def _list_changed(self) -> None:
        self._changes += 1
        if self._client is not None and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh_while_stale())

    async def _refresh_while_stale(self) -> None:
        seen = -1
        while seen != self._changes and self._client is not None:
            seen = self._changes
            try:
                await self.refresh()
            except Exception as error:
                log.warning("MCP server %r: listing its tools again failed: %s", self.name, error)
                return

    # -- calls --------------------------------------------------------------------
    async def _call(
        self, tool: MCPTool, arguments: dict[str, Any]
    ) -> AsyncIterator[tuple[bool, Any]]:
        client = self._connected_client(tool)
        items: asyncio.Queue[tuple[bool, Any] | None] = asyncio.Queue()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            data: dict[str, Any] = {"progress": progress}
            if total is not None:
                data["total"] = total
            if message is not None:
                data["message"] = message
            items.put_nowait((False, data))

        changes = self._changes
        call = asyncio.ensure_future(
            client.call_tool(tool.remote_name, arguments, progress_callback=on_progress)
        )
        call.add_done_callback(lambda _: items.put_nowait(None))
        try:
            while (item := await items.get()) is not None:
                yield item
            output = self._output(tool, call)
            refreshing = self._refreshing
            if self._changes != changes and refreshing is not None:
                # The call changed the server's tools: the next step must offer the new list.
                await asyncio.shield(refreshing)
            yield True, output
        finally:
            if not call.done():
                # Cancelling the request makes the SDK send notifications/cancelled.
                call.cancel()
                await asyncio.wait([call])

    def _output(self, tool: MCPTool, call: asyncio.Future[mcp_types.CallToolResult]) -> Any:
        try:
            result = call.result()
        except MCPError as error:
            if error.code == CONNECTION_CLOSED:
                if self._closing.is_set() and self._gone is None:
                    raise MCPServerError(
                        f"MCP toolset {self.name!r} was closed during the call to {tool.name!r}"
                    ) from error
                reason = self._gone or self._went_away("it closed the connection")
                raise MCPServerError(
                    f"MCP server {self.name!r} went away during the call to {tool.name!r}: {reason}"
                ) from error
            raise ToolExecutionError(
                f"MCP server {self.name!r} refused the call to {tool.name!r}: {error.message}"
            ) from error
        except (RuntimeError, ValidationError) as error:
            first = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            raise ToolOutputError(
                f"the result of tool {tool.name!r} from MCP server {self.name!r} does not fit: "
                f"{clip(first, 300)}"
            ) from error
        except (OSError, httpx2.HTTPError) as error:
            raise MCPServerError(
                f"MCP server {self.name!r} failed during the call to {tool.name!r}: "
                f"{_describe(error)}"
            ) from error
        if result.is_error:
            raise ToolExecutionError(f"tool {tool.name!r} failed: {_error_text(result.content)}")
        return _output(result)

    def _connected_client(self, tool: MCPTool | None) -> Client:
        what = f"cannot call {tool.name!r}: " if tool is not None else ""
        if self._gone is not None:
            raise MCPServerError(f"{what}MCP server {self.name!r} is gone: {self._gone}")
        client = self._client
        if client is None:
            raise MCPServerError(
                f"{what}MCP server {self.name!r} is not connected "
                "(use `async with toolset:` or `await toolset.connect()`)"
            )
        if asyncio.get_running_loop() is not self._loop:
            raise MCPServerError(
                f"{what}MCP server {self.name!r} was connected on another event loop; "
                "connect it on the loop that runs the agent"
            )
        return client

    def _went_away(self, why: str) -> str:
        """Mark the server gone (and end the session, freeing its process and pipes)."""
        if self._gone is None:
            tail = self._stderr_tail()
            self._gone = why + (f"; its stderr ends with: {tail}" if tail else "")
            self._closing.set()
        return self._gone

    # -- helpers ------------------------------------------------------------------
    def _make_tools(self, listed: Iterable[mcp_types.Tool]) -> Iterable[MCPTool]:
        taken: set[str] = set()
        for found in listed:
            wanted = f"{self.prefix}_{found.name}" if self.prefix else found.name
            name = _valid_name(wanted)
            if name in taken:  # two names made the same by the rules: tell them apart
                name = _valid_name(wanted, force_hash=True)
            taken.add(name)
            yield MCPTool(
                self,
                found,
                name,
                timeout=self.timeouts.get(found.name, self.timeouts.get(name, self.timeout)),
                approval=self.approvals.get(found.name, self.approvals.get(name)),
            )

    def _warn_unknown_names(self) -> None:
        known = {t.remote_name for t in self.tools if isinstance(t, MCPTool)}
        known |= {t.name for t in self.tools}
        for field, names in (("approvals", self.approvals), ("timeouts", self.timeouts)):
            unknown = sorted(set(names) - known)
            if unknown:
                log.warning(
                    "MCP server %r lists no tool named %s (given in %s)",
                    self.name,
                    ", ".join(map(repr, unknown)),
                    field,
                )

    def _stderr_tail(self, limit: int = 400) -> str:
        stderr = self._stderr
        if stderr is None or stderr.closed:
            return ""
        try:
            fd = stderr.fileno()
            size = os.fstat(fd).st_size
            # pread leaves the offset the server writes at alone.
            raw = os.pread(fd, 4096, max(0, size - 4096)).decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [line.strip() for line in raw.splitlines() if line.strip()]
        return one_line(" | ".join(lines[-3:]), limit)

    def _connect_error(self, error: BaseException) -> MCPServerError:
        server = self.server
        where = f"{server.command!r}" if isinstance(server, StdioServerParameters) else repr(server)
        if isinstance(error, FileNotFoundError):
            message = f"cannot start MCP server {self.name!r}: command {where} was not found"
        elif isinstance(error, TimeoutError):
            message = (
                f"MCP server {self.name!r} ({where}) did not answer within "
                f"{self.connect_timeout:g}s"
            )
        elif isinstance(error, MCPError) and error.code == CONNECTION_CLOSED:
            message = f"MCP server {self.name!r} ({where}) closed the connection while connecting"
        elif isinstance(error, httpx2.HTTPError):
            message = f"cannot reach MCP server {self.name!r} at {where}: {_describe(error)}"
        else:
            message = f"cannot connect to MCP server {self.name!r} ({where}): {_describe(error)}"
        tail = self._stderr_tail()
        if tail:
            message += f"; its stderr ends with: {tail}"
        failure = MCPServerError(message)
        failure.__cause__ = error
        return failure


# -- results --------------------------------------------------------------------------


def _output(result: mcp_types.CallToolResult) -> Any:
    """A tool result as the call's output: the structured content where there is some,
    else the text (blocks joined by newlines), else the content blocks as MCP's JSON."""
    if result.structured_content is not None:
        return result.structured_content
    blocks = result.content
    if all(isinstance(b, mcp_types.TextContent) for b in blocks):
        return "\n".join(cast(mcp_types.TextContent, b).text for b in blocks)
    return [b.model_dump(mode="json", by_alias=True, exclude_none=True) for b in blocks]


def _error_text(blocks: Sequence[mcp_types.ContentBlock]) -> str:
    parts = [b.text if isinstance(b, mcp_types.TextContent) else f"[{b.type}]" for b in blocks]
    return clip(" ".join(parts).strip() or "(no message)", 2000)


# -- names, schemas, transports ---------------------------------------------------------


def _valid_name(name: str, *, force_hash: bool = False) -> str:
    """``name`` made a valid OpenAI function name (``[A-Za-z0-9_-]{1,64}``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", name) or "tool"
    if _NAME.fullmatch(cleaned) and not force_hash:
        return cleaned
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{cleaned[:55]}_{digest}"


def _object_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The input schema as OpenAI takes it: an object with ``properties``."""
    out = dict(schema)
    out.setdefault("type", "object")
    if out.get("type") == "object":
        out.setdefault("properties", {})
    return out


def _validator(schema: Mapping[str, Any], server: str, tool: str) -> Any:
    """A validator of arguments for ``schema`` (``None`` when the schema itself is bad)."""
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as error:
        log.warning(
            "MCP server %r: the input schema of %r is not valid JSON Schema (%s); its "
            "arguments go unchecked",
            server,
            tool,
            error.message,
        )
        return None
    return cls(schema)


@contextlib.asynccontextmanager
async def _http_transport(url: str, headers: Mapping[str, str]) -> AsyncIterator[Any]:
    # The SDK's defaults (30 s to connect, 5 min between bytes of a stream), plus headers.
    timeout = httpx2.Timeout(30.0, read=300.0)
    async with (
        httpx2.AsyncClient(headers=dict(headers), timeout=timeout) as http,
        streamable_http_client(url, http_client=http) as streams,
    ):
        yield streams


def _default_name(server: Any) -> str:
    if isinstance(server, StdioServerParameters):
        args = server.args
        if "-m" in args[:-1]:
            return args[args.index("-m") + 1]
        return Path(server.command).name
    if isinstance(server, str):
        return urlsplit(server).netloc or server
    return str(getattr(server, "name", None) or type(server).__name__)


def _root_cause(error: BaseException) -> BaseException:
    """The first error in an exception group that is not a cancellation."""
    while isinstance(error, BaseExceptionGroup):
        inner = [e for e in error.exceptions if not isinstance(e, asyncio.CancelledError)]
        error = (inner or list(error.exceptions))[0]
    return error


def _describe(error: BaseException) -> str:
    text = one_line(str(error), 300) if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.wait([task])


def _version() -> str:
    from rxagent import __version__

    return __version__
