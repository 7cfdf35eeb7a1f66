"""Shared test helpers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from reactivex import Observable

import rxagent as ra
from rxagent.events import AgentEvent

#: The validation policy for a lone step's messages (they start with an assistant).
STEP_ONLY = ra.ValidationPolicy(require_user_first=False, require_user_present=False)


@dataclass
class Collected:
    events: list[Any] = field(default_factory=list)
    error: Exception | None = None
    completed: bool = False

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def types(self) -> list[str]:
        return [e.type for e in self.events]


async def collect(source: Observable[Any], limit: float = 10.0) -> Collected:
    """Every item of ``source`` and how it ended (waits at most ``limit`` seconds)."""
    loop = asyncio.get_running_loop()
    out = Collected()
    done = loop.create_future()

    def on_error(error: Exception) -> None:
        out.error = error
        done.set_result(None)

    def on_completed() -> None:
        out.completed = True
        done.set_result(None)

    subscription = source.subscribe(out.events.append, on_error, on_completed)
    try:
        await asyncio.wait_for(done, limit)
    finally:
        subscription.dispose()
    return out


def final_run(events: list[AgentEvent]) -> ra.AgentRun:
    last = events[-1]
    assert isinstance(last, ra.events.RunCompleted), f"last event is {last!r}"
    return last.run


class Gauge:
    """Counts tools running at once and remembers the most seen."""

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0

    def __enter__(self) -> Gauge:
        self.current += 1
        self.peak = max(self.peak, self.current)
        return self

    def __exit__(self, *exc: object) -> None:
        self.current -= 1
