"""Conversations: messages, tool calls and their lifecycle, OpenAI wire conversion.

Messages are frozen pydantic models; a :class:`Conversation` is the mutable,
ordered list of them that a run reads and extends. A conversation converts to
and from OpenAI chat-completions message dicts and round-trips through JSON, so
it can be stored between runs (a paused run, for instance).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeAlias, overload

from pydantic import BaseModel, ConfigDict, Field, RootModel, TypeAdapter, ValidationError

from rxagent.errors import ApprovalError

__all__ = [
    "AssistantMessage",
    "OpenTurn",
    "Conversation",
    "ConversationInput",
    "Message",
    "SystemMessage",
    "ToolCall",
    "ToolCallStatus",
    "ToolMessage",
    "Usage",
    "UserMessage",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Usage(_Frozen):
    """Token counts reported by a provider; ``a + b`` sums them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


class ToolCallStatus(StrEnum):
    """Where a tool call is in its life.

    ``requested`` calls were asked for by the model and have not started (their
    arguments may still be streaming, or they wait for a free slot); ``pending``
    calls wait for a decision (a human approval, a schedule); ``approved`` ones
    may run; ``running`` ones are running; ``completed``, ``failed``,
    ``rejected`` and ``cancelled`` are final.
    """

    REQUESTED = "requested"
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_STATUSES


_FINAL_STATUSES = frozenset(
    {
        ToolCallStatus.COMPLETED,
        ToolCallStatus.FAILED,
        ToolCallStatus.REJECTED,
        ToolCallStatus.CANCELLED,
    }
)


class ToolCall(_Frozen):
    """A call the model asked for: ``arguments`` is the JSON text the model wrote.

    ``status`` defaults to ``completed``, as for the calls of a stored history; a
    run sets it as the call goes through its life.
    """

    id: str
    name: str
    arguments: str = "{}"
    status: ToolCallStatus = ToolCallStatus.COMPLETED
    #: Why the call waits, or why it was rejected (a strategy's or a human's words).
    reason: str | None = None
    #: For a deferred call: the time (``time.time()``) from which it may run.
    not_before: float | None = None
    #: The model's own arguments, when a human approved the call with edited ones.
    original_arguments: str | None = None

    def parsed_arguments(self) -> Any:
        """The arguments as JSON data (raises ``ValueError`` if they are not JSON)."""
        return json.loads(self.arguments) if self.arguments.strip() else {}

    def with_status(self, status: ToolCallStatus) -> ToolCall:
        return self.model_copy(update={"status": status})


class SystemMessage(_Frozen):
    role: Literal["system"] = "system"
    content: str


class UserMessage(_Frozen):
    role: Literal["user"] = "user"
    #: Plain text, or OpenAI content parts (text, images) as dicts.
    content: str | tuple[dict[str, Any], ...]


class AssistantMessage(_Frozen):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    #: Reasoning text, where the provider streamed it (not sent back to the model).
    reasoning: str | None = None
    #: Structured (JSON) values the provider emitted during this turn, in order.
    structured: tuple[Any, ...] = ()


class ToolMessage(_Frozen):
    role: Literal["tool"] = "tool"
    tool_call_id: str
    content: str
    #: True when ``content`` reports a failure (an error, a rejection, a cancellation).
    is_error: bool = False


Message: TypeAlias = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage,
    Field(discriminator="role"),
]

_message_adapter: TypeAdapter[Message] = TypeAdapter(Message)


def _coerce_message(item: Any) -> Message:
    if isinstance(item, SystemMessage | UserMessage | AssistantMessage | ToolMessage):
        return item
    if isinstance(item, Mapping):
        try:
            return _message_adapter.validate_python(item)
        except ValidationError:
            # Not rxagent's own shape: read it as an OpenAI chat-completions dict.
            return _from_openai_message(item)
    raise TypeError(f"not a message: {item!r}")


