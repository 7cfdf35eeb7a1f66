"""The live display: what it publishes, how often, and that it never blocks the event loop."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import reactivex as rx
from reactivex.subject import Subject
from reactivex.testing import TestScheduler

import rxagent as ra
from rxagent import approval, live
from rxagent import events as ev
from rxagent import scripted as s
from rxagent.live import NotebookPublisher, RunStatus, TextPublisher, display
from rxagent.messages import ToolCallStatus
from rxagent.state import RunState

LIMIT = 10.0  # seconds any wait in these tests may take, generously


@dataclass(eq=False)
class Published:
    kind: str  # "display" or "update"
    bundle: dict[str, str]
    display_id: str
    raw: bool
    #: How many events the view had folded when this was published.
    events: int


@dataclass
class Capture:
    """Stands in for IPython's ``display`` / ``update_display``, recording each call.

    ``when(predicate)`` gives a future that resolves with the first publication
    that satisfies ``predicate`` (checked as each one arrives).
    """

    items: list[Published] = field(default_factory=list)
    _watch: list[tuple[Callable[[Published], bool], asyncio.Future[Published]]] = field(
        default_factory=list
    )
    _events: int = 0  # the view's event count at the publication under way

    def publisher(self) -> NotebookPublisher:
        """IPython's publisher, with this capture in place of IPython's functions."""
        capture = self

        class Recording(NotebookPublisher):
            def publish(self, view: RunState, *, final: bool) -> None:
                capture._events = view.events
                super().publish(view, final=final)

        return Recording(self._display, self._update)

    def _display(self, obj: Any, *, raw: bool = False, display_id: str = "") -> None:
        self._record("display", obj, raw, display_id)

    def _update(self, obj: Any, *, raw: bool = False, display_id: str = "") -> None:
        self._record("update", obj, raw, display_id)

    def _record(self, kind: str, bundle: dict[str, str], raw: bool, display_id: str) -> None:
        item = Published(kind, dict(bundle), display_id, raw, self._events)
        self.items.append(item)
        for predicate, future in list(self._watch):
            if not future.done() and predicate(item):
                future.set_result(item)

    def when(self, predicate: Callable[[Published], bool]) -> asyncio.Future[Published]:
        future: asyncio.Future[Published] = asyncio.get_running_loop().create_future()
        for item in self.items:
            if predicate(item):
                future.set_result(item)
                return future
        self._watch.append((predicate, future))
        return future

    @property
    def texts(self) -> list[str]:
        return [i.bundle["text/plain"] for i in self.items]


def attach(
    source: Any, capture: Capture, *, interval: float = 0.0, refresh: float | None = None
) -> live.RunDisplay:
    return display(source, publisher=capture.publisher(), interval=interval, refresh=refresh)


class Gate:
    """A tool that runs until the test opens its gate."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()

        async def wait_for_gate(label: str) -> str:
            """Wait until the gate opens."""
            await self.opened.wait()
            return f"{label} passed"

        self.tool = ra.tool(wait_for_gate)


@ra.tool
def boom() -> str:
    """Always fails."""
    raise RuntimeError("kaput")


