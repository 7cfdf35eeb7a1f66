"""Events and metadata as Redis stores them, and back.

A run's event of index ``n`` is the stream entry ``0-{n+1}`` with one field, ``e``,
the event's JSON: the entry id is the index. So resuming after index ``n`` is
reading after entry ``0-{n+1}``, and Redis itself refuses an entry written twice
(an id must be greater than the last).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from rxagent import errors
from rxagent.errors import AgentError
from rxagent.events import AgentEvent, RunFailed, loads
from rxagent.messages import Conversation
from rxagent.redis import _errors
from rxagent.state import RunStatus

__all__ = ["Entry", "RunMeta", "entry_id", "error_of", "read_entries", "text"]

log = logging.getLogger("rxagent.redis")


def text(value: Any) -> str | None:
    """A reply as ``str`` (clients may decode responses or not)."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode()
    return str(value)


def entry_id(index: int) -> str:
    """The stream entry id of the event of ``index``."""
    return f"0-{index + 1}"


def index_of(entry: Any) -> int | None:
    """The event index of a stream entry id (``None`` for an id rxagent did not write)."""
    ms, _, seq = (text(entry) or "").partition("-")
    if ms != "0" or not seq.isdigit() or seq == "0":
        return None
    return int(seq) - 1


def stream_entries(reply: Any) -> list[tuple[Any, Mapping[Any, Any]]]:
    """The entries of an XREAD/XREADGROUP reply on one stream (RESP2 or RESP3)."""
    if not reply:
        return []
    if isinstance(reply, Mapping):  # RESP3: {stream: [[entries]]}
        return [tuple(e) for (entries,) in reply.values() for e in entries]
    return [tuple(e) for _, entries in reply for e in entries]


@dataclass(frozen=True, slots=True)
class Entry:
    """A stream entry of a run's log: its index, its event (``None`` when malformed)
    and the event's JSON as stored."""

    index: int
    event: AgentEvent | None
    json: str


def read_entries(entries: Iterable[Any], run_id: str) -> list[Entry]:
    """The entries of a reply (``(id, fields)`` pairs) as :class:`Entry`; a malformed
    one has no event (logged as a warning: a reader skips it and goes on); an entry
    whose id is not an event index is left out (with a warning)."""
    out: list[Entry] = []
    for entry, fields in entries:
        index = index_of(entry)
        if index is None:
            log.warning(
                "run %s: skipped stream entry %s: not an rxagent event id", run_id, text(entry)
            )
            continue
        raw = text((fields or {}).get(b"e", (fields or {}).get("e")))
        if raw is None:
            log.warning("run %s: skipped event %d: the entry has no 'e' field", run_id, index)
            out.append(Entry(index, None, ""))
            continue
        try:
            out.append(Entry(index, loads(raw), raw))
        except (ValidationError, ValueError) as error:
            log.warning(
                "run %s: skipped event %d: not a valid event (%s)",
                run_id,
                index,
                str(error).splitlines()[0],
            )
            out.append(Entry(index, None, raw))
    return out


def error_of(event: RunFailed) -> AgentError:
    """The ``AgentError`` a failed run's ``RunFailed`` stands for, its partial run attached.

    rxagent's own error types (``RedisUnavailable`` too) come back as themselves
    (without the details that do not travel: a ``ToolsFailed``'s list of errors, a
    ``ProviderError``'s status); any other type as an ``AgentError`` that names it.
    """
    cls = getattr(errors, event.error_type, None) or getattr(_errors, event.error_type, None)
    if not (isinstance(cls, type) and issubclass(cls, AgentError)):
        return AgentError(f"{event.error_type}: {event.message}", partial=event.partial)
    # One constructor for all: the subclasses add keyword-only details with defaults,
    # but ToolsFailed builds its message from its errors, which do not travel.
    error = cls.__new__(cls)
    AgentError.__init__(error, event.message, partial=event.partial)
    for name, default in _DETAILS.items():
        if not hasattr(error, name):
            setattr(error, name, default)
    return error


_DETAILS: dict[str, Any] = {
    "status_code": None,
    "retryable": False,
    "call_id": "",
    "tool_name": "",
    "errors": (),
    "text": "",
}


@dataclass(frozen=True)
class RunMeta:
    """A run's metadata, as its Redis hash holds it."""

    run_id: str
    status: RunStatus
    agent: str
    #: Who submitted it (a principal), where the submitter said.
    owner: str | None
    created: float
    updated: float
    #: The index of its last event (-1: none yet).
    last_index: int
    #: The worker running it, or the last one that did.
    worker: str | None
    #: ``"ErrorType: message"`` once it failed.
    error: str | None
    steps: int
    cancel_requested: bool
    #: How many times a worker took it up (more than once: it was recovered or resumed).
    attempts: int
    _conversation: str | None = None

    @property
    def conversation(self) -> Conversation | None:
        """The conversation as of its last completed step (its input before that): for a
        paused run, the one waiting for decisions."""
        return Conversation.from_json(self._conversation) if self._conversation else None

    @classmethod
    def of(cls, run_id: str, fields: Mapping[Any, Any]) -> RunMeta:
        data = {text(k): text(v) for k, v in fields.items()}
        return cls(
            run_id=run_id,
            status=RunStatus(data.get("status") or RunStatus.QUEUED),
            agent=data.get("agent") or "",
            owner=data.get("owner") or None,
            created=float(data.get("created") or 0),
            updated=float(data.get("updated") or 0),
            last_index=int(data.get("last") or -1),
            worker=data.get("worker") or None,
            error=data.get("error") or None,
            steps=int(data.get("steps") or 0),
            cancel_requested=data.get("cancel") == "1",
            attempts=int(data.get("attempts") or 0),
            _conversation=data.get("snapshot") or data.get("input"),
        )