class Conversation(RootModel[list[Message]]):
    """An ordered, mutable list of messages.

    It behaves like a list (``len``, indexing, iteration, ``append``), converts
    to OpenAI message dicts with :meth:`to_openai` and back with
    :meth:`from_openai`, and round-trips through :meth:`to_json` /
    :meth:`from_json`.
    """

    root: list[Message] = Field(default_factory=list)

    # -- construction -----------------------------------------------------------
    @classmethod
    def of(cls, value: ConversationInput) -> Conversation:
        """A new conversation from text (one user message), messages, or dicts."""
        if isinstance(value, Conversation):
            return cls.of_messages(value.root)
        if isinstance(value, str):
            return cls([UserMessage(content=value)])
        if isinstance(value, Iterable):
            return cls([_coerce_message(m) for m in value])
        raise TypeError(
            "a run's input is a str, a Conversation, or a list of messages; "
            f"got {type(value).__name__}"
        )

    @classmethod
    def of_messages(cls, messages: Iterable[Message]) -> Conversation:
        """A new conversation holding ``messages``, which are messages already (not
        dicts): no validation, so it costs next to nothing, however long."""
        return cls.model_construct(list(messages))

    @classmethod
    def from_openai(cls, messages: Iterable[Mapping[str, Any]]) -> Conversation:
        """A conversation from OpenAI chat-completions message dicts."""
        return cls([_from_openai_message(m) for m in messages])

    @classmethod
    def from_json(cls, text: str | bytes) -> Conversation:
        return cls.model_validate_json(text)

    # -- conversion -------------------------------------------------------------
    def to_openai(self) -> list[dict[str, Any]]:
        """The messages as OpenAI chat-completions request dicts."""
        return [to_openai_message(m) for m in self.root]

    def to_json(self, *, indent: int | None = None) -> str:
        return self.model_dump_json(indent=indent)

    # -- list behaviour ---------------------------------------------------------
    def __iter__(self) -> Iterator[Message]:  # type: ignore[override]
        return iter(self.root)

    def __len__(self) -> int:
        return len(self.root)

    @overload
    def __getitem__(self, index: int) -> Message: ...
    @overload
    def __getitem__(self, index: slice) -> list[Message]: ...
    def __getitem__(self, index: int | slice) -> Message | list[Message]:
        return self.root[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Conversation):
            return self.root == other.root
        if isinstance(other, list):
            return self.root == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def append(self, message: Message) -> None:
        self.root.append(message)

    def extend(self, messages: Iterable[Message]) -> None:
        self.root.extend(messages)

    def copy(self) -> Conversation:  # type: ignore[override]
        return Conversation.of_messages(self.root)

    def __add__(self, other: Iterable[Message]) -> Conversation:
        return Conversation([*self.root, *other])

    # -- human in the loop -------------------------------------------------------
    @property
    def pending(self) -> list[ToolCall]:
        """The calls of the last assistant turn that wait for a decision."""
        turn = self.open_turn()
        return [c for c in turn.unanswered if c.status is ToolCallStatus.PENDING] if turn else []

    def approve(self, call_id: str, *, arguments: Mapping[str, Any] | str | None = None) -> None:
        """Approve a pending call, optionally with edited ``arguments``; it runs on resume.

        The edited arguments must be a JSON object; they are checked against the
        tool's schema when the run resumes (``agent.run`` raises at once if they do
        not fit). The model's own arguments are kept in ``original_arguments``.
        """
        index, position, call = self._pending_call(call_id, "approve")
        update: dict[str, Any] = {"status": ToolCallStatus.APPROVED}
        if arguments is not None:
            text = arguments if isinstance(arguments, str) else json.dumps(dict(arguments))
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as error:
                raise ApprovalError(
                    f"the edited arguments for call {call_id!r} are not JSON: {error.msg}"
                ) from None
            if not isinstance(parsed, dict):
                raise ApprovalError(f"the edited arguments for call {call_id!r} must be an object")
            update["arguments"] = text
            update["original_arguments"] = call.original_arguments or call.arguments
        self._replace_call(index, position, call.model_copy(update=update))

    def reject(self, call_id: str, reason: str = "The user declined this call.") -> None:
        """Reject a pending call: it never runs, and the model reads ``reason`` on resume."""
        index, position, call = self._pending_call(call_id, "reject")
        self._replace_call(
            index,
            position,
            call.model_copy(update={"status": ToolCallStatus.REJECTED, "reason": reason}),
        )

    def open_turn(self) -> OpenTurn | None:
        """The last assistant turn, when some of its calls have no tool message yet.

        Raises :class:`~rxagent.errors.ApprovalError` when such a turn cannot be
        resumed: messages other than its tool messages follow it, or a call
        without an answer is neither pending, approved nor rejected.
        """
        for index in range(len(self.root) - 1, -1, -1):
            message = self.root[index]
            if isinstance(message, AssistantMessage):
                break
        else:
            return None
        if not message.tool_calls:
            return None
        ids = {c.id for c in message.tool_calls}
        answers: dict[str, ToolMessage] = {}
        for later in self.root[index + 1 :]:
            if isinstance(later, ToolMessage) and later.tool_call_id in ids:
                answers.setdefault(later.tool_call_id, later)
        unanswered = [c for c in message.tool_calls if c.id not in answers]
        if not unanswered:
            return None
        if any(
            not (isinstance(m, ToolMessage) and m.tool_call_id in ids)
            for m in self.root[index + 1 :]
        ):
            raise ApprovalError(
                "messages follow tool calls that still wait for a decision "
                f"({', '.join(c.id for c in unanswered)}); approve or reject them and resume "
                "before adding messages"
            )
        for call in unanswered:
            if call.status not in _RESUMABLE:
                raise ApprovalError(
                    f"call {call.id!r} has no tool message and is {call.status.value}; only "
                    "pending, approved or rejected calls can be resumed"
                )
        return OpenTurn(index, message, answers, unanswered)

    def _pending_call(self, call_id: str, verb: str) -> tuple[int, int, ToolCall]:
        """The message index, the position in it, and the call: a pending call of the
        open turn (the only turn a resume acts on)."""
        turn = self.open_turn()
        if turn is not None:
            for position, call in enumerate(turn.assistant.tool_calls):
                if call.id == call_id and call_id not in turn.answers:
                    if call.status is not ToolCallStatus.PENDING:
                        raise ApprovalError(
                            f"cannot {verb} call {call_id!r}: it is {call.status.value}, "
                            "not pending"
                        )
                    return turn.index, position, call
        found = self.find_tool_call(call_id)
        waiting = ", ".join(c.id for c in self.pending) or "none"
        if found is not None:
            raise ApprovalError(
                f"cannot {verb} call {call_id!r}: it is {found.status.value} and not waiting "
                f"in the last turn (calls waiting for a decision: {waiting})"
            )
        raise ApprovalError(
            f"cannot {verb} call {call_id!r}: the model made no such call "
            f"(calls waiting for a decision: {waiting})"
        )

    def _replace_call(self, index: int, position: int, call: ToolCall) -> None:
        message = self.root[index]
        assert isinstance(message, AssistantMessage)
        calls = list(message.tool_calls)
        calls[position] = call
        self.root[index] = message.model_copy(update={"tool_calls": tuple(calls)})

    # -- queries ----------------------------------------------------------------
    def tool_calls(self) -> list[ToolCall]:
        """Every tool call in the conversation, in order."""
        return [c for m in self.root if isinstance(m, AssistantMessage) for c in m.tool_calls]

    def find_tool_call(self, call_id: str) -> ToolCall | None:
        for call in self.tool_calls():
            if call.id == call_id:
                return call
        return None

    @property
    def last_assistant(self) -> AssistantMessage | None:
        for m in reversed(self.root):
            if isinstance(m, AssistantMessage):
                return m
        return None