async def test_the_display_is_one_output_showing_text_rows_and_usage_as_they_arrive() -> None:
    gate = Gate()
    provider = ra.ScriptedProvider(
        [
            [
                "Let me ",
                "look. ",
                s.usage(10, 5),
                s.call("wait_for_gate", {"label": "slow"}, id="slow"),
                s.call("boom", id="bad"),
            ],
            ["All ", "done.", s.usage(20, 3)],
        ]
    )
    run = ra.Agent(provider, tools=[gate.tool, boom]).run("go")
    capture = Capture()
    shown = attach(run, capture)

    # The first thing published is the display itself, before any event.
    assert capture.items[0].kind == "display" and "queued" in capture.texts[0]
    # While the slow call waits at its gate, the display shows it running and the text so
    # far. (The failed call's end is held back until the slow one's: ends come in call order.)
    seen = await asyncio.wait_for(
        capture.when(lambda p: _state_of(p, "wait_for_gate") == "running"), LIMIT
    )
    seen_text = seen.bundle["text/plain"]
    assert "Let me look." in seen_text and "All done" not in seen_text
    assert shown.view.calls["slow"].status is ToolCallStatus.RUNNING
    assert 'data-call-id="slow"' in seen.bundle["text/html"]
    assert "tokens 10 prompt + 5 completion" in seen_text
    gate.opened.set()

    view = await asyncio.wait_for(shown, LIMIT)

    assert view is shown.view and shown.done
    # One output: displayed once, then updated in place under the same id, as raw bundles.
    assert [i.kind for i in capture.items].count("display") == 1
    assert {i.display_id for i in capture.items} == {capture.items[0].display_id}
    assert all(i.raw for i in capture.items)
    # Text arrives piece by piece: some update shows a part of it only.
    assert any("Let me " in t and "look." not in t for t in capture.texts)
    final = capture.items[-1].bundle
    assert final["text/plain"].startswith("rxagent run · completed (no_tool_calls) · 2 steps")
    assert "Let me look. \nAll done." in final["text/plain"]
    assert "tokens 30 prompt + 8 completion" in final["text/plain"]
    assert "slow passed" in final["text/plain"] and "kaput" in final["text/plain"]
    assert ">completed</span>" in final["text/html"] and ">failed</span>" in final["text/html"]
    assert view.status is RunStatus.COMPLETED and view.stop is ra.StopReason.NO_TOOL_CALLS
    assert view.usage == ra.Usage(prompt_tokens=30, completion_tokens=8)
    slow = view.calls["slow"]
    assert slow.status is ToolCallStatus.COMPLETED and slow.arguments == {"label": "slow"}
    assert slow.elapsed(time.time()) is not None and slow.elapsed(time.time()) >= 0
    assert view.result is not None and view.result.text == "All done."
    # With interval=0 every event was published (plus the first display and the final state).
    assert len(capture.items) == len(run.events) + 2


async def test_updates_are_coalesced_so_a_long_run_publishes_a_few_not_one_per_token() -> None:
    pieces = [f"t{i} " for i in range(5000)]
    run = ra.Agent(ra.ScriptedProvider([pieces])).run("go")
    capture = Capture()

    shown = attach(run, capture, interval=60.0)
    view = await asyncio.wait_for(shown, LIMIT)

    # Within one interval nothing but the first display and the final state is published.
    assert [i.kind for i in capture.items] == ["display", "update"]
    assert view.text == "".join(pieces)
    assert "".join(pieces).strip() in capture.texts[-1]


def test_a_coalesced_display_publishes_the_latest_state_once_per_interval() -> None:
    # Virtual time: the display's clock is a TestScheduler; events come from a Subject.
    clock = TestScheduler()
    events: Subject[ra.AgentEvent] = Subject()
    capture = Capture()
    shown = display(
        events, publisher=capture.publisher(), interval=1.0, refresh=None, scheduler=clock
    )
    assert len(capture.items) == 1  # the display itself, at once

    events.on_next(ev.RunStarted(step=1, input=ra.Conversation.of("go")))
    events.on_next(ev.StepStarted(step=1))
    for i in range(10):  # ten tokens within the first second: one update, with all ten
        clock.advance_by(0.09)
        events.on_next(ev.TextDelta(step=1, text=f"t{i} "))
    clock.advance_by(0.2)  # 1.1 s
    assert len(capture.items) == 2 and capture.items[1].events == 12
    assert "t9" in capture.texts[1]
    clock.advance_by(5)  # nothing new: nothing published
    assert len(capture.items) == 2
    events.on_next(ev.TextDelta(step=1, text="more"))
    assert len(capture.items) == 2  # waits for the next tick of the interval
    clock.advance_by(1)
    assert len(capture.items) == 3 and "more" in capture.texts[2]
    events.on_completed()  # the end is published at once
    assert len(capture.items) == 4 and shown.done


