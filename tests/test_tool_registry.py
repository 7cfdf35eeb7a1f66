"""A toolset whose tools change after an agent took it: the agent offers the new list from
its next provider request (what an MCP server's list_changed announcement needs)."""

from __future__ import annotations

import logging

import pytest

import rxagent as ra
from rxagent import scripted as s
from rxagent.events import ToolCallEnded
from rxagent.providers.scripted import Turn


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def mul(a: int, b: int) -> int:
    """Multiply two numbers."""
    return a * b


async def test_a_toolset_that_changes_between_steps_is_seen_at_the_next_request() -> None:
    maths = ra.Toolset([add], name="maths")

    def grow(request: ra.ProviderRequest) -> Turn:
        maths.tools.append(ra.tool(mul))  # the list changes during the run...
        maths.revision += 1  # ...and says so
        return [s.call("add", {"a": 2, "b": 3})]

    provider = ra.ScriptedProvider([grow, [s.call("mul", {"a": 2, "b": 3})], ["6"]])
    agent = ra.Agent(provider, tools=[maths])
    events = [event async for event in agent.run("go")]

    assert [spec.name for spec in provider.requests[0].tools] == ["add"]
    assert [spec.name for spec in provider.requests[1].tools] == ["add", "mul"]
    outputs = [e.output for e in events if isinstance(e, ToolCallEnded)]
    assert outputs == [5, 6]
    assert "mul" in agent.tools and len(agent.tools) == 2


def test_a_change_that_makes_names_clash_keeps_the_first_holder(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = ra.Toolset([add], name="first")
    second = ra.Toolset([mul], name="second")
    registry = ra.Agent(ra.ScriptedProvider([]), tools=[first, second]).tools

    second.tools.append(ra.tool(add))
    second.revision += 1
    with caplog.at_level(logging.WARNING, logger="rxagent"):
        names = [t.name for t in registry]

    assert names == ["add", "mul"]
    assert registry.get("add") is first.tools[0]
    assert "two tools are named 'add' (in toolset 'first' and toolset 'second')" in caplog.text


def test_a_name_held_twice_is_still_an_error_when_the_agent_is_made() -> None:
    with pytest.raises(ValueError, match="two tools are named 'add'"):
        ra.Agent(ra.ScriptedProvider([]), tools=[ra.Toolset([add]), add])
