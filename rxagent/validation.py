"""Conversation validation: role order and tool-call consistency.

``validate_conversation(messages)`` returns the list of :class:`Violation` it
finds (empty when the conversation is valid). :class:`ValidationPolicy` turns
rules on and off. The rules are those of tower-llm's validator, with one
deliberate difference: consecutive ``tool`` messages are never a repeated role,
since that is how several calls of one assistant turn are answered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rxagent.messages import (
    AssistantMessage,
    Conversation,
    Message,
    SystemMessage,
    ToolCallStatus,
    ToolMessage,
    UserMessage,
)

_WAITING = frozenset({ToolCallStatus.PENDING, ToolCallStatus.APPROVED, ToolCallStatus.REJECTED})

__all__ = ["ValidationPolicy", "Violation", "ViolationCode", "validate_conversation"]


class ViolationCode(StrEnum):
    ASSISTANT_BEFORE_USER = "assistant_before_user"
    REPEATED_ROLE = "repeated_role"
    MISSING_TOOL_RESPONSES = "missing_tool_responses"
    UNKNOWN_TOOL_RESPONSE = "unknown_tool_response"
    DUPLICATE_TOOL_RESPONSE = "duplicate_tool_response"
    TOOL_RESPONSES_OUT_OF_ORDER = "tool_responses_out_of_order"
    SYSTEM_NOT_FIRST = "system_not_first"
    DUPLICATE_TOOL_CALL_IDS = "duplicate_tool_call_ids"
    EMPTY_TOOL_CALL_ID = "empty_tool_call_id"
    EMPTY_TOOL_MESSAGE_ID = "empty_tool_message_id"
    TOOL_BEFORE_ASSISTANT = "tool_before_assistant"
    TOOL_RESPONSES_NOT_CONTIGUOUS = "tool_responses_not_contiguous"
    NO_USER_MESSAGE = "no_user_message"


@dataclass(frozen=True)
class Violation:
    """One broken rule: ``code`` for assertions, ``message`` for people."""

    code: ViolationCode
    message: str
    #: The index of the message the violation is about, where there is one.
    index: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidationPolicy:
    """Which rules :func:`validate_conversation` enforces."""

    #: System messages may appear after the first non-system message.
    allow_system_anywhere: bool = False
    #: The first non-system message may not be an assistant message.
    require_user_first: bool = True
    #: Adjacent messages may share a role (tool messages always may).
    allow_repeated_roles: bool = False
    #: Tool responses must come in the order the assistant made the calls.
    enforce_tool_response_order: bool = True
    #: A tool response may name a call id that the assistant did not make.
    allow_unknown_tool_response: bool = False
    #: A call may be answered more than once.
    allow_duplicate_tool_response: bool = False
    #: A call's response must come before any other non-tool message.
    enforce_contiguous_tool_responses: bool = False
    #: The conversation must hold at least one user message.
    require_user_present: bool = False
    #: An assistant's tool calls may lack responses.
    allow_dangling_tool_calls: bool = False
    #: Calls waiting on a human (pending, or approved/rejected and not yet resumed) may
    #: lack responses: a paused run's conversation is valid.
    allow_pending_tool_calls: bool = True


@dataclass
class _Window:
    """The tool calls of one assistant message, and the responses seen so far."""

    assistant_index: int
    expected: list[str]
    #: Calls that wait on a human and may go unanswered.
    waiting: set[str] = field(default_factory=set)
    seen_order: list[str] = field(default_factory=list)
    seen_at: dict[str, list[int]] = field(default_factory=dict)
    contiguity_broken: bool = False

    @property
    def pending(self) -> int:
        return len(set(self.expected) - set(self.seen_at))


def validate_conversation(
    messages: Conversation | Iterable[Message] | Iterable[Mapping[str, Any]],
    policy: ValidationPolicy | None = None,
) -> list[Violation]:
    """Every rule ``messages`` breaks under ``policy``; an empty list when none."""
    policy = policy or ValidationPolicy()
    msgs: list[Message] = list(Conversation.of(messages))  # type: ignore[arg-type]
    out: list[Violation] = []
    _check_roles(msgs, policy, out)
    _check_tool_calls(msgs, policy, out)
    return out


def _role(m: Message) -> str:
    return m.role


def _check_roles(msgs: list[Message], policy: ValidationPolicy, out: list[Violation]) -> None:
    first_non_system_seen = False
    user_seen = False
    i = 0
    while i < len(msgs):
        m = msgs[i]
        if isinstance(m, SystemMessage):
            if first_non_system_seen and not policy.allow_system_anywhere:
                out.append(
                    Violation(
                        ViolationCode.SYSTEM_NOT_FIRST,
                        f"system message at index {i} comes after the conversation started",
                        i,
                    )
                )
        elif not first_non_system_seen:
            first_non_system_seen = True
            if policy.require_user_first and isinstance(m, AssistantMessage):
                out.append(
                    Violation(
                        ViolationCode.ASSISTANT_BEFORE_USER,
                        f"assistant message at index {i} comes before the first user message",
                        i,
                    )
                )
        if isinstance(m, UserMessage):
            user_seen = True
        if (
            not policy.allow_repeated_roles
            and i > 0
            and not isinstance(m, ToolMessage)
            and _role(msgs[i - 1]) == _role(m)
            and (i < 2 or _role(msgs[i - 2]) != _role(m))
        ):
            # Report each run of a repeated role once, from its start.
            end = i + 1
            while end < len(msgs) and _role(msgs[end]) == _role(m):
                end += 1
            count = end - (i - 1)
            out.append(
                Violation(
                    ViolationCode.REPEATED_ROLE,
                    f"role {m.role!r} repeats from index {i - 1} ({count} in a row)",
                    i - 1,
                    {"role": m.role, "count": count},
                )
            )
        i += 1
    if policy.require_user_present and not user_seen:
        out.append(Violation(ViolationCode.NO_USER_MESSAGE, "the conversation has no user message"))


def _check_tool_calls(msgs: list[Message], policy: ValidationPolicy, out: list[Violation]) -> None:
    window: _Window | None = None
    for i, m in enumerate(msgs):
        if isinstance(m, ToolMessage):
            if not m.tool_call_id:
                out.append(
                    Violation(
                        ViolationCode.EMPTY_TOOL_MESSAGE_ID,
                        f"tool message at index {i} has an empty tool_call_id",
                        i,
                    )
                )
            if window is None:
                out.append(
                    Violation(
                        ViolationCode.TOOL_BEFORE_ASSISTANT,
                        f"tool message at index {i} answers no assistant tool call",
                        i,
                    )
                )
                continue
            if m.tool_call_id not in window.expected:
                if not policy.allow_unknown_tool_response:
                    out.append(
                        Violation(
                            ViolationCode.UNKNOWN_TOOL_RESPONSE,
                            f"tool message at index {i} answers unknown call id {m.tool_call_id!r}",
                            i,
                            {"tool_call_id": m.tool_call_id},
                        )
                    )
                continue
            seen = window.seen_at.setdefault(m.tool_call_id, [])
            seen.append(i)
            if len(seen) == 1:
                window.seen_order.append(m.tool_call_id)
            elif not policy.allow_duplicate_tool_response:
                out.append(
                    Violation(
                        ViolationCode.DUPLICATE_TOOL_RESPONSE,
                        f"call {m.tool_call_id!r} is answered more than once (indices {seen})",
                        i,
                        {"tool_call_id": m.tool_call_id, "indices": list(seen)},
                    )
                )
            continue

        # Any other message may interrupt the responses of the open window.
        if window is not None:
            _check_contiguity(window, i, policy, out)
        if isinstance(m, AssistantMessage):
            if window is not None:
                _close_window(window, policy, out)
                window = None
            if m.tool_calls:
                _check_call_ids(m, i, out)
                waiting = (
                    {c.id for c in m.tool_calls if c.status in _WAITING}
                    if policy.allow_pending_tool_calls
                    else set()
                )
                window = _Window(i, [c.id for c in m.tool_calls], waiting)
    if window is not None:
        _close_window(window, policy, out)


def _check_contiguity(
    window: _Window, i: int, policy: ValidationPolicy, out: list[Violation]
) -> None:
    if (
        policy.enforce_contiguous_tool_responses
        and not window.contiguity_broken
        and window.pending - len(window.waiting - set(window.seen_at))
    ):
        window.contiguity_broken = True
        out.append(
            Violation(
                ViolationCode.TOOL_RESPONSES_NOT_CONTIGUOUS,
                f"message at index {i} interrupts the tool responses of the assistant "
                f"at index {window.assistant_index}",
                i,
                {"assistant_index": window.assistant_index},
            )
        )


def _check_call_ids(m: AssistantMessage, i: int, out: list[Violation]) -> None:
    seen: set[str] = set()
    dups: list[str] = []
    empties: list[int] = []
    for k, call in enumerate(m.tool_calls):
        if not call.id:
            empties.append(k)
        elif call.id in seen:
            dups.append(call.id)
        seen.add(call.id)
    if dups:
        out.append(
            Violation(
                ViolationCode.DUPLICATE_TOOL_CALL_IDS,
                f"assistant at index {i} repeats tool call ids {dups}",
                i,
                {"ids": dups},
            )
        )
    if empties:
        out.append(
            Violation(
                ViolationCode.EMPTY_TOOL_CALL_ID,
                f"assistant at index {i} has empty tool call ids at positions {empties}",
                i,
                {"positions": empties},
            )
        )


def _close_window(window: _Window, policy: ValidationPolicy, out: list[Violation]) -> None:
    missing = [
        cid for cid in window.expected if cid not in window.seen_at and cid not in window.waiting
    ]
    if missing and not policy.allow_dangling_tool_calls:
        out.append(
            Violation(
                ViolationCode.MISSING_TOOL_RESPONSES,
                f"assistant at index {window.assistant_index} has no response for calls {missing}",
                window.assistant_index,
                {"missing": missing},
            )
        )
    if policy.enforce_tool_response_order and window.seen_order:
        expected_order = [cid for cid in window.expected if cid in window.seen_at]
        if window.seen_order != expected_order:
            out.append(
                Violation(
                    ViolationCode.TOOL_RESPONSES_OUT_OF_ORDER,
                    f"responses to the assistant at index {window.assistant_index} come in "
                    f"the order {window.seen_order}, the calls in {expected_order}",
                    window.assistant_index,
                    {"expected": expected_order, "observed": list(window.seen_order)},
                )
            )