async def test_running_calls_elapsed_times_move_even_without_events() -> None:
    gate = Gate()
    provider = ra.ScriptedProvider([[s.call("wait_for_gate", {"label": "x"})], ["ok"]])
    run = ra.Agent(provider, tools=[gate.tool]).run("go")
    capture = Capture()
    shown = attach(run, capture, interval=0.0, refresh=0.02)

    started = await asyncio.wait_for(
        capture.when(lambda p: _state_of(p, "wait_for_gate") == "running"), LIMIT
    )
    # Refreshes keep coming with no new event; each shows a later elapsed time.
    later = await asyncio.wait_for(
        capture.when(
            lambda p: (
                p.events == started.events
                and p is not started
                and capture.items.index(p) >= capture.items.index(started) + 3
            )
        ),
        LIMIT,
    )
    ticks = capture.items[capture.items.index(started) : capture.items.index(later) + 1]
    elapsed = [_elapsed_of(t.bundle["text/plain"]) for t in ticks]
    assert elapsed == sorted(elapsed) and elapsed[-1] > elapsed[0]
    gate.opened.set()
    await asyncio.wait_for(shown, LIMIT)


def _rows(published: Published) -> list[list[str]]:
    """The tool-call rows of a published plain-text view, as lists of cells."""
    lines = published.bundle["text/plain"].splitlines()
    # Columns are two or more spaces apart; rows start with their step number.
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines if line.startswith("  ")]
    return [row for row in cells if row[0].isdigit()]


def _states(published: Published) -> list[str]:
    return [row[3] for row in _rows(published)]


def _state_of(published: Published, tool: str) -> str | None:
    """The state column of ``tool``'s row in a published plain-text view."""
    return next((row[3] for row in _rows(published) if row[1] == tool), None)


def _elapsed_of(text: str) -> float:
    (row,) = [line for line in text.splitlines() if "wait_for_gate" in line]
    cells = re.split(r"\s{2,}", row.strip())
    return float(cells[4].removesuffix(" s"))


async def test_the_display_does_not_block_the_running_event_loop() -> None:
    # As in a notebook: the loop is running, a cell attaches a display and returns, other
    # work (other cells, other tasks) goes on while the run streams.
    gate = Gate()
    provider = ra.ScriptedProvider(
        [[*[f"w{i} " for i in range(20)], s.call("wait_for_gate", {"label": "x"})], ["done"]],
        chunk_delay=0.002,
    )
    run = ra.Agent(provider, tools=[gate.tool]).run("go")
    capture = Capture()
    shown = attach(run, capture, interval=0.01)
    assert not shown.done and not run.done  # display() returned at once

    beats: list[tuple[int, bool]] = []

    async def heartbeat() -> None:
        while not run.done:
            beats.append((shown.view.events, run.done))
            await asyncio.sleep(0)

    tokens: list[str] = []
    run.pipe(ra.ops.text()).subscribe(tokens.append)  # a plain subscribe, in the same loop
    beating = asyncio.ensure_future(heartbeat())
    await asyncio.wait_for(capture.when(lambda p: "running" in p.bundle["text/plain"]), LIMIT)
    gate.opened.set()
    await asyncio.wait_for(shown, LIMIT)
    await asyncio.wait_for(beating, LIMIT)

    # The other task ran many times while events were arriving, not only before or after.
    progress = {events for events, done in beats if not done}
    assert len(progress) > 5
    assert "".join(tokens) == "".join(shown.view.texts.values())


async def test_a_plain_subscribe_style_display_updates_after_the_caller_returned() -> None:
    provider = ra.ScriptedProvider([["a ", "b ", "c"]], chunk_delay=0.01)
    run = ra.Agent(provider).run("go")
    capture = Capture()

    def cell() -> live.RunDisplay:  # a notebook cell without await
        return attach(run, capture, interval=0.0)

    shown = cell()
    assert not shown.done and not run.done  # the cell returned at once: nothing blocked
    assert "a b c" not in capture.texts[-1]
    result = await ra.collect_final(run)  # a later cell
    await asyncio.wait_for(shown, LIMIT)
    assert result.text == "a b c" and shown.view.text == "a b c"
    assert "completed" in capture.texts[-1]


