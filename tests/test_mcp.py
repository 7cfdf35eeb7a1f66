"""MCP servers as toolsets, driven through a real ``ra.Agent``, against real servers in
subprocesses: ``mcp-server-time`` and ``mcp-server-git`` (from PyPI, written by others)
and ``tests/mcp_test_server.py`` (progress, cancellation, list changes, crashes), over
stdio and streamable HTTP on 127.0.0.1.

One server of each kind serves the whole module where a test cannot break it; the tests
that crash a server, or need a session of their own, start their own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio

import rxagent as ra
from rxagent import scripted as s
from rxagent.approval import EXECUTE, ApprovalRequest, Decision, reject, require_approval
from rxagent.events import (
    AgentEvent,
    RunCompleted,
    ToolCallEnded,
    ToolCallStarted,
    ToolProgress,
)
from rxagent.providers.scripted import Turn

pytest.importorskip("mcp")

from rxagent.mcp import MCPServerError, MCPTool, MCPToolset

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVER = str(Path(__file__).with_name("mcp_test_server.py"))
OPENAI_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


# -- servers ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def http_server() -> AsyncIterator[str]:
    """The test server over streamable HTTP on a free port of 127.0.0.1; yields its URL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, SERVER, "--http", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        # The server prints its port once its socket listens: no polling, no sleeping.
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line.startswith(b"PORT "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}/mcp"
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository with one untracked file."""
    path = tmp_path_factory.mktemp("repository")
    for command in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "config", "user.email", "agent@example.com"],
        ["git", "config", "user.name", "Agent"],
    ):
        subprocess.run(command, cwd=path, check=True)
    (path / "notes.txt").write_text("remember the milk\n")
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def time_tools() -> AsyncIterator[MCPToolset]:
    args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]
    async with MCPToolset.stdio(sys.executable, args, prefix="time") as tools:
        yield tools


def reads_run_writes_wait(request: ApprovalRequest) -> Decision:
    """Run what the server marks read-only; ask a human for the rest."""
    if request.metadata["annotations"].get("readOnlyHint"):
        return EXECUTE
    return require_approval(f"{request.metadata['mcp_tool']} changes the repository")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def git_tools(repository: Path) -> AsyncIterator[MCPToolset]:
    async with MCPToolset.stdio(
        sys.executable,
        ["-m", "mcp_server_git", "--repository", str(repository)],
        approval=reads_run_writes_wait,
        approvals={"git_add": EXECUTE, "git_reset": reject("resetting is not allowed")},
    ) as tools:
        yield tools


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stdio_tools() -> AsyncIterator[MCPToolset]:
    async with MCPToolset.stdio(sys.executable, [SERVER]) as tools:
        yield tools


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http_url() -> AsyncIterator[str]:
    async with http_server() as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http_tools(http_url: str) -> AsyncIterator[MCPToolset]:
    async with MCPToolset.http(http_url, headers={"X-Test": "rxagent"}) as tools:
        yield tools


def load_test_server() -> ModuleType:
    """tests/mcp_test_server.py, imported here (making an MCPServer configures the root
    logger at INFO, for a server process; that is undone for this one)."""
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    try:
        return importlib.import_module(".mcp_test_server", __package__)
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def in_process_tools() -> AsyncIterator[MCPToolset]:
    """The same server in this process: no subprocess, no JSON-RPC framing."""
    async with MCPToolset(load_test_server().server) as tools:
        yield tools


@pytest.fixture(params=["stdio", "http", "in_process"])
def test_tools(request: pytest.FixtureRequest) -> MCPToolset:
    """The test server's tools, over each transport."""
    tools: MCPToolset = request.getfixturevalue(f"{request.param}_tools")
    return tools


# -- helpers ----------------------------------------------------------------------------


async def run_agent(
    tools: Sequence[Any], turns: Sequence[Turn], **options: Any
) -> tuple[list[AgentEvent], ra.AgentRun, ra.ScriptedProvider]:
    """Run an agent on ``turns`` to the end; its events, result and provider."""
    provider = ra.ScriptedProvider(turns)
    agent = ra.Agent(provider, tools=tools, **options)
    events = [event async for event in agent.run("go")]
    last = events[-1]
    assert isinstance(last, RunCompleted), last
    assert ra.validate_conversation(last.run.messages) == []
    return events, last.run, provider


