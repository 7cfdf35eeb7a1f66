"""Tracing (rxagent.otel): GenAI spans of runs, read back from the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import reactivex as rx
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import rxagent as ra
import rxagent.otel as otel
from rxagent import approval
from rxagent import scripted as s
from rxagent import testing as t
from rxagent.events import (
    RunCompleted,
    RunStarted,
    StepCompleted,
    ToolCallEnded,
    ToolCallStarted,
    from_jsonl,
    to_jsonl,
)


class Traces:
    """A tracer provider whose spans end up in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    @property
    def spans(self) -> list[ReadableSpan]:
        return sorted(self.exporter.get_finished_spans(), key=lambda x: x.start_time or 0)

    def named(self, name: str) -> list[ReadableSpan]:
        return [x for x in self.spans if x.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span

    def parent_of(self, span: ReadableSpan) -> ReadableSpan | None:
        if span.parent is None:
            return None
        return next(x for x in self.spans if x.context.span_id == span.parent.span_id)

    def tree(self) -> list[str]:
        """The spans as an outline, children under parents in start order."""
        lines: list[str] = []

        def walk(span: ReadableSpan, depth: int) -> None:
            lines.append("  " * depth + span.name)
            for child in self.spans:
                if child.parent is not None and child.parent.span_id == span.context.span_id:
                    walk(child, depth + 1)

        for root in self.spans:
            if root.parent is None:
                walk(root, 0)
        return lines


@pytest.fixture
def traces() -> Iterator[Traces]:
    traces = Traces()
    yield traces
    traces.provider.shutdown()


def ns(at: float) -> int:
    return int(at * 1e9)


def texts(span: ReadableSpan) -> list[str]:
    """Every piece of text a span carries: name, attributes, events, status."""

    def flat(value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, tuple | list):
            return [str(v) for v in value]
        return [str(value)]

    out = [span.name, span.status.description or ""]
    for key, value in (span.attributes or {}).items():
        out += [key, *flat(value)]
    for event in span.events:
        out.append(event.name)
        for key, value in (event.attributes or {}).items():
            out += [key, *flat(value)]
    return out


def weather_tools(traces: Traces) -> list[ra.Tool[..., Any]]:
    @ra.tool
    async def get_weather(city: str) -> dict[str, Any]:
        """Current weather for a city."""
        with traces.tracer.start_as_current_span("weather lookup"):
            return {"city": city, "sky": "sunny"}

    @ra.tool
    def get_time(city: str) -> str:
        """Local time in a city (sync: runs in a worker thread)."""
        with traces.tracer.start_as_current_span("clock lookup") as span:
            span.set_attribute("thread", threading.current_thread().name)
            return "12:00"

    return [get_weather, get_time]


def weather_agent(traces: Traces, **options: Any) -> ra.Agent:
    def answer(request: ra.ProviderRequest) -> list[Any]:
        if isinstance(request.messages[-1], ra.ToolMessage):
            return ["Sunny in Paris, noon.", s.usage(30, 6)]
        return [
            "Let me look. ",
            s.call("get_weather", {"city": "Paris"}, id="w"),
            s.call("get_time", {"city": "Paris"}, id="t"),
            s.usage(12, 5),
        ]

    provider = ra.ScriptedProvider(answer)
    return ra.Agent(
        provider,
        tools=weather_tools(traces),
        name="weather",
        instructions="Be terse.",
        **options,
    )


# -- the span tree -----------------------------------------------------------------------
async def test_a_run_is_an_invoke_agent_span_with_a_chat_span_per_step_and_tool_spans(
    traces: Traces,
) -> None:
    agent = otel.instrument(weather_agent(traces), tracer_provider=traces.provider)
    run = agent.run("Weather in Paris?")
    result = await ra.collect_final(run)
    assert result.text == "Sunny in Paris, noon."

    assert traces.tree() == [
        "invoke_agent weather",
        "  chat",
        "  execute_tool get_weather",
        "    weather lookup",
        "  execute_tool get_time",
        "    clock lookup",
        "  chat",
    ]
    root = traces.one("invoke_agent weather")
    assert root.kind is SpanKind.INTERNAL and root.status.status_code is StatusCode.UNSET
    assert root.attributes == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.provider.name": "rxagent.scripted",
        "gen_ai.agent.name": "weather",
        "rxagent.run.status": "completed",
        "rxagent.run.stop_reason": "no_tool_calls",
        "rxagent.run.steps": 2,
        "rxagent.run.tool_calls": 2,
        "gen_ai.usage.input_tokens": 42,
        "gen_ai.usage.output_tokens": 11,
    }
    first, second = traces.named("chat")
    assert first.kind is SpanKind.CLIENT
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["gen_ai.operation.name"] == "chat"
    assert first.attributes["gen_ai.provider.name"] == "rxagent.scripted"
    assert first.attributes["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert first.attributes["gen_ai.usage.input_tokens"] == 12
    assert first.attributes["gen_ai.usage.output_tokens"] == 5
    assert (first.attributes["rxagent.step"], second.attributes["rxagent.step"]) == (1, 2)
    assert second.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert second.attributes["rxagent.step.phase"] == "completed"
    weather = traces.one("execute_tool get_weather")
    assert weather.kind is SpanKind.INTERNAL
    assert weather.attributes == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.type": "function",
        "gen_ai.agent.name": "weather",
        "gen_ai.tool.name": "get_weather",
        "gen_ai.tool.call.id": "w",
        "gen_ai.tool.description": "Current weather for a city.",
        "rxagent.step": 1,
        "rxagent.tool.call.status": "completed",
    }

    # The spans' times are the events' own.
    (started,) = [e for e in run.events if isinstance(e, RunStarted)]
    (completed,) = [e for e in run.events if isinstance(e, RunCompleted)]
    assert (root.start_time, root.end_time) == (ns(started.at), ns(completed.at))
    call_start = next(e for e in run.events if isinstance(e, ToolCallStarted) and e.call_id == "w")
    call_end = next(e for e in run.events if isinstance(e, ToolCallEnded) and e.call_id == "w")
    assert (weather.start_time, weather.end_time) == (ns(call_start.at), ns(call_end.at))
    step_one = next(e for e in run.events if isinstance(e, StepCompleted)).outcome
    assert (first.start_time, first.end_time) == (
        ns(step_one.started_at),
        ns(step_one.streamed_at),
    )