async def test_a_failed_run_shows_the_error_and_the_calls_it_stopped() -> None:
    gate = Gate()
    provider = ra.ScriptedProvider(
        [[s.call("wait_for_gate", {"label": "x"}, id="slow"), s.call("boom", id="bad")]]
    )
    agent = ra.Agent(provider, tools=[gate.tool, boom], join=ra.JoinPolicy.FAIL_FAST)
    stream = io.StringIO()

    shown = display(agent.run("go"), publisher=TextPublisher(stream), interval=0.0)
    view = await asyncio.wait_for(shown, LIMIT)  # a failure is shown, not raised

    assert view.status is RunStatus.FAILED
    assert view.error is not None and view.error.startswith("ToolExecutionError:")
    assert {r.call_id: r.status for r in view.rows} == {
        "slow": ToolCallStatus.CANCELLED,
        "bad": ToolCallStatus.FAILED,
    }
    out = stream.getvalue()
    assert "[tool] boom({}) failed" in out and "kaput" in out
    assert out.splitlines()[-1].startswith("-- failed: ToolExecutionError")


async def test_a_cancelled_run_shows_cancelled() -> None:
    provider = ra.ScriptedProvider([["thinking...", s.hang()]])
    run = ra.Agent(provider).run("go")
    capture = Capture()
    shown = attach(run, capture)
    await asyncio.wait_for(capture.when(lambda p: "thinking..." in p.bundle["text/plain"]), LIMIT)

    run.cancel()
    view = await asyncio.wait_for(shown, LIMIT)

    assert view.status is RunStatus.CANCELLED and view.text == "thinking..."
    assert capture.texts[-1].startswith("rxagent run · cancelled")


async def test_a_retried_step_drops_its_partial_text() -> None:
    provider = ra.ScriptedProvider([["half an ans", s.retry("connection reset"), "An answer."]])
    stream = io.StringIO()

    shown = display(ra.Agent(provider).run("go"), publisher=TextPublisher(stream), interval=0.0)
    view = await asyncio.wait_for(shown, LIMIT)

    assert view.text == "An answer."
    lines = stream.getvalue().splitlines()
    assert lines[:3] == ["half an ans", "(step 1 retried)", "An answer."]


async def test_calls_waiting_for_approval_show_as_waiting() -> None:
    # The events of a paused run, as JSON lines would bring them back.
    lines = [
        {"type": "step_started", "step": 1, "at": 100.0},
        {"type": "tool_args_delta", "step": 1, "call_id": "c1", "name": "transfer", "delta": "{}"},
        {"type": "tool_args_delta", "step": 1, "call_id": "c2", "name": "report", "delta": "{}"},
        {
            "type": "tool_call_started",
            "step": 1,
            "call_id": "c2",
            "name": "report",
            "arguments": {},
            "at": 100.1,
        },
        {
            "type": "tool_call_ended",
            "step": 1,
            "call_id": "c2",
            "name": "report",
            "output": "ok",
            "at": 100.2,
        },
        {
            "type": "paused",
            "step": 1,
            "reason": {"kind": "awaiting_approval", "awaiting_approval": ["c1"]},
        },
        {"type": "run_completed", "step": 1, "run": {"stop": "paused", "steps": 1}, "at": 100.3},
    ]
    events = [ev.validate_event(line) for line in lines]
    capture = Capture()

    view = await asyncio.wait_for(attach(rx.from_iterable(events), capture), LIMIT)

    assert view.calls["c1"].status is ToolCallStatus.PENDING
    assert view.calls["c1"].awaiting == "approval"
    assert view.calls["c2"].status is ToolCallStatus.COMPLETED
    assert _state_of(capture.items[-1], "transfer") == "waiting for approval"
    assert capture.texts[-1].startswith("rxagent run · paused: 1 call waiting · 0.30 s")
    assert ">waiting for approval</span>" in capture.items[-1].bundle["text/html"]


