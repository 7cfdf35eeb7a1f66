"""Conversations: messages, tool calls and their lifecycle, OpenAI wire conversion.

Messages are frozen pydantic models; a :class:`Conversation` is the mutable,
ordered list of them that a run reads and extends. A conversation converts to
and from OpenAI chat-completions message dicts and round-trips through JSON, so
it can be stored between runs (a paused run, for instance).

Text is made sendable where it enters a message: a lone surrogate (what
``os.listdir`` gives for a file name that is not valid UTF-8, ``"caf\\udce9"``)
becomes the replacement character U+FFFD, so that a conversation always encodes
as UTF-8 and can be sent, stored and streamed as JSON.

The conversation of a finished run, as its events hold it (``RunCompleted.run``,
``RunStarted.input``, a failed run's ``partial``), is a read-only record: it
refuses ``approve``, ``reject``, ``append`` and ``extend``, and ``copy()`` gives
a writable conversation to go on with. ``ra.collect_final(run)`` and
``run.result()`` hand the caller such a copy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeAlias, overload

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    TypeAdapter,
    ValidationError,
)

from rxagent._text import sendable, sendable_data
from rxagent.errors import ApprovalError

__all__ = [
    "AssistantMessage",
    "OpenTurn",
    "Conversation",
    "ConversationInput",
    "ConversationRecord",
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


#: Text as it enters a message: lone surrogates become U+FFFD (see ``_text.sendable``).
Text = Annotated[str, AfterValidator(sendable)]


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

    id: Text
    name: Text
    arguments: Text = "{}"
    status: ToolCallStatus = ToolCallStatus.COMPLETED
    #: Why the call waits, or why it was rejected (a strategy's or a human's words).
    reason: Text | None = None
    #: For a deferred call: the time (``time.time()``) from which it may run.
    not_before: float | None = None
    #: The model's own arguments, when a human approved the call with edited ones.
    original_arguments: Text | None = None

    def parsed_arguments(self) -> Any:
        """The arguments as JSON data (raises ``ValueError`` if they are not JSON, or
        are nested too deeply to read)."""
        return _parse_json(self.arguments) if self.arguments.strip() else {}

    def with_status(self, status: ToolCallStatus) -> ToolCall:
        return self.model_copy(update={"status": status})


class SystemMessage(_Frozen):
    role: Literal["system"] = "system"
    content: Text


class UserMessage(_Frozen):
    role: Literal["user"] = "user"
    #: Plain text, or OpenAI content parts (text, images) as dicts.
    content: Annotated[str | tuple[dict[str, Any], ...], AfterValidator(sendable_data)]


class AssistantMessage(_Frozen):
    role: Literal["assistant"] = "assistant"
    content: Text | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    #: Reasoning text, where the provider streamed it (not sent back to the model).
    reasoning: Text | None = None
    #: Structured (JSON) values the provider emitted during this turn, in order.
    structured: Annotated[tuple[Any, ...], AfterValidator(sendable_data)] = ()
    #: What the provider needs back with this message on the next turn, opaque to rxagent
    #: and keyed by the API it is for (the Responses API's response id and reasoning items,
    #: under ``"openai.responses"``); chat completions ignore it.
    provider_data: dict[str, Any] | None = None


class ToolMessage(_Frozen):
    role: Literal["tool"] = "tool"
    tool_call_id: Text
    content: Text
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


_READ_ONLY = (
    "this conversation is the record of a run (its events hold it) and does not change; "
    "work on a copy: `conversation = messages.copy()`"
)


class _RecordList(list[Message]):
    """The messages of a read-only conversation: a list that refuses every change.

    A ``list`` subclass, so pydantic serialises it and ``isinstance(x, list)`` code
    reads it as before; copies (``copy``, ``deepcopy``, ``pickle``) stay read-only.
    """

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(_READ_ONLY)

    append = extend = insert = pop = remove = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse

    def __copy__(self) -> _RecordList:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _RecordList:
        return self  # its messages are frozen: a deep copy would be the same

    def __reduce__(self) -> tuple[type[_RecordList], tuple[list[Message]]]:
        return _RecordList, (list(self),)


class Conversation(RootModel[list[Message]]):
    """An ordered, mutable list of messages.

    It behaves like a list (``len``, indexing, iteration, ``append``), converts
    to OpenAI message dicts with :meth:`to_openai` and back with
    :meth:`from_openai`, and round-trips through :meth:`to_json` /
    :meth:`from_json`.

    The conversation a run's events hold is a read-only record (``read_only``):
    ``approve``, ``reject``, ``append`` and ``extend`` on it raise, and
    :meth:`copy` gives a writable conversation with the same messages.
    """

    root: list[Message] = Field(default_factory=list)

    # -- construction -----------------------------------------------------------
    @classmethod
    def of(cls, value: ConversationInput) -> Conversation:
        """A new (writable) conversation from text (one user message), messages, or dicts.

        From dicts (OpenAI's format, or rxagent's own), a tool call of the last
        assistant turn that no tool message answers is taken as waiting for a
        decision (``pending``), as :meth:`from_openai` does.
        """
        if isinstance(value, Conversation):
            return cls.of_messages(value.root)
        if isinstance(value, str):
            return cls([UserMessage(content=value)])
        if isinstance(value, Iterable):
            items = list(value)
            messages = [_coerce_message(m) for m in items]
            if any(isinstance(m, Mapping) for m in items):
                _infer_waiting(messages)
            return cls(messages)
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
        """A conversation from OpenAI chat-completions message dicts.

        The format has no place for a call's status, so it is inferred: a tool
        call of the last assistant turn that no tool message answers, with
        nothing but tool messages after that turn, waits for a decision
        (``pending``); every other call is ``completed``. A paused run stored with
        :meth:`to_openai` thus resumes (decide on its calls after loading: an
        approval, edited arguments or a schedule made before storing is not part
        of the format). A ``status`` key on a tool call dict is kept.
        """
        converted = [_from_openai_message(m) for m in messages]
        _infer_waiting(converted)
        return cls(converted)

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
        """A writable conversation with the same messages (they are frozen: nothing
        deep is copied)."""
        return Conversation.of_messages(self.root)

    def __add__(self, other: Iterable[Message]) -> Conversation:
        return Conversation([*self.root, *other])

    # -- records ----------------------------------------------------------------
    @property
    def read_only(self) -> bool:
        """Whether this is a run's record, which never changes (see :meth:`copy`)."""
        return type(self.root) is _RecordList

    def as_record(self) -> Conversation:
        """A read-only conversation with the same messages (``self`` if it is one)."""
        if self.read_only:
            return self
        return Conversation.model_construct(_RecordList(self.root))

    # -- human in the loop -------------------------------------------------------
    @property
    def pending(self) -> list[ToolCall]:
        """The calls of the last assistant turn that wait for a decision."""
        turn = self.open_turn()
        return [c for c in turn.unanswered if c.status is ToolCallStatus.PENDING] if turn else []

    def approve(self, call_id: str, *, arguments: Mapping[str, Any] | str | None = None) -> None:
        """Approve a waiting call, optionally with edited ``arguments``; it runs on resume.

        The edited arguments must be a JSON object; they are checked against the
        tool's schema when the run resumes (``agent.run`` raises at once if they do
        not fit). The model's own arguments are kept in ``original_arguments``.
        Until the call has run, a new decision replaces the old one: approve
        again with other arguments, or reject it.
        """
        index, position, call = self._undecided_call(call_id, "approve")
        model_arguments = call.original_arguments or call.arguments
        update: dict[str, Any] = {
            "status": ToolCallStatus.APPROVED,
            "arguments": model_arguments,
            "original_arguments": None,
        }
        if call.status is ToolCallStatus.REJECTED:
            update["reason"] = None  # the refusal no longer holds
        if arguments is not None:
            update["arguments"] = _edited_arguments(call_id, arguments)
            update["original_arguments"] = model_arguments
        self._replace_call(index, position, call.model_copy(update=update))

    def reject(self, call_id: str, reason: str = "The user declined this call.") -> None:
        """Reject a waiting call: it never runs, and the model reads ``reason`` on resume.

        Until the call has run, a new decision replaces the old one (an approval
        with edited arguments is dropped: the model's arguments are kept).
        """
        index, position, call = self._undecided_call(call_id, "reject")
        update = {
            "status": ToolCallStatus.REJECTED,
            "reason": sendable(reason),
            "arguments": call.original_arguments or call.arguments,
            "original_arguments": None,
        }
        self._replace_call(index, position, call.model_copy(update=update))

    def open_turn(self) -> OpenTurn | None:
        """The last assistant turn, when some of its calls have no tool message yet.

        Raises :class:`~rxagent.errors.ApprovalError` when such a turn cannot be
        resumed: messages other than its tool messages follow it, or a call
        without an answer is neither pending, approved nor rejected.
        """
        found = _last_turn(self.root)
        if found is None:
            return None
        turn, only_answers_follow = found
        if not only_answers_follow:
            raise ApprovalError(
                "messages follow tool calls that still wait for a decision "
                f"({', '.join(c.id for c in turn.unanswered)}); approve or reject them and "
                "resume before adding messages"
            )
        for call in turn.unanswered:
            if call.status not in _RESUMABLE:
                raise ApprovalError(
                    f"call {call.id!r} has no tool message and is {call.status.value}; only "
                    "pending, approved or rejected calls can be resumed"
                )
        return turn

    def _undecided_call(self, call_id: str, verb: str) -> tuple[int, int, ToolCall]:
        """The message index, the position in it, and the call: a call of the open turn
        (the only turn a resume acts on) that has not run yet."""
        if self.read_only:
            raise ApprovalError(f"cannot {verb} call {call_id!r}: {_READ_ONLY}")
        turn = self.open_turn()
        if turn is not None:
            for position, call in enumerate(turn.assistant.tool_calls):
                if call.id == call_id and call_id not in turn.answers:
                    return turn.index, position, call
        found = self.find_tool_call(call_id)
        open_calls = ", ".join(c.id for c in turn.unanswered) if turn is not None else ""
        open_calls = f"(calls that have not run and can be decided: {open_calls or 'none'})"
        if found is not None:
            raise ApprovalError(
                f"cannot {verb} call {call_id!r}: it is {found.status.value} and not waiting "
                f"in the last turn {open_calls}"
            )
        raise ApprovalError(
            f"cannot {verb} call {call_id!r}: the model made no such call {open_calls}"
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


#: A conversation held as a run's record (by an event): read-only once validated.
ConversationRecord = Annotated[Conversation, AfterValidator(Conversation.as_record)]


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


def _last_turn(messages: Sequence[Message]) -> tuple[OpenTurn, bool] | None:
    """The last assistant turn, when some of its calls have no tool message, and whether
    nothing but tool messages for its calls follows it."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, AssistantMessage):
            break
    else:
        return None
    if not message.tool_calls:
        return None
    ids = {c.id for c in message.tool_calls}
    answers: dict[str, ToolMessage] = {}
    only_answers = True
    for later in messages[index + 1 :]:
        if isinstance(later, ToolMessage) and later.tool_call_id in ids:
            answers.setdefault(later.tool_call_id, later)
        else:
            only_answers = False
    unanswered = [c for c in message.tool_calls if c.id not in answers]
    if not unanswered:
        return None
    return OpenTurn(index, message, answers, unanswered), only_answers


def _infer_waiting(messages: list[Message]) -> None:
    """Mark the unanswered calls at the end of a conversation read from a format that
    has no statuses as waiting for a decision (in place): such a conversation can only
    come from a paused run."""
    found = _last_turn(messages)
    if found is None or not found[1]:
        return
    turn = found[0]
    unanswered = {c.id for c in turn.unanswered}
    calls = tuple(
        c.with_status(ToolCallStatus.PENDING)
        if c.id in unanswered and c.status is ToolCallStatus.COMPLETED
        else c
        for c in turn.assistant.tool_calls
    )
    messages[turn.index] = turn.assistant.model_copy(update={"tool_calls": calls})


def _parse_json(text: str) -> Any:
    """``json.loads``, with text nested too deeply to read a ``ValueError`` too."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply to read") from None


def _edited_arguments(call_id: str, arguments: Mapping[str, Any] | str) -> str:
    """A human's arguments for a call, as the JSON text of an object (made sendable)."""
    if isinstance(arguments, str):
        text = sendable(arguments)
    else:
        try:
            text = json.dumps(sendable_data(dict(arguments)))
        except (TypeError, ValueError) as error:
            raise ApprovalError(
                f"the edited arguments for call {call_id!r} are not JSON data: {error}"
            ) from None
    try:
        parsed = _parse_json(text)
    except ValueError as error:
        detail = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
        raise ApprovalError(
            f"the edited arguments for call {call_id!r} are not JSON: {detail}"
        ) from None
    if not isinstance(parsed, dict):
        raise ApprovalError(f"the edited arguments for call {call_id!r} must be an object")
    return text


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