async def test_tool_spans_nest_under_their_execute_tool_span_in_tasks_and_in_threads(
    traces: Traces,
) -> None:
    agent = otel.instrument(
        weather_agent(traces, max_tool_concurrency=2), tracer_provider=traces.provider
    )
    await ra.collect_final(agent.run("Weather in Paris?"))

    weather, clock = traces.one("weather lookup"), traces.one("clock lookup")
    assert traces.parent_of(weather) == traces.one("execute_tool get_weather")
    assert traces.parent_of(clock) == traces.one("execute_tool get_time")
    assert clock.attributes is not None
    assert str(clock.attributes["thread"]).startswith("rxagent-tool")
    assert {x.context.trace_id for x in traces.spans} == {weather.context.trace_id}


async def test_a_run_nests_under_the_span_current_where_it_is_awaited(traces: Traces) -> None:
    agent = otel.instrument(weather_agent(traces), tracer_provider=traces.provider)
    with traces.tracer.start_as_current_span("handle request"):
        await ra.collect_final(agent.run("Weather in Paris?"))
    assert traces.tree()[:2] == ["handle request", "  invoke_agent weather"]


async def test_the_next_provider_turn_does_not_run_inside_the_last_tool_span(
    traces: Traces,
) -> None:
    from opentelemetry import trace

    seen: list[str] = []

    def second_turn(request: ra.ProviderRequest) -> list[str]:
        current = trace.get_current_span()
        seen.append(getattr(current, "name", "(none)"))
        return ["done"]

    provider = ra.ScriptedProvider([[s.call("get_weather", {"city": "Oslo"})], second_turn])
    agent = otel.instrument(
        ra.Agent(provider, tools=weather_tools(traces)[:1]), tracer_provider=traces.provider
    )
    await ra.collect_final(agent.run("Oslo?"))
    assert traces.named("execute_tool get_weather")
    assert seen == ["(none)"]


