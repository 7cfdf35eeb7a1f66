"""@tool: schemas from signatures, descriptions, validation, kinds of function."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Literal

import pytest
import reactivex as rx
from pydantic import BaseModel, Field
from reactivex import Observable

import rxagent as ra


@ra.tool
def get_weather(
    city: Annotated[str, Field(description="City name, e.g. Paris")],
    unit: Literal["c", "f"] = "c",
    days: int = Field(1, ge=1, le=7),
) -> dict[str, object]:
    """Current weather for a city.

    Args:
        city: ignored, the Field description wins.
        unit: Celsius or Fahrenheit.
    """
    return {"city": city, "unit": unit, "days": days}


def test_schema_from_signature_keeps_descriptions_and_constraints() -> None:
    spec = get_weather.spec
    assert spec.name == "get_weather"
    assert spec.description == "Current weather for a city."
    props = spec.parameters["properties"]
    assert props["city"] == {"description": "City name, e.g. Paris", "type": "string"}
    assert props["unit"]["enum"] == ["c", "f"] and props["unit"]["default"] == "c"
    assert props["unit"]["description"] == "Celsius or Fahrenheit."
    assert props["days"]["minimum"] == 1 and props["days"]["maximum"] == 7
    assert spec.parameters["required"] == ["city"]
    assert spec.parameters["additionalProperties"] is False
    assert "title" not in spec.parameters and "title" not in props["city"]
    assert spec.to_openai()["type"] == "function"


def test_the_decorated_function_is_still_callable() -> None:
    assert get_weather("Oslo", days=2) == {"city": "Oslo", "unit": "c", "days": 2}


def test_binding_validates_and_converts_arguments() -> None:
    class Point(BaseModel):
        x: float
        y: float

    @ra.tool(name="dist", description="Distance from the origin.", timeout=3)
    def distance(p: Point) -> float:
        return float((p.x**2 + p.y**2) ** 0.5)

    bound = distance.bind('{"p": {"x": 3, "y": 4}}')
    assert isinstance(bound.kwargs["p"], Point)
    assert bound.arguments == {"p": {"x": 3, "y": 4}}
    assert distance.name == "dist" and distance.timeout == 3
    assert "$defs" in distance.parameters or "properties" in distance.parameters
    with pytest.raises(ra.ToolArgumentsError, match=r"p\.y: Field required"):
        distance.bind('{"p": {"x": 3}}')


def test_bad_tool_definitions_fail_at_definition_time() -> None:
    def variadic(*args: int) -> None:
        """Takes anything."""

    with pytest.raises(TypeError, match=r"\*args"):
        ra.tool(variadic)
    with pytest.raises(ValueError, match="tool name"):
        ra.tool(name="has spaces")(lambda: None)
    with pytest.raises(ValueError, match="timeout"):
        ra.tool(timeout=0)(lambda: None)
    with pytest.raises(ValueError, match="two tools are named 'get_weather'"):
        ra.Agent(ra.ScriptedProvider([]), tools=[get_weather, get_weather])


async def drain(t: ra.Tool[..., object], **kwargs: object) -> list[tuple[bool, object]]:
    return [item async for item in t.stream(kwargs)]


async def test_every_kind_of_function_runs() -> None:
    @ra.tool
    def sync(x: int) -> int:
        return x + 1

    @ra.tool
    async def coro(x: int) -> int:
        await asyncio.sleep(0)
        return x + 2

    @ra.tool
    async def agen(x: int) -> AsyncIterator[int]:
        for i in range(x):
            yield i

    @ra.tool
    def observable(x: int) -> Observable[int]:
        return rx.range(0, x)

    @ra.tool
    def untyped_observable(x: int):  # type: ignore[no-untyped-def]
        return rx.of(x, x * 10)

    assert await drain(sync, x=1) == [(True, 2)]
    assert await drain(coro, x=1) == [(True, 3)]
    assert await drain(agen, x=3) == [(False, 0), (False, 1), (True, 2)]
    assert await drain(observable, x=3) == [(False, 0), (False, 1), (True, 2)]
    assert await drain(untyped_observable, x=2) == [(False, 2), (True, 20)]


def test_plain_functions_are_made_tools_by_the_agent() -> None:
    def shout(text: str) -> str:
        """Upper-case the text."""
        return text.upper()

    agent = ra.Agent(ra.ScriptedProvider([]), tools=[shout])
    (spec,) = agent.tools.specs
    assert spec.name == "shout" and spec.description == "Upper-case the text."


async def test_a_tool_reads_its_call_id_as_an_idempotency_key() -> None:
    from rxagent import scripted as s
    from rxagent.tools import current_call

    seen: list[tuple[str, str | None]] = []

    @ra.tool
    def sync_tool() -> str:
        """Runs in a worker thread."""
        seen.append(("sync", current_call.get()))
        return "ok"

    @ra.tool
    async def async_tool() -> str:
        """Runs on the loop."""
        seen.append(("async", current_call.get()))
        return "ok"

    @ra.tool
    async def streaming_tool() -> AsyncIterator[str]:
        """Streams progress."""
        seen.append(("streaming", current_call.get()))
        yield "half"
        seen.append(("streaming", current_call.get()))
        yield "ok"

    turns = [
        [
            s.call("sync_tool", {}, id="c-sync"),
            s.call("async_tool", {}, id="c-async"),
            s.call("streaming_tool", {}, id="c-stream"),
        ],
        ["done"],
    ]
    agent = ra.Agent(ra.ScriptedProvider(turns), tools=[sync_tool, async_tool, streaming_tool])
    await ra.collect_final(agent.run("go"))
    assert sorted(seen) == [
        ("async", "c-async"),
        ("streaming", "c-stream"),
        ("streaming", "c-stream"),
        ("sync", "c-sync"),
    ]
    assert current_call.get() is None  # outside a call


DEEP = '{"city": ' + "[" * 100_000 + "]" * 100_000 + "}"


def test_arguments_too_deep_to_read_are_an_arguments_error_everywhere() -> None:
    with pytest.raises(ra.ToolArgumentsError, match="nested too deeply to read"):
        get_weather.bind(DEEP, "c1")
    call = ra.ToolCall(id="c1", name="get_weather", arguments=DEEP)
    with pytest.raises(ValueError, match="nested too deeply"):
        call.parsed_arguments()
    conversation = ra.Conversation.of(
        [
            ra.UserMessage(content="q"),
            ra.AssistantMessage(tool_calls=(call.with_status(ra.ToolCallStatus.PENDING),)),
        ]
    )
    with pytest.raises(ra.ApprovalError, match="nested too deeply"):
        conversation.approve("c1", arguments=DEEP)
    assert conversation.pending == [call.with_status(ra.ToolCallStatus.PENDING)]
