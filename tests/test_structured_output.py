"""Structured output (output_type) and the before/after hooks."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from typing import Any

import pytest
from pydantic import BaseModel, Field, field_validator

import rxagent as ra
from rxagent import scripted as s
from rxagent.events import OutputRetry, Structured
from rxagent.output import grows


class Forecast(BaseModel):
    city: str
    temps: list[float]
    summary: str


class Loose(BaseModel):
    city: str
    note: str = ""


ANSWER = {"city": "Paris", "temps": [12.5, 14.0, 9.25], "summary": "Mild, then rain."}


def pieces(text: str, size: int = 3) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


async def test_structured_output_streams_growing_snapshots_and_validates() -> None:
    text = json.dumps(ANSWER)
    provider = ra.ScriptedProvider([pieces(text)])
    agent = ra.Agent(provider, output_type=Forecast)
    run = agent.run("forecast for Paris")
    result = await ra.collect_final(run)

    snapshots = [e for e in run.events if isinstance(e, Structured)]
    partial = [e.value for e in snapshots if e.partial]
    assert len(partial) > 10  # many snapshots while it streamed ...
    assert all(grows(a, b) for a, b in itertools.pairwise(partial))  # ... only growing
    assert partial[0] == {} and partial[-1] == ANSWER
    final = snapshots[-1]
    assert not final.partial and final.value == ANSWER
    # The validated value is the run's output, and folded into the final message.
    assert isinstance(result.output, Forecast) and result.output.temps == [12.5, 14.0, 9.25]
    assert result.last_message is not None
    assert result.last_message.structured == (ANSWER,)
    assert result.text == text
    # The request asked for JSON of the schema, strict since every field is required.
    response_format = provider.requests[0].options["response_format"]
    assert response_format["type"] == "json_schema"
    spec = response_format["json_schema"]
    assert spec["name"] == "Forecast" and spec["strict"] is True
    assert spec["schema"]["additionalProperties"] is False
    assert set(spec["schema"]["required"]) == {"city", "temps", "summary"}


async def test_a_schema_that_strict_mode_cannot_take_is_sent_without_strict() -> None:
    provider = ra.ScriptedProvider([['{"city": "Oslo"}']])
    result = await ra.collect_final(ra.Agent(provider, output_type=Loose).run("x"))
    assert result.output == Loose(city="Oslo")
    assert provider.requests[0].options["response_format"]["json_schema"]["strict"] is False


async def test_an_invalid_answer_is_retried_with_the_errors_then_succeeds() -> None:
    provider = ra.ScriptedProvider([['{"city": "Paris", "temps": "warm"}'], [json.dumps(ANSWER)]])
    run = ra.Agent(provider, output_type=Forecast).run("forecast")
    result = await ra.collect_final(run)

    (retry,) = [e for e in run.events if isinstance(e, OutputRetry)]
    assert retry.attempt == 1 and "temps" in retry.errors and "summary" in retry.errors
    feedback = provider.requests[1].messages[-1]
    assert isinstance(feedback, ra.UserMessage) and "temps" in str(feedback.content)
    assert result.output == Forecast(**ANSWER) and result.steps == 2
    assert ra.validate_conversation(result.messages, ra.ValidationPolicy()) == []


async def test_retries_exhausted_is_an_output_validation_error_with_the_partial_run() -> None:
    provider = ra.ScriptedProvider([["not json at all"], ['{"city": 3}']])
    run = ra.Agent(provider, output_type=Forecast, output_retries=1).run("forecast")
    with pytest.raises(ra.OutputValidationError) as raised:
        await ra.collect_final(run)
    error = raised.value
    assert "after 1 retry" in str(error) and "city" in error.errors
    assert error.text == '{"city": 3}'
    assert error.partial is not None and error.partial.steps == 2
    assert error.partial.text == '{"city": 3}'  # the last answer is kept
    assert [e.attempt for e in run.events if isinstance(e, OutputRetry)] == [1]
    assert ra.validate_conversation(error.partial.messages) == []


async def test_tool_steps_are_not_validated_only_the_final_answer() -> None:
    @ra.tool
    def lookup(city: str) -> list[float]:
        """Temperatures."""
        return [1.0, 2.0]

    provider = ra.ScriptedProvider(
        [
            [s.call("lookup", {"city": "Oslo"})],
            ['{"city": "Oslo", "temps": [1.0, 2.0], "summary": "Cold."}'],
        ]
    )
    result = await ra.collect_final(
        ra.Agent(provider, tools=[lookup], output_type=Forecast).run("x")
    )
    assert result.output == Forecast(city="Oslo", temps=[1.0, 2.0], summary="Cold.")


async def test_non_object_output_types_are_wrapped_on_the_wire() -> None:
    provider = ra.ScriptedProvider([pieces('{"result": [3, 1, 2]}', 2)])
    run = ra.Agent(provider, output_type=list[int]).run("numbers")
    result = await ra.collect_final(run)
    assert result.output == [3, 1, 2]
    schema = provider.requests[0].options["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["result"]["type"] == "array"
    partial = [e.value for e in run.events if isinstance(e, Structured) and e.partial]
    assert partial[-1] == [3, 1, 2]


async def test_a_provider_that_emits_structured_values_is_validated_on_them() -> None:
    provider = ra.ScriptedProvider([[s.structured(ANSWER)]])
    result = await ra.collect_final(ra.Agent(provider, output_type=Forecast).run("x"))
    assert result.output == Forecast(**ANSWER)


async def test_the_users_own_response_format_wins() -> None:
    mine = {"type": "json_object"}
    provider = ra.ScriptedProvider([['{"city": "Rome"}']])
    agent = ra.Agent(provider, output_type=Loose, options={"response_format": mine})
    assert (await ra.collect_final(agent.run("x"))).output == Loose(city="Rome")
    assert provider.requests[0].options["response_format"] == mine


class Summary(BaseModel):
    words: list[str] = Field(min_length=1)


async def test_field_constraints_are_enforced() -> None:
    provider = ra.ScriptedProvider([['{"words": []}'], ['{"words": ["ok"]}']])
    result = await ra.collect_final(ra.Agent(provider, output_type=Summary).run("x"))
    assert result.output == Summary(words=["ok"])


# -- hooks ---------------------------------------------------------------------------


async def test_before_rewrites_each_request_but_not_the_conversation() -> None:
    @ra.tool
    def noop() -> str:
        """Nothing."""
        return "ok"

    def keep_last_two(messages: list[ra.Message]) -> list[ra.Message]:
        return [messages[0], *messages[1:][-2:]]  # the instructions, then the tail

    provider = ra.ScriptedProvider([[s.call("noop")], [s.call("noop")], ["done"]])
    agent = ra.Agent(provider, tools=[noop], instructions="sys", before=keep_last_two)
    result = await ra.collect_final(agent.run("hi"))
    assert [len(r.messages) for r in provider.requests] == [2, 3, 3]
    assert all(r.messages[0] == ra.SystemMessage(content="sys") for r in provider.requests)
    assert len(result.messages) == 6  # the conversation itself is whole


async def test_an_async_before_can_inject_context() -> None:
    async def inject(messages: list[ra.Message]) -> list[ra.Message]:
        await asyncio.sleep(0)  # e.g. a retrieval call
        return [ra.SystemMessage(content="Context: it rains."), *messages]

    provider = ra.ScriptedProvider([["ok"]])
    await ra.collect_final(ra.Agent(provider, before=inject).run("weather?"))
    assert provider.requests[0].messages[0].content == "Context: it rains."


async def test_a_before_that_raises_fails_the_run_clearly() -> None:
    def broken(messages: list[ra.Message]) -> None:
        raise RuntimeError("vector store down")

    with pytest.raises(ra.AgentError, match="before hook raised RuntimeError: vector store down"):
        await ra.collect_final(ra.Agent(ra.ScriptedProvider([["x"]]), before=broken).run("hi"))


async def test_after_sees_the_finished_run_sync_or_async(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[ra.AgentRun] = []

    async def store(run: ra.AgentRun) -> None:
        await asyncio.sleep(0.01)
        seen.append(run)

    run = ra.Agent(ra.ScriptedProvider([["hello"]]), after=store).run("hi")
    result = await ra.collect_final(run)
    assert seen == [result]  # awaited before RunCompleted reached the observers

    def broken(run: Any) -> None:
        raise ValueError("disk full")

    with caplog.at_level(logging.ERROR, logger="rxagent"):
        result = await ra.collect_final(
            ra.Agent(ra.ScriptedProvider([["hello"]]), after=broken).run("hi")
        )
    assert result.text == "hello" and "after hook raised" in caplog.text


class Picky(BaseModel):
    city: str
    data: Any = None

    @field_validator("city")
    @classmethod
    def known(cls, value: str) -> str:
        return {"Paris": "Paris"}[value]  # a KeyError for any other city: not a ValueError


@pytest.mark.parametrize(
    ("answer", "raised"),
    [
        ('{"city": "Lyon"}', "KeyError"),
        ('{"city": "Paris", "data": ' + "[" * 300 + "]" * 300 + "}", "serialization depth"),
        ('{"city": "Paris", "data": ' + "[" * 5000 + "]" * 5000 + "}", "RecursionError"),
    ],
    ids=["validator-raises-keyerror", "answer-nested-300-deep", "answer-nested-5000-deep"],
)
async def test_any_exception_while_checking_the_answer_fails_the_run_with_its_partial(
    answer: str, raised: str
) -> None:
    # These used to be lost: collect_final never returned and cancel() did nothing.
    run = ra.Agent(ra.ScriptedProvider([[answer]]), output_type=Picky).run("Where?")
    with pytest.raises(ra.OutputValidationError, match=raised) as failure:
        await asyncio.wait_for(ra.collect_final(run), 5)
    partial = failure.value.partial
    assert partial is not None and partial.text == answer  # the answer is not lost
    assert ra.validate_conversation(partial.messages) == []
    run.cancel()  # the run is over: a cancel changes nothing and does not hang
    assert run.done and run.error is failure.value
