"""The run timeline: lanes, spans and marks for scripted runs with known timings."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import rxagent as ra
from rxagent import approval
from rxagent import scripted as s
from rxagent.events import from_jsonl, to_jsonl

pytest.importorskip("matplotlib")  # the viz extra

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from rxagent import viz

#: Slack for timings on a busy CI machine: a span may run this much longer than asked.
SLACK = 0.5
NAPS = {"a": 0.3, "b": 0.1, "c": 0.2}


@ra.tool
async def nap(seconds: float, fail: bool = False) -> float:
    """Sleep, then fail if asked."""
    await asyncio.sleep(seconds)
    if fail:
        raise RuntimeError("woke up grumpy")
    return seconds


def agent(**options: Any) -> ra.Agent:
    provider = ra.ScriptedProvider(
        [
            [
                "Napping. ",
                s.call("nap", {"seconds": NAPS["a"]}, id="a"),
                s.call("nap", {"seconds": NAPS["b"]}, id="b"),
                s.call("nap", {"seconds": NAPS["c"], "fail": True}, id="c"),
            ],
            ["Rested."],
        ],
        chunk_delay=0.005,
    )
    return ra.Agent(provider, tools=[nap], **options)


def bars(ax: Axes, prefix: str) -> dict[str, Rectangle]:
    """The rectangles whose gid starts with ``prefix``, by the rest of their gid."""
    return {
        gid.removeprefix(prefix): p
        for p in ax.patches
        if isinstance(p, Rectangle) and (gid := p.get_gid() or "").startswith(prefix)
    }


def marks(ax: Axes, prefix: str) -> dict[str, Line2D]:
    """The markers whose gid starts with ``prefix``, by the rest of their gid."""
    return {
        gid.removeprefix(prefix): line
        for line in ax.lines
        if (gid := line.get_gid() or "").startswith(prefix)
    }


def extent(bar: Rectangle) -> tuple[float, float]:
    return bar.get_x(), bar.get_x() + bar.get_width()


async def test_a_fan_out_has_one_lane_per_call_and_spans_that_match_the_tool_times() -> None:
    run = agent().run("nap")
    await ra.collect_final(run)

    fig = viz.timeline(run.events)

    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    labels = [t.get_text().strip() for t in ax.get_yticklabels()]
    assert labels == [
        "step 1 · model",
        "nap(seconds=0.3)",
        "nap(seconds=0.1)",
        "nap(seconds=0.2, fail=True)",
        "step 2 · model",
    ]
    calls = bars(ax, "call:")
    assert set(calls) == {"a", "b", "c"}
    for call_id, seconds in NAPS.items():
        start, end = extent(calls[call_id])
        assert seconds - 0.01 <= end - start <= seconds + SLACK, call_id
        assert 0 <= start <= SLACK  # each started as soon as the model had written it
    # Unbounded fan-out: the three overlapped (all started before the first ended).
    starts, ends = zip(*(extent(b) for b in calls.values()), strict=True)
    assert max(starts) < min(ends)
    # Lanes: each call's bar sits on its own labelled lane.
    assert [calls[i].get_y() + calls[i].get_height() / 2 for i in "abc"] == pytest.approx([1, 2, 3])

    # The failed call is red, hatched, and marked with an x at its end.
    failed = marks(ax, "failed:")
    assert set(failed) == {"c"}
    marker = failed["c"]
    assert marker.get_marker() == "x"
    assert marker.get_xdata()[0] == pytest.approx(extent(calls["c"])[1])
    assert calls["c"].get_hatch() == "//"
    red, green, blue, _ = calls["c"].get_facecolor()
    assert red > 2 * green and red > 2 * blue
    assert calls["c"].get_facecolor() != calls["a"].get_facecolor() == calls["b"].get_facecolor()

    # Each step has its band and the provider's streaming span inside it.
    bands, streams = bars(ax, "step:"), bars(ax, "stream:")
    assert set(bands) == set(streams) == {"1", "2"}
    for n in "12":
        band_start, band_end = extent(bands[n])
        stream_start, stream_end = extent(streams[n])
        # (an instant span is drawn a little wider, to stay visible)
        assert band_start <= stream_start + 1e-9 and stream_end <= band_end + 0.01
        assert stream_end > stream_start
    assert extent(bands["2"])[0] >= max(ends) - 1e-6  # step 2 begins after the tools ended
    assert extent(streams["1"])[0] == pytest.approx(0.0, abs=1e-6)

    title = ax.get_title()
    assert "2 steps" in title and "3 tool calls" in title and "peak 3 at once" in title
    assert "1 failed" in title


async def test_sequential_calls_do_not_overlap() -> None:
    run = agent(max_tool_concurrency=1).run("nap")
    await ra.collect_final(run)

    data = viz.timeline_data(run.events)
    fig = viz.timeline(run.events)

    spans = [extent(b) for b in bars(fig.axes[0], "call:").values()]
    spans.sort()
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 1e-6  # each call starts once the previous one ended
    assert data.peak_concurrency == 1
    assert data.overlap == pytest.approx(1.0, abs=0.05)
    assert "peak 1 at once" in fig.axes[0].get_title()


async def test_the_numbers_say_how_much_the_fan_out_overlapped() -> None:
    run = agent().run("nap")
    await ra.collect_final(run)

    data = viz.timeline_data(run.events)

    assert data.peak_concurrency == 3
    assert data.tool_time == pytest.approx(sum(NAPS.values()), abs=3 * SLACK)
    # The calls ran together: the busy time is about the longest nap, not the sum.
    assert NAPS["a"] - 0.01 <= data.busy_time < sum(NAPS.values())
    assert data.overlap is not None and data.overlap > 1.5
    assert [c.outcome for c in data.calls] == ["completed", "completed", "failed"]
    assert data.calls[2].error is not None and "grumpy" in data.calls[2].error


async def test_a_fail_fast_run_marks_the_failure_and_the_calls_it_cancelled() -> None:
    run = agent(join=ra.JoinPolicy.FAIL_FAST).run("nap")
    with pytest.raises(ra.ToolError):
        await ra.collect_final(run)

    data = viz.timeline_data(run.events)
    fig = viz.timeline(run.events)
    ax = fig.axes[0]

    assert data.status is ra.state.RunStatus.FAILED
    assert {c.call_id: c.outcome for c in data.calls} == {
        "a": "cancelled",
        "b": "completed",
        "c": "failed",
    }
    calls = bars(ax, "call:")
    # The cancelled call's bar stops when the failure stopped it, well before its nap.
    a_start, a_end = extent(calls["a"])
    assert a_end == pytest.approx(extent(calls["c"])[1], abs=0.05)
    assert a_end - a_start < NAPS["a"]
    assert calls["a"].get_linestyle() == "--"
    assert set(marks(ax, "failed:")) == {"c"}
    # The stream had ended when the call failed: its span is solid, up to that time.
    assert bars(ax, "stream:")["1"].get_alpha() == pytest.approx(1.0)
    assert "(failed)" in ax.get_title()


async def test_a_call_that_never_ran_is_a_marker() -> None:
    provider = ra.ScriptedProvider([[s.call("no_such_tool", {}, id="x")], ["Sorry."]])
    run = ra.Agent(provider, tools=[nap]).run("go")
    await ra.collect_final(run)

    fig = viz.timeline(run.events)

    ax = fig.axes[0]
    assert "x" not in bars(ax, "call:")  # no bar: it never started
    assert set(marks(ax, "failed:")) == {"x"}
    assert "  no_such_tool()" in [t.get_text() for t in ax.get_yticklabels()]


async def test_a_timeline_from_json_lines_is_the_same_as_from_the_run() -> None:
    run = agent().run("nap")
    await ra.collect_final(run)

    assert viz.timeline_data(from_jsonl(to_jsonl(run.events))) == viz.timeline_data(run)


async def test_it_draws_into_axes_of_your_own_and_renders_as_png() -> None:
    runs = [agent(max_tool_concurrency=k).run("nap") for k in (1, 3)]
    for run in runs:
        await ra.collect_final(run)
    fig = Figure(figsize=(8, 6))
    top, bottom = fig.subplots(2, 1)

    returned = [
        viz.timeline(run.events, ax=ax, title=f"k={k}")
        for run, ax, k in zip(runs, (top, bottom), (1, 3), strict=True)
    ]

    assert returned == [fig, fig]
    assert [top.get_title(), bottom.get_title()] == ["k=1", "k=3"]
    png = viz.timeline(runs[0].events)._repr_png_()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_no_events_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no timed events"):
        viz.timeline_data([])


def test_importing_rxagent_imports_neither_matplotlib_nor_ipython() -> None:
    code = textwrap.dedent(
        """
        import sys
        import rxagent, rxagent.live, rxagent.viz
        loaded = sorted(m for m in ("matplotlib", "IPython") if m in sys.modules)
        assert not loaded, loaded
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


async def test_a_paused_run_marks_the_calls_that_wait_and_the_refused_ones() -> None:
    def guard(request: approval.ApprovalRequest) -> approval.Decision:
        decisions = {"big": approval.require_approval(), "odd": approval.reject("no")}
        return decisions.get(request.call_id, approval.EXECUTE)

    provider = ra.ScriptedProvider(
        [[s.call("nap", {"seconds": 0.05}, id=i) for i in ("big", "odd", "ok")]]
    )
    guarded = ra.tool(nap.fn, name="nap", approval=guard)
    run = ra.Agent(provider, tools=[guarded]).run("nap")
    result = await ra.collect_final(run)
    assert result.stop is ra.StopReason.PAUSED

    data = viz.timeline_data(run.events)
    ax = viz.timeline(run.events).axes[0]

    assert {c.call_id: c.outcome for c in data.calls} == {
        "big": "pending",
        "odd": "rejected",
        "ok": "completed",
    }
    assert set(bars(ax, "call:")) == {"ok"}  # only it ran
    assert set(marks(ax, "pending:")) == {"big"} and set(marks(ax, "rejected:")) == {"odd"}