async def test_a_paused_run_shows_calls_waiting_for_approval_scheduled_and_rejected() -> None:
    def guard(request: approval.ApprovalRequest) -> approval.Decision:
        return {
            "big": approval.require_approval("large"),
            "later": approval.defer(timedelta(hours=1)),
            "odd": approval.reject("not to that account"),
        }.get(request.call_id, approval.EXECUTE)

    @ra.tool(approval=guard)
    def transfer(amount: int) -> str:
        """Move money."""
        return f"moved {amount}"

    calls = [("big", 500), ("later", 50), ("odd", 5), ("small", 10)]
    provider = ra.ScriptedProvider([[s.call("transfer", {"amount": a}, id=i) for i, a in calls]])
    capture = Capture()

    view = await asyncio.wait_for(
        attach(ra.Agent(provider, tools=[transfer]).run("move money"), capture), LIMIT
    )

    assert view.status is RunStatus.PAUSED
    assert {r.call_id: (r.status, r.awaiting) for r in view.rows} == {
        "big": (ToolCallStatus.PENDING, "approval"),
        "later": (ToolCallStatus.PENDING, "schedule"),
        "odd": (ToolCallStatus.REJECTED, None),
        "small": (ToolCallStatus.COMPLETED, None),
    }
    published = capture.items[-1]
    assert published.bundle["text/plain"].startswith("rxagent run · paused: 2 calls waiting")
    assert _states(published) == ["waiting for approval", "scheduled", "rejected", "completed"]
    html = published.bundle["text/html"]
    for state in ("waiting for approval", "scheduled", "rejected", "completed"):
        assert f">{state}</span>" in html


async def test_a_display_attached_to_a_finished_run_shows_its_end_at_once() -> None:
    run = ra.Agent(ra.ScriptedProvider([["one ", "two"]])).run("go")
    await ra.collect_final(run)
    capture = Capture()

    view = await asyncio.wait_for(attach(run, capture, interval=5.0), LIMIT)

    assert [i.kind for i in capture.items] == ["display", "update"]
    assert view.text == "one two" and view.status is RunStatus.COMPLETED


async def test_a_broken_publisher_never_breaks_the_run(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def publish(self, view: RunState, *, final: bool) -> None:
            raise RuntimeError("the screen fell off")

    run = ra.Agent(ra.ScriptedProvider([["fine"]])).run("go")
    with caplog.at_level(logging.ERROR, logger="rxagent"):
        shown = display(run, publisher=Broken(), interval=0.0)
        result = await ra.collect_final(run)
        await asyncio.wait_for(shown, LIMIT)

    assert result.text == "fine" and shown.done
    assert "publishing a run display failed" in caplog.text


async def test_dispose_stops_the_display() -> None:
    provider = ra.ScriptedProvider([["a", s.delay(0.05), "b"]])
    run = ra.Agent(provider).run("go")
    capture = Capture()
    shown = attach(run, capture)
    keep = run.subscribe(lambda _: None)  # another observer keeps the run alive
    await asyncio.wait_for(
        capture.when(lambda p: p.bundle["text/plain"].splitlines()[1:2] == ["a"]), LIMIT
    )

    shown.dispose()
    published = len(capture.items)
    result = await ra.collect_final(run)
    keep.dispose()

    assert result.text == "ab"
    assert len(capture.items) == published and shown.done
    assert await asyncio.wait_for(shown, LIMIT) is shown.view


def test_outside_a_notebook_the_display_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    # A plain script: no event loop here; the run lives on rxagent's background loop.
    @ra.tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    provider = ra.ScriptedProvider([["Adding. ", s.call("add", {"a": 2, "b": 3})], ["It is 5."]])
    run = ra.Agent(provider, tools=[add]).run("2 + 3?")

    shown = display(run)  # no publisher: not in a notebook, so plain text on stdout
    result = run.result(timeout=LIMIT)

    # The display subscribed before result() did, so the run ended it (final state
    # written) before it answered result().
    assert shown.done
    lines = capsys.readouterr().out.splitlines()
    assert result.text == "It is 5."
    assert lines[0] == "Adding. "
    # A "running" line shows only if an update fell while the call ran; "completed" always.
    (done,) = [i for i, line in enumerate(lines) if re.fullmatch(DONE_LINE, line)]
    assert lines[done + 1] == "It is 5."
    assert lines[-1].startswith("-- completed (no_tool_calls) · 2 steps")
    assert len(lines) in (4, 5)


DONE_LINE = re.escape('[tool] add({"a": 2, "b": 3}) completed (') + r"\d+\.\d\d s\)"


def test_in_notebook_is_false_without_a_kernel() -> None:
    assert live.in_notebook() is False


def test_the_view_renders_a_run_that_has_not_started() -> None:
    state = RunState()
    assert state.status is RunStatus.QUEUED and not state.done
    assert live.render_text(state) == "rxagent run · queued · tokens 0 prompt + 0 completion"
    assert "rxagent run · queued" in live.render_html(state)