async def test_the_agent_is_left_untraced_and_its_own_tool_context_still_runs(
    traces: Traces,
) -> None:
    import contextlib

    entered: list[tuple[str, str]] = []

    @contextlib.contextmanager
    def mine(call: ra.ToolCall) -> Iterator[None]:
        from opentelemetry import trace

        # Entered inside the execute_tool span.
        entered.append((call.id, getattr(trace.get_current_span(), "name", "")))
        yield

    plain = weather_agent(traces, tool_context=mine)
    traced_agent = otel.instrument(plain, tracer_provider=traces.provider)
    await ra.collect_final(plain.run("Weather?"))
    assert traces.spans and all(x.name.endswith("lookup") for x in traces.spans)
    traces.exporter.clear()
    entered.clear()
    await ra.collect_final(traced_agent.run("Weather?"))
    assert sorted(entered) == [("t", "execute_tool get_time"), ("w", "execute_tool get_weather")]
    assert traces.named("invoke_agent weather")


# -- content -----------------------------------------------------------------------------
async def test_content_is_off_by_default(traces: Traces) -> None:
    agent = otel.instrument(weather_agent(traces), tracer_provider=traces.provider)
    await ra.collect_final(agent.run("Weather in Paris?"))
    for span in traces.spans:
        assert span.attributes is not None
        assert not [k for k in span.attributes if "messages" in k or "call.arguments" in k]
        assert not [k for k in span.attributes if "result" in k or "instructions" in k]
        joined = " ".join(texts(span))
        for secret in ("Weather in Paris?", "sunny", "Be terse.", "Let me look", "Paris"):
            assert secret not in joined


async def test_content_is_recorded_when_asked(traces: Traces) -> None:
    agent = otel.instrument(
        weather_agent(traces), tracer_provider=traces.provider, capture_content=True
    )
    await ra.collect_final(agent.run("Weather in Paris?"))

    root = traces.one("invoke_agent weather")
    assert root.attributes is not None
    assert json.loads(str(root.attributes["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]}
    ]
    assert json.loads(str(root.attributes["gen_ai.system_instructions"])) == [
        {"type": "text", "content": "Be terse."}
    ]
    assert json.loads(str(root.attributes["gen_ai.output.messages"])) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Sunny in Paris, noon."}]}
    ]
    first, second = traces.named("chat")
    assert first.attributes is not None and second.attributes is not None
    assert json.loads(str(first.attributes["gen_ai.input.messages"])) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be terse."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]},
    ]
    assert json.loads(str(first.attributes["gen_ai.output.messages"])) == [
        {
            "role": "assistant",
            "parts": [
                {"type": "text", "content": "Let me look. "},
                {
                    "type": "tool_call",
                    "id": "w",
                    "name": "get_weather",
                    "arguments": {"city": "Paris"},
                },
                {
                    "type": "tool_call",
                    "id": "t",
                    "name": "get_time",
                    "arguments": {"city": "Paris"},
                },
            ],
            "finish_reason": "tool_calls",
        }
    ]
    sent = json.loads(str(second.attributes["gen_ai.input.messages"]))
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "tool"]
    assert sent[3]["parts"] == [
        {"type": "tool_call_response", "id": "w", "result": '{"city": "Paris", "sky": "sunny"}'}
    ]
    weather = traces.one("execute_tool get_weather")
    assert weather.attributes is not None
    assert json.loads(str(weather.attributes["gen_ai.tool.call.arguments"])) == {"city": "Paris"}
    assert json.loads(str(weather.attributes["gen_ai.tool.call.result"])) == {
        "city": "Paris",
        "sky": "sunny",
    }


