"""validate_conversation: the validator's cases, generated conversations and their mutants."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import rxagent as ra
from rxagent import AssistantMessage as A
from rxagent import SystemMessage as S
from rxagent import ToolCall
from rxagent import ToolMessage as T
from rxagent import UserMessage as U
from rxagent.validation import ViolationCode as V


def codes(messages: list[ra.Message], **policy: bool) -> set[V]:
    return {v.code for v in ra.validate_conversation(messages, ra.ValidationPolicy(**policy))}


def calls(*ids: str) -> tuple[ToolCall, ...]:
    return tuple(ToolCall(id=i, name="calc", arguments="{}") for i in ids)


def test_a_simple_conversation_is_valid() -> None:
    assert codes([S(content="sys"), U(content="hi"), A(content="ok")]) == set()


def test_assistant_before_user() -> None:
    assert V.ASSISTANT_BEFORE_USER in codes([A(content="hi"), U(content="later")])
    assert codes([A(content="hi"), U(content="later")], require_user_first=False) == set()


def test_repeated_role() -> None:
    found = ra.validate_conversation([U(content="a"), U(content="b"), U(content="c")])
    assert [(v.code, v.index, v.details["count"]) for v in found] == [(V.REPEATED_ROLE, 0, 3)]
    assert codes([U(content="a"), U(content="b")], allow_repeated_roles=True) == set()


def test_consecutive_tool_messages_are_not_a_repeated_role() -> None:
    convo = [
        U(content="q"),
        A(tool_calls=calls("c1", "c2")),
        T(tool_call_id="c1", content="1"),
        T(tool_call_id="c2", content="2"),
        A(content="done"),
    ]
    assert codes(convo) == set()


def test_tool_calls_valid_sequence() -> None:
    convo = [A(content="", tool_calls=calls("c1")), T(tool_call_id="c1", content="{}")]
    assert codes(convo, require_user_first=False) == set()


def test_missing_tool_response() -> None:
    convo = [A(content="", tool_calls=calls("c1"))]
    assert V.MISSING_TOOL_RESPONSES in codes(convo)
    assert codes(convo, require_user_first=False, allow_dangling_tool_calls=True) == set()


def test_missing_response_before_the_next_assistant() -> None:
    convo = [
        U(content="q"),
        A(tool_calls=calls("c1", "c2")),
        T(tool_call_id="c1", content="1"),
        A(content="next"),
    ]
    found = ra.validate_conversation(convo, ra.ValidationPolicy(allow_repeated_roles=True))
    assert [(v.code, v.details["missing"]) for v in found] == [(V.MISSING_TOOL_RESPONSES, ["c2"])]


def test_unknown_tool_response() -> None:
    assert codes([T(tool_call_id="unknown", content="{}")]) & {
        V.UNKNOWN_TOOL_RESPONSE,
        V.TOOL_BEFORE_ASSISTANT,
    }
    convo = [
        U(content="q"),
        A(tool_calls=calls("c1")),
        T(tool_call_id="c1", content="1"),
        T(tool_call_id="zz", content="?"),
    ]
    assert V.UNKNOWN_TOOL_RESPONSE in codes(convo)
    assert codes(convo, allow_unknown_tool_response=True) == set()


def test_duplicate_tool_response() -> None:
    convo = [
        U(content="q"),
        A(tool_calls=calls("c1")),
        T(tool_call_id="c1", content="{}"),
        T(tool_call_id="c1", content="{}"),
    ]
    assert V.DUPLICATE_TOOL_RESPONSE in codes(convo)
    assert codes(convo, allow_duplicate_tool_response=True) == set()


def test_out_of_order_tool_responses() -> None:
    convo = [
        U(content="q"),
        A(tool_calls=calls("c1", "c2")),
        T(tool_call_id="c2", content="2"),
        T(tool_call_id="c1", content="1"),
    ]
    assert V.TOOL_RESPONSES_OUT_OF_ORDER in codes(convo)
    assert codes(convo, enforce_tool_response_order=False) == set()


def test_system_not_first() -> None:
    convo = [U(content="q"), S(content="late")]
    assert V.SYSTEM_NOT_FIRST in codes(convo)
    assert codes(convo, allow_system_anywhere=True) == set()


def test_duplicate_and_empty_tool_call_ids() -> None:
    convo = [U(content="q"), A(tool_calls=calls("c1", "c1", "")), T(tool_call_id="c1", content="")]
    found = codes(convo, allow_dangling_tool_calls=True)
    assert {V.DUPLICATE_TOOL_CALL_IDS, V.EMPTY_TOOL_CALL_ID} <= found


def test_empty_tool_message_id() -> None:
    convo = [
        U(content="q"),
        A(tool_calls=calls("c1")),
        T(tool_call_id="c1", content=""),
        T(tool_call_id="", content=""),
    ]
    assert V.EMPTY_TOOL_MESSAGE_ID in codes(convo)


def test_tool_before_assistant() -> None:
    assert V.TOOL_BEFORE_ASSISTANT in codes([U(content="q"), T(tool_call_id="c1", content="")])


def test_tool_responses_not_contiguous() -> None:
    convo = [
        U(content="q"),
        A(tool_calls=calls("c1", "c2")),
        T(tool_call_id="c1", content="1"),
        U(content="interrupt"),
        T(tool_call_id="c2", content="2"),
    ]
    assert V.TOOL_RESPONSES_NOT_CONTIGUOUS not in codes(convo)
    assert V.TOOL_RESPONSES_NOT_CONTIGUOUS in codes(convo, enforce_contiguous_tool_responses=True)


def test_no_user_message() -> None:
    convo = [S(content="sys")]
    assert codes(convo) == set()
    assert codes(convo, require_user_present=True) == {V.NO_USER_MESSAGE}


def test_openai_dicts_are_validated_too() -> None:
    convo = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
    ]
    # At the end of OpenAI dicts, an unanswered call is read as waiting for a decision
    # (the format has no statuses: a stored pause looks like this), which is valid unless
    # waiting calls are not allowed; earlier in the conversation, it is missing its answer.
    assert codes(convo) == set()
    assert codes(convo, allow_pending_tool_calls=False) == {V.MISSING_TOOL_RESPONSES}
    assert codes([*convo, {"role": "user", "content": "?"}]) == {V.MISSING_TOOL_RESPONSES}


# -- generated conversations and mutators ----------------------------------------------

texts = st.text(min_size=1, max_size=8)


@st.composite
def valid_conversations(draw: st.DrawFn) -> list[ra.Message]:
    """A valid conversation: optional system, then user turns answered by tool rounds."""
    out: list[ra.Message] = []
    if draw(st.booleans()):
        out.append(S(content=draw(texts)))
    next_id = 0
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        out.append(U(content=draw(texts)))
        for _ in range(draw(st.integers(min_value=0, max_value=3))):
            n = draw(st.integers(min_value=1, max_value=4))
            ids = [f"call_{next_id + k}" for k in range(n)]
            next_id += n
            out.append(A(content=draw(st.one_of(st.none(), texts)), tool_calls=calls(*ids)))
            out.extend(T(tool_call_id=i, content=draw(texts)) for i in ids)
        out.append(A(content=draw(texts)))
    return out


def tool_rounds(convo: list[ra.Message], minimum: int = 1) -> list[int]:
    return [i for i, m in enumerate(convo) if isinstance(m, A) and len(m.tool_calls) >= minimum]


def first_user(convo: list[ra.Message]) -> int:
    return next(i for i, m in enumerate(convo) if isinstance(m, U))


def mutate_assistant_first(c: list[ra.Message], data: st.DataObject) -> list[ra.Message]:
    return [*c[: first_user(c)], A(content="early"), *c[first_user(c) :]]


def mutate_repeat_user(c: list[ra.Message], data: st.DataObject) -> list[ra.Message]:
    i = first_user(c)
    return [*c[: i + 1], U(content="again"), *c[i + 1 :]]


def mutate_drop_response(c: list[ra.Message], data: st.DataObject) -> list[ra.Message]:
    rounds = tool_rounds(c)
    assume(rounds)
    a = data.draw(st.sampled_from(rounds))
    k = data.draw(st.integers(min_value=1, max_value=len(c[a].tool_calls)))  # type: ignore[union-attr]
    return [*c[: a + k], *c[a + k + 1 :]]


def mutate_unknown_response(c: list[ra.Message], data: st.DataObject) -> list[ra.Message]:
    rounds = tool_rounds(c)
    assume(rounds)
    a = data.draw(st.sampled_from(rounds))
    return [*c[: a + 1], T(tool_call_id="nobody", content="?"), *c[a + 1 :]]


def mutate_duplicate_response(c: list[ra.Message], data: st.DataObject) -> list[ra.Message]:
    rounds = tool_rounds(c)
    assume(rounds)
    a = data.draw(st.sampled_from(rounds))
    return [*c[: a + 2], c[a + 1], *c[a + 2 :]]


def mutate_swap_responses(c: list[ra.Message], data: st.DataObject) -> list[ra.Message]:
    rounds = tool_rounds(c, minimum=2)
    assume(rounds)
    a = data.draw(st.sampled_from(rounds))
    out = list(c)
    out[a + 1], out[a + 2] = out[a + 2], out[a + 1]
    return out


def mutate_late_system(c: list[ra.Message], data: st.DataObject) -> list[ra.Message]:
    i = first_user(c)
    return [*c[: i + 1], S(content="late"), *c[i + 1 :]]


def _replace_call_ids(
    c: list[ra.Message], data: st.DataObject, new_ids: Callable[[list[str]], list[str]]
) -> list[ra.Message]:
    rounds = tool_rounds(c, minimum=2)
    assume(rounds)
    a = data.draw(st.sampled_from(rounds))
    message = c[a]
    assert isinstance(message, A)
    ids = new_ids([tc.id for tc in message.tool_calls])
    changed = A(
        content=message.content,
        tool_calls=tuple(
            tc.model_copy(update={"id": i}) for tc, i in zip(message.tool_calls, ids, strict=True)
        ),
    )
    return [*c[:a], changed, *c[a + 1 :]]


def mutate_duplicate_call_ids(c: list[ra.Message], data: st.DataObject) -> list[ra.Message]:
    return _replace_call_ids(c, data, lambda ids: [ids[0], ids[0], *ids[2:]])


def mutate_empty_call_id(c: list[ra.Message], data: st.DataObject) -> list[ra.Message]:
    return _replace_call_ids(c, data, lambda ids: ["", *ids[1:]])


def mutate_empty_message_id(c: list[ra.Message], data: st.DataObject) -> list[ra.Message]:
    rounds = tool_rounds(c)
    assume(rounds)
    a = data.draw(st.sampled_from(rounds))
    return [*c[: a + 1], T(tool_call_id="", content="?"), *c[a + 1 :]]


def mutate_tool_first(c: list[ra.Message], data: st.DataObject) -> list[ra.Message]:
    i = first_user(c)
    return [*c[: i + 1], T(tool_call_id="call_x", content="?"), *c[i + 1 :]]


def mutate_interrupt_responses(c: list[ra.Message], data: st.DataObject) -> list[ra.Message]:
    rounds = tool_rounds(c, minimum=2)
    assume(rounds)
    a = data.draw(st.sampled_from(rounds))
    return [*c[: a + 2], U(content="interrupt"), *c[a + 2 :]]


def mutate_no_user(c: list[ra.Message], data: st.DataObject) -> list[ra.Message]:
    return [m for m in c if not isinstance(m, U)]


MUTATORS: list[tuple[Callable[..., list[ra.Message]], V, dict[str, bool]]] = [
    (mutate_assistant_first, V.ASSISTANT_BEFORE_USER, {}),
    (mutate_repeat_user, V.REPEATED_ROLE, {}),
    (mutate_drop_response, V.MISSING_TOOL_RESPONSES, {}),
    (mutate_unknown_response, V.UNKNOWN_TOOL_RESPONSE, {}),
    (mutate_duplicate_response, V.DUPLICATE_TOOL_RESPONSE, {}),
    (mutate_swap_responses, V.TOOL_RESPONSES_OUT_OF_ORDER, {}),
    (mutate_late_system, V.SYSTEM_NOT_FIRST, {}),
    (mutate_duplicate_call_ids, V.DUPLICATE_TOOL_CALL_IDS, {}),
    (mutate_empty_call_id, V.EMPTY_TOOL_CALL_ID, {}),
    (mutate_empty_message_id, V.EMPTY_TOOL_MESSAGE_ID, {}),
    (mutate_tool_first, V.TOOL_BEFORE_ASSISTANT, {}),
    (
        mutate_interrupt_responses,
        V.TOOL_RESPONSES_NOT_CONTIGUOUS,
        {"enforce_contiguous_tool_responses": True},
    ),
    (mutate_no_user, V.NO_USER_MESSAGE, {"require_user_present": True}),
]


@given(valid_conversations())
def test_generated_conversations_are_valid(convo: list[ra.Message]) -> None:
    assert ra.validate_conversation(convo) == []
    strict = ra.ValidationPolicy(enforce_contiguous_tool_responses=True, require_user_present=True)
    assert ra.validate_conversation(convo, strict) == []


def test_every_violation_code_has_a_mutator() -> None:
    assert {code for _, code, _ in MUTATORS} == set(V)


@pytest.mark.parametrize(
    ("mutate", "code", "policy"), MUTATORS, ids=[c.value for _, c, _ in MUTATORS]
)
@given(convo=valid_conversations(), data=st.data())
def test_each_mutation_is_caught_with_its_code(
    mutate: Callable[..., list[ra.Message]],
    code: V,
    policy: dict[str, bool],
    convo: list[ra.Message],
    data: st.DataObject,
) -> None:
    broken = mutate(convo, data)
    found = ra.validate_conversation(broken, ra.ValidationPolicy(**policy))
    assert code in {v.code for v in found}, (broken, found)
    assert all(v.message for v in found)


def test_calls_waiting_on_a_human_may_lack_answers() -> None:
    waiting = A(
        tool_calls=(
            ToolCall(id="p", name="t", status=ra.ToolCallStatus.PENDING),
            ToolCall(id="a", name="t", status=ra.ToolCallStatus.APPROVED),
            ToolCall(id="r", name="t", status=ra.ToolCallStatus.REJECTED),
            ToolCall(id="done", name="t", status=ra.ToolCallStatus.COMPLETED),
        )
    )
    convo = [U(content="q"), waiting, T(tool_call_id="done", content="1")]
    assert codes(convo) == set()
    strict = codes(convo, allow_pending_tool_calls=False)
    assert strict == {V.MISSING_TOOL_RESPONSES}
    # A completed call without an answer is still dangling.
    assert codes([U(content="q"), waiting]) == {V.MISSING_TOOL_RESPONSES}