_RESUMABLE = frozenset({ToolCallStatus.PENDING, ToolCallStatus.APPROVED, ToolCallStatus.REJECTED})


@dataclass(frozen=True)
class OpenTurn:
    """An assistant turn some of whose calls have no tool message yet (a paused turn)."""

    #: The index of the assistant message in the conversation.
    index: int
    assistant: AssistantMessage
    #: The tool messages it already has, by call id.
    answers: Mapping[str, ToolMessage]
    #: Its calls without a tool message, in call order.
    unanswered: list[ToolCall]


#: What a run accepts as input.
ConversationInput: TypeAlias = str | Conversation | Sequence[Message] | Sequence[Mapping[str, Any]]


# -- OpenAI wire format ------------------------------------------------------------


def to_openai_message(message: Message) -> dict[str, Any]:
    """One message as an OpenAI chat-completions request dict."""
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": message.content}
    if isinstance(message, UserMessage):
        content: Any = (
            message.content if isinstance(message.content, str) else list(message.content)
        )
        return {"role": "user", "content": content}
    if isinstance(message, ToolMessage):
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    out: dict[str, Any] = {"role": "assistant"}
    content_text = message.content
    if content_text is None and message.structured:
        # A structured answer is sent back as the JSON it was.
        content_text = json.dumps(message.structured[-1])
    out["content"] = content_text
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in message.tool_calls
        ]
    return out


def _from_openai_message(data: Mapping[str, Any]) -> Message:
    role = data.get("role")
    content = data.get("content")
    if role in ("system", "developer"):
        return SystemMessage(content=_text_of(content))
    if role == "user":
        if isinstance(content, list):
            return UserMessage(content=tuple(dict(p) for p in content))
        return UserMessage(content=_text_of(content))
    if role == "tool":
        return ToolMessage(
            tool_call_id=str(data.get("tool_call_id", "")), content=_text_of(content)
        )
    if role == "assistant":
        calls = []
        for raw in data.get("tool_calls") or ():
            fn = raw.get("function", {})
            status = raw.get("status", ToolCallStatus.COMPLETED)
            calls.append(
                ToolCall(
                    id=str(raw.get("id", "")),
                    name=str(fn.get("name", "")),
                    arguments=str(fn.get("arguments", "") or "{}"),
                    status=status,
                )
            )
        return AssistantMessage(
            content=None if content is None else _text_of(content), tool_calls=tuple(calls)
        )
    raise ValueError(f"unsupported message role {role!r}")


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return str(content)