# -- how runs end ------------------------------------------------------------------------
async def test_a_failed_provider_turn_fails_its_chat_span_and_the_run(traces: Traces) -> None:
    provider = ra.ScriptedProvider([["Half an answ", s.fail("the model fell over at Paris")]])
    agent = otel.instrument(ra.Agent(provider, name="a"), tracer_provider=traces.provider)
    with pytest.raises(ra.ProviderError):
        await ra.collect_final(agent.run("Paris?"))

    assert traces.tree() == ["invoke_agent a", "  chat"]
    root, chat = traces.one("invoke_agent a"), traces.one("chat")
    for span in (root, chat):
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes is not None and span.attributes["error.type"] == "ProviderError"
        # No error message without content capture: it may quote what was sent.
        assert span.status.description == "ProviderError"
    assert root.attributes is not None and chat.attributes is not None
    assert root.attributes["rxagent.run.status"] == "failed"
    assert root.attributes["rxagent.run.stop_reason"] == "error"
    assert chat.attributes["rxagent.step.phase"] == "failed"


async def test_the_error_message_is_recorded_with_content(traces: Traces) -> None:
    provider = ra.ScriptedProvider([[s.fail("the model fell over")]])
    agent = otel.instrument(
        ra.Agent(provider), tracer_provider=traces.provider, capture_content=True
    )
    with pytest.raises(ra.ProviderError):
        await ra.collect_final(agent.run("hi"))
    assert traces.one("invoke_agent").status.description == "the model fell over"


async def test_fail_fast_fails_the_tool_span_and_cancels_the_other_call(traces: Traces) -> None:
    release = asyncio.Event()

    @ra.tool
    async def boom() -> str:
        """Fails."""
        await asyncio.sleep(0)
        raise ValueError("no luck")

    @ra.tool
    async def wait() -> str:
        """Waits for ever."""
        with traces.tracer.start_as_current_span("waiting"):
            await release.wait()
        return "late"

    provider = ra.ScriptedProvider([[s.call("wait", id="w"), s.call("boom", id="b")]])
    agent = otel.instrument(
        ra.Agent(provider, tools=[boom, wait], join=ra.JoinPolicy.FAIL_FAST),
        tracer_provider=traces.provider,
    )
    with pytest.raises(ra.ToolExecutionError):
        await ra.collect_final(agent.run("go"))

    failed, cancelled = traces.one("execute_tool boom"), traces.one("execute_tool wait")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None and cancelled.attributes is not None
    assert failed.attributes["error.type"] == "ToolExecutionError"
    assert failed.attributes["rxagent.tool.call.status"] == "failed"
    assert cancelled.status.status_code is StatusCode.UNSET
    assert cancelled.attributes["rxagent.tool.call.status"] == "cancelled"
    root = traces.one("invoke_agent")
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes is not None
    assert root.attributes["error.type"] == "ToolExecutionError"
    # The model call itself went well.
    assert traces.one("chat").status.status_code is StatusCode.UNSET
    assert traces.parent_of(traces.one("waiting")) == cancelled


async def test_a_call_that_never_ran_has_a_failed_span_with_its_error_type(
    traces: Traces,
) -> None:
    provider = ra.ScriptedProvider([[s.call("no_such_tool", id="x")], ["sorry"]])
    agent = otel.instrument(ra.Agent(provider), tracer_provider=traces.provider)
    await ra.collect_final(agent.run("go"))
    span = traces.one("execute_tool no_such_tool")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "UnknownToolError"
    assert span.start_time == span.end_time
    assert traces.one("invoke_agent").status.status_code is StatusCode.UNSET