def ends(events: Sequence[AgentEvent]) -> dict[str, ToolCallEnded]:
    return {e.call_id: e for e in events if isinstance(e, ToolCallEnded)}


def tool_named(tools: MCPToolset, name: str) -> MCPTool:
    found = next(t for t in tools.tools if t.name == name)
    assert isinstance(found, MCPTool)
    return found


async def git(repository: Path, *args: str) -> str:
    """What ``git args...`` prints in ``repository``."""
    process = await asyncio.create_subprocess_exec(
        "git", *args, cwd=repository, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    return out.decode()


def snapshot() -> tuple[set[int], set[str]]:
    """This process's child processes and open file descriptors (pipes, sockets, files)."""
    me = os.getpid()
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                    children.add(int(entry))
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds.add(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
    return children, fds


@contextlib.contextmanager
def nothing_left_behind() -> Any:
    """Fail if the block leaves a child process or an open descriptor behind."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc")
    children, fds = snapshot()
    yield
    after_children, after_fds = snapshot()
    assert after_children - children == set(), "child processes left behind"
    assert after_fds - fds == set(), "descriptors left open"


# -- the real servers -------------------------------------------------------------------


async def test_importing_rxagent_does_not_import_mcp() -> None:
    code = "import sys, rxagent; assert 'mcp' not in sys.modules, 'mcp was imported'"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()


async def test_the_time_server_answers_through_an_agent(time_tools: MCPToolset) -> None:
    events, result, provider = await run_agent(
        [time_tools],
        [
            [
                s.call("time_get_current_time", {"timezone": "Asia/Tokyo"}),
                s.call(
                    "time_convert_time",
                    {
                        "source_timezone": "Europe/Paris",
                        "time": "12:00",
                        "target_timezone": "Asia/Tokyo",
                    },
                ),
            ],
            ["It is evening in Tokyo."],
        ],
    )

    offered = {spec.name: spec for spec in provider.requests[0].tools}
    assert set(offered) == {"time_get_current_time", "time_convert_time"}
    now = offered["time_get_current_time"]
    assert now.description == "Get current time in a specific timezone"
    assert now.parameters["required"] == ["timezone"]
    assert "title" not in now.parameters["properties"]["timezone"]

    tokyo, converted = ends(events)["call_1_1"].output, ends(events)["call_1_2"].output
    assert tokyo["timezone"] == "Asia/Tokyo"
    assert datetime.fromisoformat(tokyo["datetime"]).utcoffset() == timedelta(hours=9)
    assert converted["source"]["timezone"] == "Europe/Paris"
    assert datetime.fromisoformat(converted["target"]["datetime"]).hour in (19, 20)
    # The model reads the result as JSON in the tool message.
    tool_messages = [m for m in result.messages if m.role == "tool"]
    assert json.loads(tool_messages[0].content)["timezone"] == "Asia/Tokyo"
    assert result.stop == ra.StopReason.NO_TOOL_CALLS and result.text == "It is evening in Tokyo."


async def test_bad_arguments_and_tool_errors_go_back_to_the_model(time_tools: MCPToolset) -> None:
    events, result, provider = await run_agent(
        [time_tools],
        [
            [
                s.call("time_get_current_time", {}),
                s.call("time_get_current_time", {"timezone": "Mars/Olympus_Mons"}),
            ],
            ["Sorry, I could not tell."],
        ],
    )

    started = [e.call_id for e in events if isinstance(e, ToolCallStarted)]
    assert started == ["call_1_2"]  # arguments that do not fit never reach the server
    missing, unknown = ends(events)["call_1_1"], ends(events)["call_1_2"]
    assert missing.error == (
        "arguments for tool 'time_get_current_time' do not fit its schema: "
        "(arguments): 'timezone' is a required property"
    )
    assert unknown.error is not None and unknown.error.startswith(
        "tool 'time_get_current_time' failed: "
    )
    assert "Invalid timezone" in unknown.error
    # Under REPORT_TO_MODEL both reach the model, and the run goes on.
    sent = provider.requests[1].messages
    assert [m.role for m in sent[-2:]] == ["tool", "tool"]
    assert all(m.is_error and m.content.startswith("Error: ") for m in sent[-2:])
    assert result.stop == ra.StopReason.NO_TOOL_CALLS


async def test_the_git_server_with_approval_per_server_and_per_tool(
    git_tools: MCPToolset, repository: Path
) -> None:
    repo = str(repository)
    provider = ra.ScriptedProvider(
        [
            [
                s.call("git_status", {"repo_path": repo}),
                s.call("git_add", {"repo_path": repo, "files": ["notes.txt"]}),
                s.call("git_reset", {"repo_path": repo}),
                s.call("git_commit", {"repo_path": repo, "message": "Add notes"}),
            ],
            [s.call("git_log", {"repo_path": repo, "max_count": 1})],
            ["Committed."],
        ]
    )
    agent = ra.Agent(provider, tools=[git_tools], max_tool_concurrency=1)

    paused = await ra.collect_final(agent.run("Commit my notes."))
    assert paused.stop == ra.StopReason.PAUSED
    assert [(c.name, c.reason) for c in paused.pending] == [
        ("git_commit", "git_commit changes the repository")
    ]
    tool_messages = {m.tool_call_id: m for m in paused.messages if m.role == "tool"}
    assert "notes.txt" in tool_messages["call_1_1"].content  # status ran (read-only)
    assert tool_messages["call_1_2"].content == "Files staged successfully"  # its own strategy
    assert tool_messages["call_1_3"].content == "Rejected: resetting is not allowed"
    staged = await git(repository, "diff", "--cached", "--name-only")
    assert staged.split() == ["notes.txt"]  # the refused reset did not run

    conversation = ra.Conversation.from_json(paused.messages.to_json())
    conversation.approve(paused.pending[0].id)
    events = [event async for event in agent.run(conversation)]
    result = events[-1].run  # type: ignore[union-attr]

    assert ra.validate_conversation(result.messages) == []
    committed = ends(events)["call_1_4"]
    assert committed.error is None and "Changes committed successfully" in committed.output
    assert "Add notes" in ends(events)["call_2_1"].output
    assert (await git(repository, "log", "--format=%s")).split("\n")[0] == "Add notes"
    assert result.text == "Committed."


# -- the test server: progress, cancellation, results, names ------------------------------


async def test_progress_notifications_are_tool_progress(test_tools: MCPToolset) -> None:
    events, _, _ = await run_agent([test_tools], [[s.call("count_to", {"n": 3})], ["Done."]])

    progress = [e for e in events if isinstance(e, ToolProgress)]
    assert [p.data for p in progress] == [
        {"progress": i, "total": 3, "message": f"counted {i}"} for i in (1, 2, 3)
    ]
    end = ends(events)["call_1_1"]
    assert events.index(progress[-1]) < events.index(end)
    assert end.output == {"result": "counted to 3"}


async def test_cancelling_the_run_cancels_the_call_on_the_server(test_tools: MCPToolset) -> None:
    tag = f"cancel-{uuid.uuid4().hex[:8]}"
    provider = ra.ScriptedProvider([[s.call("wait_forever", {"tag": tag})], ["unreachable"]])
    run = ra.Agent(provider, tools=[test_tools]).run("wait")
    events = []
    async for event in run:
        events.append(event)
        if isinstance(event, ToolProgress):  # the server is inside the call now
            run.cancel()

    result = events[-1].run  # type: ignore[union-attr]
    assert result.stop == ra.StopReason.CANCELLED
    assert ra.validate_conversation(result.messages) == []
    assert provider.calls == 1
    # The server saw MCP's cancellation and stopped the call.
    assert await tool_named(test_tools, "was_cancelled")(tag=tag) == {"result": True}


async def test_a_call_past_its_timeout_fails_and_is_cancelled_on_the_server(
    http_url: str,
) -> None:
    tag = f"timeout-{uuid.uuid4().hex[:8]}"
    # Toolset-wide 0.3 s; the checking tool, which may wait, gets its own 10 s.
    async with MCPToolset.http(http_url, timeout=0.3, timeouts={"was_cancelled": 10}) as tools:
        events, result, _ = await run_agent(
            [tools], [[s.call("wait_forever", {"tag": tag})], ["It took too long."]]
        )
        assert ends(events)["call_1_1"].error == "tool 'wait_forever' timed out after 0.3s"
        assert result.text == "It took too long."  # the run went on
        assert await tool_named(tools, "was_cancelled")(tag=tag) == {"result": True}


async def test_results_carry_images_audio_resources_and_structure(test_tools: MCPToolset) -> None:
    events, result, _ = await run_agent(
        [test_tools],
        [
            [s.call(name) for name in ("picture", "document", "measure")]
            + [s.call("echo", {"text": "hi"})],
            ["Seen."],
        ],
    )

    picture, document, measure, echo = (ends(events)[f"call_1_{i}"].output for i in range(1, 5))
    pixel = load_test_server().PIXEL
    assert picture == [
        {"type": "text", "text": "a pixel"},
        {"type": "image", "data": base64.b64encode(pixel).decode(), "mimeType": "image/png"},
        {"type": "audio", "data": base64.b64encode(b"RIFF").decode(), "mimeType": "audio/wav"},
    ]
    assert document == [
        {"type": "text", "text": "here it is"},
        {
            "type": "resource",
            "resource": {"uri": "memo://1", "mimeType": "text/plain", "text": "the memo"},
        },
    ]
    assert measure == {"n": 3, "unit": "m"}
    assert echo == {"result": "hi"}
    tool_messages = [m for m in result.messages if m.role == "tool"]
    assert json.loads(tool_messages[0].content)[1]["mimeType"] == "image/png"


async def test_a_result_that_does_not_fit_its_schema_is_a_tool_error(
    stdio_tools: MCPToolset,
) -> None:
    events, result, _ = await run_agent(
        [stdio_tools], [[s.call("rogue_measure"), s.call("fail", {"reason": "no"})], ["Hm."]]
    )
    assert ends(events)["call_1_1"].error == (
        "the result of tool 'rogue_measure' from MCP server 'rxagent-test' does not fit: "
        "Invalid structured content returned by tool rogue_measure: "
        "'three' is not of type 'integer'"
    )
    assert ends(events)["call_1_2"].error == "tool 'fail' failed: Error executing tool fail: no"
    assert result.text == "Hm."


async def test_http_requests_carry_the_headers_given(http_tools: MCPToolset) -> None:
    assert await tool_named(http_tools, "header")(name="X-Test") == {"result": "rxagent"}


async def test_names_are_made_valid_for_openai(stdio_tools: MCPToolset, http_url: str) -> None:
    assert all(OPENAI_NAME.fullmatch(t.name) for t in stdio_tools.tools)
    events, _, provider = await run_agent([stdio_tools], [[s.call("odd_name_v2")], ["ok"]])
    assert "odd_name_v2" in {spec.name for spec in provider.requests[0].tools}
    assert ends(events)["call_1_1"].output == {"result": "odd"}
    assert tool_named(stdio_tools, "odd_name_v2").remote_name == "odd.name.v2"

    # A prefix that makes names too long: cut, told apart by a hash, still callable.
    async with MCPToolset.http(http_url, prefix="p" * 60) as long_named:
        names = [t.name for t in long_named.tools]
        assert all(OPENAI_NAME.fullmatch(n) for n in names) and len(set(names)) == len(names)
        echo = next(
            t for t in long_named.tools if isinstance(t, MCPTool) and t.remote_name == "echo"
        )
        events, _, _ = await run_agent([long_named], [[s.call(echo.name, {"text": "x"})], ["ok"]])
    assert ends(events)["call_1_1"].output == {"result": "x"}


async def test_an_agent_made_before_connecting_sees_the_tools_and_cells_can_close(
    http_url: str,
) -> None:
    tools = MCPToolset.http(http_url, prefix="lab")
    provider = ra.ScriptedProvider([[s.call("lab_echo", {"text": "ab", "times": 2})], ["ok"]])
    agent = ra.Agent(provider, tools=[tools])
    assert len(agent.tools) == 0

    # As in a notebook: each cell is a task of its own.
    await asyncio.create_task(tools.connect())
    result = await asyncio.create_task(ra.collect_final(agent.run("echo")))
    await asyncio.create_task(tools.aclose())

    assert "lab_echo" in {spec.name for spec in provider.requests[0].tools}
    assert [m.content for m in result.messages if m.role == "tool"] == ['{"result": "abab"}']
    with pytest.raises(MCPServerError, match="'rxagent-test' is not connected"):
        await tool_named(tools, "lab_echo")(text="x")


# -- tool lists that change -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_changed_tool_list_reaches_the_next_provider_request(
    mode: str, stdio_tools: MCPToolset
) -> None:
    name = f"parrot_{mode}"
    async with contextlib.AsyncExitStack() as stack:
        if mode == "auto":  # 2026-07-28: announced on a subscriptions/listen stream
            tools = stdio_tools
        else:  # 2025-11-25: announced by a plain notification
            tools = await stack.enter_async_context(
                MCPToolset.stdio(sys.executable, [SERVER], mode="legacy")
            )
        revision = tools.revision
        events, _, provider = await run_agent(
            [tools],
            [[s.call("add_tool", {"name": name})], [s.call(name, {"text": "hello"})], ["ok"]],
        )

    assert name not in {spec.name for spec in provider.requests[0].tools}
    assert name in {spec.name for spec in provider.requests[1].tools}
    assert ends(events)["call_2_1"].output == {"result": f"{name}: hello"}
    assert tools.revision > revision


# -- servers that fail ------------------------------------------------------------------


async def test_a_server_command_that_does_not_exist_is_a_clear_error() -> None:
    with nothing_left_behind():
        tools = MCPToolset.stdio("rxagent-no-such-mcp-server", ["--flag"])
        with pytest.raises(MCPServerError) as caught:
            async with tools:
                pass
    assert caught.value.message == (
        "cannot start MCP server 'rxagent-no-such-mcp-server': "
        "command 'rxagent-no-such-mcp-server' was not found"
    )
    assert isinstance(caught.value, ra.ToolError) and not tools.connected


async def test_a_server_that_crashes_at_start_is_a_clear_error() -> None:
    crash = "import sys; print('cannot start: no configuration', file=sys.stderr); sys.exit(2)"
    with nothing_left_behind(), pytest.raises(MCPServerError) as caught:
        async with MCPToolset.stdio(sys.executable, ["-c", crash], name="fragile"):
            pass
    assert caught.value.message.startswith(
        "MCP server 'fragile' ("  # the command, then what happened and what it said
    )
    assert caught.value.message.endswith(
        "closed the connection while connecting; "
        "its stderr ends with: cannot start: no configuration"
    )


async def test_a_server_that_crashes_mid_call_fails_its_calls_and_the_run_goes_on() -> None:
    with nothing_left_behind():
        async with MCPToolset.stdio(sys.executable, [SERVER]) as tools:
            events, result, _ = await run_agent(
                [tools],
                [
                    [s.call("crash")],
                    [s.call("echo", {"text": "still there?"})],
                    ["The server is gone."],
                ],
            )
            assert not tools.connected

    crashed, after = ends(events)["call_1_1"].error, ends(events)["call_2_1"].error
    assert crashed == (
        "MCP server 'rxagent-test' went away during the call to 'crash': it closed the "
        "connection; its stderr ends with: crashing on purpose"
    )
    assert after == (
        "cannot call 'echo': MCP server 'rxagent-test' is gone: it closed the connection; "
        "its stderr ends with: crashing on purpose"
    )
    assert result.text == "The server is gone."


async def test_an_http_server_that_crashes_mid_call_fails_the_call() -> None:
    with nothing_left_behind():
        async with http_server() as url, MCPToolset.http(url) as tools:
            events, result, _ = await run_agent(
                [tools], [[s.call("crash")], [s.call("echo", {"text": "?"})], ["Gone."]]
            )
    crashed, after = ends(events)["call_1_1"].error, ends(events)["call_2_1"].error
    assert crashed is not None and crashed.startswith(
        "MCP server 'rxagent-test' went away during the call to 'crash'"
    )
    assert after is not None and after.startswith("cannot call 'echo': MCP server 'rxagent-test'")
    assert result.text == "Gone."


async def test_an_http_server_that_is_not_there_is_a_clear_error() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = f"cannot reach MCP server '127.0.0.1:{port}'"
    with nothing_left_behind(), pytest.raises(MCPServerError, match=unreachable):
        async with MCPToolset.http(f"http://127.0.0.1:{port}/mcp", connect_timeout=10):
            pass
