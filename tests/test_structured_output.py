"""Structured output (output_type) and the before/after hooks."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, field_validator

import rxagent as ra
from rxagent import scripted as s
from rxagent.events import OutputRetry, Structured
from rxagent.output import _NOTHING, OutputSpec, grows


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


async def test_partial_strings_are_never_held_back() -> None:
    provider = ra.ScriptedProvider([['{"city": "Route 66 is fine', " but long", '", "note": "x"}']])
    run = ra.Agent(provider, output_type=Loose).run("Where?")
    await ra.collect_final(run)
    partial = [e.value for e in run.events if isinstance(e, Structured) and e.partial]
    assert partial[:2] == [{"city": "Route 66 is fine"}, {"city": "Route 66 is fine but long"}]


@pytest.mark.parametrize(
    ("text", "snapshot"),
    [
        ('{"note": "Route 66 is fine', {"note": "Route 66 is fine"}),
        ('{"note": "a t', {"note": "a t"}),
        ('{"note": "nul', {"note": "nul"}),
        ('{"note": "say \\"1', {"note": 'say "1'}),
        ('{"note": "ends in a backslash \\\\', {"note": "ends in a backslash \\"}),
        ('{"note": "half an escape \\u00', {"note": "half an escape "}),
        ('{"n": 12', {}),  # 12 may become 123
        ('{"n": -', {}),
        ('{"n": 1.5e', {}),
        ('{"n": tr', {}),
        ('{"n": nul', {}),
        ('{"n": [1, 2', {"n": [1]}),
        ('{"n": true}', {"n": True}),
        ('{"n": 12,', {"n": 12}),
        ('{"a": "x", "n": f', {"a": "x"}),
    ],
)
def test_only_numbers_and_literals_being_written_are_held_back(text: str, snapshot: Any) -> None:
    assert OutputSpec(dict[str, Any]).parse_partial(text) == snapshot


def _value_spans(text: str) -> list[tuple[int, int]]:
    """Where the string values (not keys) of a JSON text are, quotes excluded."""
    spans = []
    for match in re.finditer(r'"((?:[^"\\]|\\.)*)"', text):
        after = text[match.end() :].lstrip()
        if not after.startswith(":"):
            spans.append((match.start(1), match.end(1)))
    return spans


def _received(raw: str) -> str:
    """The string a partial JSON string body already says: a half-written escape at its
    end, or the first half of a surrogate pair, says nothing yet."""
    for half in (r"(\\+)(u[0-9a-fA-F]{0,3})?$", r"(\\+)(u[dD][89abAB][0-9a-fA-F]{2})$"):
        match = re.search(half, raw)
        if match and len(match.group(1)) % 2:
            raw = raw[: match.end(1) - 1]
    return str(json.loads(f'"{raw}"'))


def _strings(value: Any) -> list[str]:
    """Every string value (not key) in document order."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=("Cs",)), max_size=6), children, max_size=4
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, ascii_only=st.booleans())
def test_partial_parses_only_grow_and_keep_every_string_received(
    value: Any, ascii_only: bool
) -> None:
    spec = OutputSpec(Any)  # wrapped: the wire form is {"result": ...}
    text = json.dumps({"result": value}, ensure_ascii=ascii_only)
    spans = _value_spans(text)
    previous: Any = _NOTHING
    for cut in range(len(text) + 1):
        snapshot = spec.parse_partial(text[:cut])
        if snapshot is _NOTHING:
            assert previous is _NOTHING  # once there is a reading, there always is
            continue
        assert grows(previous, snapshot), (text[:cut], previous, snapshot)
        assert grows(snapshot, value)
        previous = snapshot
        inside = [(start, end) for start, end in spans if start <= cut <= end]
        if inside:
            (start, _), *_ = inside
            # The string being written reads as all of its text received so far.
            assert _strings(snapshot)[-1] == _received(text[start:cut])
    assert previous == value