async def test_a_cancelled_run_ends_every_span_and_says_so(traces: Traces) -> None:
    @ra.tool
    async def hang() -> str:
        """Never ends."""
        await asyncio.Event().wait()
        return "never"

    provider = ra.ScriptedProvider([[s.call("hang", id="h")]])
    agent = otel.instrument(ra.Agent(provider, tools=[hang]), tracer_provider=traces.provider)
    run = agent.run("go")

    def on_event(event: ra.AgentEvent) -> None:
        if isinstance(event, ToolCallStarted):
            run.cancel()

    run.subscribe(on_event)
    result = await ra.collect_final(run)
    assert result.stop is ra.StopReason.CANCELLED

    assert traces.tree() == ["invoke_agent", "  chat", "  execute_tool hang"]
    root, tool = traces.one("invoke_agent"), traces.one("execute_tool hang")
    assert root.status.status_code is StatusCode.UNSET  # a cancellation is not an error
    assert root.attributes is not None and tool.attributes is not None
    assert root.attributes["rxagent.run.status"] == "cancelled"
    assert root.attributes["rxagent.run.stop_reason"] == "cancelled"
    assert tool.attributes["rxagent.tool.call.status"] == "cancelled"
    chat = traces.one("chat")
    assert chat.attributes is not None and chat.attributes["rxagent.step.phase"] == "cancelled"


async def test_a_paused_run_says_what_it_waits_for_and_its_resumption_is_traced(
    traces: Traces,
) -> None:
    moved: list[int] = []

    def transfer(amount: int) -> str:
        """Move money."""
        moved.append(amount)
        return f"moved {amount}"

    provider = ra.ScriptedProvider([[s.call("transfer", {"amount": 500}, id="big")], ["Done."]])
    agent = otel.instrument(
        ra.Agent(
            provider,
            tools=[ra.tool(transfer, approval=approval.require_approval("large amount"))],
        ),
        tracer_provider=traces.provider,
    )
    paused = await ra.collect_final(agent.run("move 500"))
    assert paused.stop is ra.StopReason.PAUSED

    assert traces.tree() == ["invoke_agent", "  chat"]  # the waiting call never ran
    root = traces.one("invoke_agent")
    assert root.status.status_code is StatusCode.UNSET
    assert root.attributes is not None
    assert root.attributes["rxagent.run.status"] == "paused"
    assert root.attributes["rxagent.run.stop_reason"] == "paused"
    assert root.attributes["rxagent.run.pause.kind"] == "awaiting_approval"
    assert root.attributes["rxagent.run.pause.awaiting_approval"] == ("big",)

    traces.exporter.clear()
    paused.messages.approve("big")
    resumed = agent.run(paused.messages)
    await ra.collect_final(resumed)
    assert moved == [500]
    assert traces.tree() == ["invoke_agent", "  execute_tool transfer", "  chat"]
    # The resumed step's provider turn starts once the approved call has ended.
    tool, chat = traces.one("execute_tool transfer"), traces.one("chat")
    assert chat.start_time is not None and tool.end_time is not None
    assert chat.start_time >= tool.end_time


async def test_a_retried_turn_is_an_event_on_its_chat_span(traces: Traces) -> None:
    provider = ra.ScriptedProvider([[s.retry("503 from the server near Paris"), "ok"]])
    agent = otel.instrument(ra.Agent(provider), tracer_provider=traces.provider)
    await ra.collect_final(agent.run("hi"))
    (event,) = traces.one("chat").events
    assert event.name == "rxagent.step.retry"
    assert dict(event.attributes or {}) == {"rxagent.retry.attempt": 1}


# -- events read back --------------------------------------------------------------------
async def test_events_read_back_make_the_trace_they_made_live(traces: Traces) -> None:
    live_agent = otel.instrument(weather_agent(traces), tracer_provider=traces.provider)
    run = live_agent.run("Weather in Paris?")
    await ra.collect_final(run)

    def shape(spans: list[ReadableSpan]) -> list[tuple[Any, ...]]:
        names = {x.context.span_id: x.name for x in spans}
        return sorted(
            (x.name, names.get(x.parent.span_id) if x.parent else None, x.start_time, x.end_time)
            for x in spans
            if not x.name.endswith("lookup")  # the tools' own spans are made live only
        )

    live = shape(traces.spans)
    traces.exporter.clear()
    events = from_jsonl(to_jsonl(run.events))
    replayed: list[ra.AgentEvent] = []
    rx.from_iterable(events).pipe(
        otel.traced(weather_agent(traces), tracer_provider=traces.provider)
    ).subscribe(replayed.append)
    assert replayed == events
    assert shape(traces.spans) == live


