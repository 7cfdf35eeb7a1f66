"""Approval strategies: whether a tool call runs now, waits for a human, is refused, or waits.

A strategy is a function of the call (:class:`ApprovalRequest`: its id, the tool's
name, the validated arguments and the tool's own metadata) that returns a
:class:`Decision`::

    def guard(request: ra.approval.ApprovalRequest) -> ra.approval.Decision:
        if request.arguments["amount"] > 100:
            return ra.approval.require_approval("large transfer")
        return ra.approval.EXECUTE

    @ra.tool(approval=guard)
    def transfer(amount: int) -> str: ...

A tool takes one with ``@ra.tool(approval=...)``, a group of tools with
``ra.Toolset([...], approval=...)`` (a tool's own strategy wins over its group's).
A decision may stand for a strategy that always returns it:
``@ra.tool(approval=ra.approval.require_approval())``. The default is to execute.

A call that needs approval, or is deferred, pauses the run once the step's other
calls have ended: the run emits ``Paused`` and ends with ``stop="paused"``. Approve
or reject on ``result.messages`` (:meth:`~rxagent.messages.Conversation.approve`,
:meth:`~rxagent.messages.Conversation.reject`) and pass the conversation to
``agent.run`` again to resume. A deferred call runs on the first resume at or after
its time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypeAlias

__all__ = [
    "EXECUTE",
    "ApprovalRequest",
    "Decision",
    "Strategy",
    "defer",
    "execute",
    "reject",
    "require_approval",
]


@dataclass(frozen=True)
class ApprovalRequest:
    """A call to decide on."""

    call_id: str
    name: str
    #: The arguments as the model sent them (validated against the tool's schema).
    arguments: dict[str, Any]
    #: The tool's own metadata (``@ra.tool(metadata=...)``).
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """What a strategy decided: ``execute``, ``require_approval``, ``reject`` or ``defer``."""

    kind: Literal["execute", "require_approval", "reject", "defer"]
    reason: str | None = None
    #: For ``defer``: the time (``time.time()``) from which the call may run.
    until: float | None = None


#: Run the call now.
EXECUTE = Decision("execute")

Strategy: TypeAlias = Callable[[ApprovalRequest], Decision]


def execute() -> Decision:
    """Run the call now."""
    return EXECUTE


def require_approval(reason: str | None = None) -> Decision:
    """Pause the run until a human approves or rejects the call."""
    return Decision("require_approval", reason)


def reject(reason: str) -> Decision:
    """Refuse the call; the model reads ``reason`` as the call's result."""
    return Decision("reject", reason)


def defer(until: float | datetime | timedelta, reason: str | None = None) -> Decision:
    """Pause the run; the call runs on the first resume at or after ``until``.

    ``until`` is a ``time.time()`` timestamp, a ``datetime`` (naive means local
    time), or a ``timedelta`` from now.
    """
    if isinstance(until, timedelta):
        at = time.time() + until.total_seconds()
    elif isinstance(until, datetime):
        at = until.timestamp()
    else:
        at = float(until)
    return Decision("defer", reason, at)


def as_strategy(value: Strategy | Decision | None) -> Strategy | None:
    """``value`` as a strategy: a Decision stands for a strategy that always returns it."""
    if value is None or callable(value):
        return value
    if isinstance(value, Decision):
        decision = value
        return lambda _request: decision
    raise TypeError(f"approval must be a strategy function or a Decision, got {value!r}")