async def test_a_materialized_failure_fails_the_trace(traces: Traces) -> None:
    provider = ra.ScriptedProvider([[s.fail("down")]])
    events: list[ra.AgentEvent] = []
    done = asyncio.get_running_loop().create_future()
    ra.Agent(provider).run("hi").pipe(
        ra.ops.materialize(), otel.traced(tracer_provider=traces.provider, model="m")
    ).subscribe(events.append, on_completed=lambda: done.set_result(None))
    await done
    assert events[-1].type == "run_failed"
    assert traces.tree() == ["invoke_agent", "  chat m"]
    for span in traces.spans:
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes is not None and span.attributes["error.type"] == "ProviderError"


async def test_a_trace_whose_subscription_is_disposed_is_ended(traces: Traces) -> None:
    run = ra.Agent(ra.ScriptedProvider([["thinking", s.hang()]])).run("hi")
    started = asyncio.get_running_loop().create_future()

    def on_event(event: ra.AgentEvent) -> None:
        if isinstance(event, ra.events.TextDelta) and not started.done():
            started.set_result(None)

    subscription = run.pipe(otel.traced(tracer_provider=traces.provider)).subscribe(on_event)
    await started
    assert traces.spans == []
    subscription.dispose()
    root = traces.one("invoke_agent")
    assert root.attributes is not None and root.attributes["rxagent.run.status"] == "ended"
    assert root.status.status_code is StatusCode.UNSET
    run.cancel()
    await ra.collect_final(run)


# -- the API key, over HTTP --------------------------------------------------------------
KEY = "sk-test-NEVER-IN-A-SPAN-0123456789abcdef"


@pytest.mark.parametrize("capture", [False, True])
async def test_the_api_key_never_appears_in_a_span(traces: Traces, capture: bool) -> None:
    @ra.tool
    def echo(text: str) -> str:
        """Echo."""
        return text

    with t.LoopbackServer(
        [
            t.server_error(),  # retried: a StepRetry event
            ["Echoing. ", t.call("echo", {"text": "hi"}), t.usage(12, 4)],
            ["done"],
            t.status(401, f"Incorrect API key provided: {KEY}."),
        ]
    ) as server:
        port = server.port
        provider = ra.OpenAIProvider(
            model="loopback",
            base_url=server.url,
            api_key=KEY,
            retry=ra.RetryPolicy(base_delay=0.001, max_delay=0.01),
        )
        agent = otel.instrument(
            ra.Agent(provider, tools=[echo], name="echo", options={"temperature": 0.2}),
            tracer_provider=traces.provider,
            capture_content=capture,
        )
        assert (await ra.collect_final(agent.run("say hi"))).text == "done"
        with pytest.raises(ra.ProviderError):
            await ra.collect_final(agent.run("again"))
        await provider.aclose()

    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"  # it was sent
    spans = traces.spans
    assert len(traces.named("chat loopback")) == 3
    for span in spans:
        assert not [text for text in texts(span) if KEY in text]
    chat = traces.named("chat loopback")[0]
    assert chat.attributes is not None
    assert chat.attributes["gen_ai.provider.name"] == "openai"
    assert chat.attributes["gen_ai.request.model"] == "loopback"
    assert chat.attributes["gen_ai.request.temperature"] == 0.2
    assert chat.attributes["server.address"] == "127.0.0.1"
    assert chat.attributes["server.port"] == port
    assert [e.name for e in chat.events] == ["rxagent.step.retry"]
    failed = traces.named("invoke_agent echo")[-1]
    assert failed.attributes is not None
    assert failed.attributes["http.response.status_code"] == 401
    if capture:  # the message is kept, the key in it is not
        assert "Incorrect API key provided: [REDACTED]" in (failed.status.description or "")


# -- the extra stays optional ------------------------------------------------------------
def test_import_rxagent_loads_no_opentelemetry() -> None:
    code = "import sys, rxagent; print(any(m.startswith('opentelemetry') for m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,  # this checkout's rxagent
    )
    assert out.stdout.strip() == "False"
