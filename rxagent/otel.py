"""OpenTelemetry traces of agent runs, per the GenAI semantic conventions (``[otel]`` extra).

:func:`instrument` returns an agent whose every run is traced, once, however
many observe it; :func:`traced` is the same as an operator on any stream of a
run's events (a run, or its events read back from a log)::

    import rxagent.otel

    agent = rxagent.otel.instrument(ra.Agent(provider, tools=[get_weather], name="weather"))
    result = await ra.collect_final(agent.run("Weather in Paris?"))

The span tree of a run (each span's times are the times its events carry)::

    invoke_agent weather              INTERNAL  RunStarted .. RunCompleted (or the failure)
    ├── chat gpt-4o-mini              CLIENT    step 1's provider turn
    ├── execute_tool get_weather      INTERNAL  ToolCallStarted .. ToolCallEnded
    │   └── (the tool's own spans)
    └── chat gpt-4o-mini              CLIENT    step 2's provider turn

``execute_tool`` spans are children of ``invoke_agent``, siblings of the
``chat`` span whose answer asked for them, as in the conventions' agent spans
("the tool or task spans ... are typically sibling operations under the same
``invoke_agent`` span"): a ``chat`` span is the model call (a CLIENT span,
ending when the model's stream ends), while the tools run on after it, on the
agent's side. The run's span is a child of the span current where the run was
first subscribed (so a run started inside a tool nests under that tool's span).

Attributes: ``gen_ai.operation.name``, ``gen_ai.provider.name`` (the provider's
``provider_name``: ``openai`` for :class:`~rxagent.providers.openai.OpenAIProvider`),
``gen_ai.agent.name``, ``gen_ai.request.model`` (the provider's ``model``),
``server.address``/``server.port`` (host and port of its ``base_url``, nothing
else of it), ``gen_ai.request.*`` options, ``gen_ai.usage.input_tokens``/
``output_tokens``, ``gen_ai.response.finish_reasons``, ``gen_ai.tool.name``/
``call.id``/``type``/``description``, ``error.type``; and rxagent's own:
``rxagent.run.status`` (a :class:`~rxagent.state.RunStatus`),
``rxagent.run.stop_reason`` (a :class:`~rxagent.policies.StopReason`),
``rxagent.run.pause.*`` (why a paused run waits), ``rxagent.step``,
``rxagent.step.phase`` (a :class:`~rxagent.state.StepPhase`) and
``rxagent.tool.call.status`` (a :class:`~rxagent.messages.ToolCallStatus`).
A failed run's span, the ``chat`` span of a failed provider turn and a failed
call's span have an error status and ``error.type`` (the error's class name);
cancelled and paused runs are not errors (their status says why). A retried
provider turn is a ``rxagent.step.retry`` event on its ``chat`` span.

Content is off by default. With ``capture_content=True`` the spans also carry
``gen_ai.input.messages``, ``gen_ai.output.messages``,
``gen_ai.system_instructions``, ``gen_ai.tool.call.arguments`` and
``gen_ai.tool.call.result`` (JSON text), and error messages in span statuses;
the provider's API key is replaced by ``[REDACTED]`` wherever it would appear.
Without it, no message text, argument, result or error message is recorded
(an error's class name only: a provider's answer to a bad key quotes part of it).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider
from reactivex import Observable, abc
from reactivex.disposable import Disposable, SingleAssignmentDisposable

from rxagent._text import clip
from rxagent.agent import Agent
from rxagent.aio import DirectObservable
from rxagent.errors import ProviderError
from rxagent.events import (
    AgentEvent,
    OutputRetry,
    Paused,
    ReasoningDelta,
    RunCompleted,
    RunFailed,
    RunStarted,
    StepCompleted,
    StepRetry,
    StepStarted,
    Structured,
    TextDelta,
    ToolArgsDelta,
    ToolCallEnded,
    ToolCallPending,
    ToolCallStarted,
    ToolProgress,
    UsageDelta,
)
from rxagent.messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolCallStatus,
    ToolMessage,
    Usage,
)
from rxagent.ops._fan_out import ToolContext
from rxagent.ops._step import with_instructions
from rxagent.policies import PauseReason
from rxagent.state import RunState, StepPhase

__all__ = ["instrument", "traced"]

log = logging.getLogger("rxagent.otel")

EventOperator = Callable[[Observable[AgentEvent]], Observable[AgentEvent]]

#: Request options that have a ``gen_ai.request.*`` attribute.
_REQUEST_OPTIONS = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "stop": "gen_ai.request.stop_sequences",
}

_REDACTED = "[REDACTED]"


def instrument(
    agent: Agent,
    *,
    tracer_provider: TracerProvider | None = None,
    capture_content: bool = False,
    provider_name: str | None = None,
) -> Agent:
    """A copy of ``agent`` whose runs are traced (``agent`` itself is left as it is).

    Each run makes one trace, whoever and however many observe it: the spans are
    made from the run's events before they are shared (``Agent(run_operator=...)``).
    Each tool call starts inside its ``execute_tool`` span (``Agent(tool_context=...)``;
    an agent's own ``tool_context`` is entered inside it), so the spans a tool makes,
    in its task or in its worker thread, are children of that span.

    ``tracer_provider`` defaults to the global one; ``capture_content`` records
    messages, tool arguments and results (see the module's doc); ``provider_name``
    overrides ``gen_ai.provider.name`` (default: the provider's ``provider_name``).
    """
    starting = threading.local()
    setup = _Setup.of(
        agent,
        tracer_provider=tracer_provider,
        capture_content=capture_content,
        provider_name=provider_name,
        starting=starting,
    )
    operator = _operator(setup)
    earlier = agent.run_operator
    clone = copy.copy(agent)
    clone.config = dataclasses.replace(
        agent.config, tool_context=_chained(_tool_context(starting), agent.config.tool_context)
    )
    clone.run_operator = (
        operator if earlier is None else (lambda source: source.pipe(earlier, operator))
    )
    return clone


def traced(
    agent: Agent | None = None,
    *,
    tracer_provider: TracerProvider | None = None,
    capture_content: bool = False,
    provider_name: str | None = None,
    model: str | None = None,
    agent_name: str | None = None,
) -> EventOperator:
    """Make spans of a run's events as they pass; the events pass unchanged::

        events:  R-S1-t-t-T1-E1-C1-S2-t-C2-RC|
        result:  R-S1-t-t-T1-E1-C1-S2-t-C2-RC|
        spans:   invoke_agent [R ........................ RC]
                   chat        [S1 .... C1]  chat [S2 . C2]
                   execute_tool       [T1 E1]

    Each subscription makes a trace of its own, so pipe it into one subscription
    (or use :func:`instrument`, which makes one per run whoever observes). Spans
    take their times from the events, so events read back later (from a log, a
    Redis stream) make the trace they made live. A tool's own spans nest under
    its ``execute_tool`` span only with :func:`instrument` (which starts the
    tool inside it). ``agent`` gives the names, model and server (``model``,
    ``agent_name`` and ``provider_name`` override them, or give them without an agent).
    """
    return _operator(
        _Setup.of(
            agent,
            tracer_provider=tracer_provider,
            capture_content=capture_content,
            provider_name=provider_name,
            model=model,
            agent_name=agent_name,
        )
    )


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What every run of one instrumented agent shares."""

    tracer: Tracer
    capture_content: bool
    agent_name: str | None
    instructions: str | None
    #: The attributes every span of a kind starts with.
    run_attributes: Mapping[str, Any]
    chat_attributes: Mapping[str, Any]
    tool_attributes: Mapping[str, Any]
    chat_name: str
    run_name: str
    #: Tool name -> description.
    descriptions: Mapping[str, str]
    #: Strings that never go into a span (the provider's API key).
    secrets: tuple[str, ...]
    #: Where ``ToolCallStarted`` leaves a call's span for ``tool_context`` (per thread).
    starting: threading.local | None

    @classmethod
    def of(
        cls,
        agent: Agent | None,
        *,
        tracer_provider: TracerProvider | None,
        capture_content: bool,
        provider_name: str | None = None,
        model: str | None = None,
        agent_name: str | None = None,
        starting: threading.local | None = None,
    ) -> _Setup:
        from rxagent import __version__

        provider = agent.provider if agent is not None else None
        name = agent_name or (agent.name if agent is not None else None)
        model = model or _str_attr(provider, "model")
        system = provider_name or _str_attr(provider, "provider_name")
        if system is None:
            system = type(provider).__name__ if provider is not None else "_OTHER"
        common: dict[str, Any] = {"gen_ai.provider.name": system}
        if model is not None:
            common["gen_ai.request.model"] = model
        run_attributes = {"gen_ai.operation.name": "invoke_agent", **common}
        if name is not None:
            run_attributes["gen_ai.agent.name"] = name
        chat_attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", **common}
        chat_attributes.update(_server(_str_attr(provider, "base_url")))
        options: dict[str, Any] = {}
        if isinstance(getattr(provider, "options", None), Mapping):
            options.update(provider.options)  # type: ignore[union-attr]
        if agent is not None:
            options.update(agent.config.options)
        for key, attribute in _REQUEST_OPTIONS.items():
            value = options.get(key)
            if isinstance(value, str) and key == "stop":
                value = (value,)
            if isinstance(value, int | float | tuple | list) and not isinstance(value, bool):
                chat_attributes[attribute] = tuple(value) if isinstance(value, list) else value
        if agent is not None and agent.output is not None:
            chat_attributes["gen_ai.output.type"] = "json"
        tool_attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.type": "function",
        }
        if name is not None:
            tool_attributes["gen_ai.agent.name"] = name
        secrets: tuple[str, ...] = ()
        if capture_content:
            api_key = getattr(getattr(provider, "client", None), "api_key", None)
            if isinstance(api_key, str) and len(api_key) >= 8:
                secrets = (api_key,)
        return cls(
            tracer=trace.get_tracer("rxagent", __version__, tracer_provider=tracer_provider),
            capture_content=capture_content,
            agent_name=name,
            instructions=agent.instructions if agent is not None else None,
            run_attributes=run_attributes,
            chat_attributes=chat_attributes,
            tool_attributes=tool_attributes,
            chat_name=f"chat {model}" if model else "chat",
            run_name=f"invoke_agent {name}" if name else "invoke_agent",
            descriptions=(
                {t.name: t.description for t in agent.tools if t.description}
                if agent is not None
                else {}
            ),
            secrets=secrets,
            starting=starting,
        )

    def text(self, value: str) -> str:
        """``value`` with every secret replaced."""
        for secret in self.secrets:
            value = value.replace(secret, _REDACTED)
        return value

    def json(self, value: Any) -> str:
        return self.text(json.dumps(value, ensure_ascii=False, default=str))

    def description(self, error_type: str | None, message: str | None) -> str | None:
        """A span status's description: the error message where content is captured."""
        if self.capture_content and message:
            return self.text(clip(message, 1000))
        return error_type


def _operator(setup: _Setup) -> EventOperator:
    def operator(source: Observable[AgentEvent]) -> Observable[AgentEvent]:
        def subscribe(
            observer: abc.ObserverBase[AgentEvent], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            # The run's span is a child of the span current where the run is subscribed.
            spans = _RunSpans(setup, observer, otel_context.get_current())
            spans.upstream.disposable = source.subscribe(spans, scheduler=scheduler)
            return Disposable(spans.dispose)

        return DirectObservable(subscribe)

    return operator


# Events that pass with no span work: a streamed token costs one set lookup here.
_PROVIDER_OUTPUT = frozenset({TextDelta, ReasoningDelta, ToolArgsDelta, Structured})


class _RunSpans(abc.ObserverBase[AgentEvent]):
    """One run's spans, made from its events as they pass to ``observer``."""

    __slots__ = (
        "awaiting_turn",
        "failed_step",
        "observer",
        "over",
        "parent",
        "pause",
        "resumed",
        "run_context",
        "run_span",
        "setup",
        "state",
        "step_at",
        "step_events",
        "step_input",
        "tools",
        "turn_at",
        "upstream",
        "usage_seen",
    )

    def __init__(
        self, setup: _Setup, observer: abc.ObserverBase[AgentEvent], parent: Context
    ) -> None:
        self.setup = setup
        self.observer = observer
        self.parent = parent
        self.upstream = SingleAssignmentDisposable()
        #: The run's state, folded from the events that make spans (not the deltas).
        self.state = RunState()
        self.run_span: Span | None = None
        self.run_context: Context | None = None
        #: Open ``execute_tool`` spans by call id.
        self.tools: dict[str, Span] = {}
        self.over = False
        self.pause: PauseReason | None = None
        # The step under way.
        self.step_at = 0.0
        #: Whether the step resumes a paused turn (its provider turn comes after).
        self.resumed = False
        #: A resumed step whose provider turn has not shown yet: its calls' ends move
        #: the turn's start.
        self.awaiting_turn = False
        self.turn_at = 0.0
        self.step_input: tuple[Message, ...] = ()
        #: Span events of the step's chat span: (name, attributes, time in ns).
        self.step_events: list[tuple[str, dict[str, Any], int]] = []
        self.usage_seen = False
        #: A step that failed: its chat span waits for the error (was it the provider's?).
        self.failed_step: tuple[StepCompleted, StepPhase | None] | None = None

    # -- Observer ----------------------------------------------------------------------
    def on_next(self, event: AgentEvent) -> None:
        kind = type(event)
        if kind in _PROVIDER_OUTPUT:
            if self.awaiting_turn:
                self.awaiting_turn = False
            self.observer.on_next(event)
            return
        if kind is not ToolProgress and not self.over:
            handler = _HANDLERS.get(kind)
            if handler is not None:
                try:
                    handler(self, event)
                except Exception:
                    log.exception("tracing %s failed; the run goes on", kind.__name__)
        self.observer.on_next(event)

    def on_error(self, error: Exception) -> None:
        if not self.over:
            try:
                self.state = self.state.fail(error)
                self._end_run(
                    time.time(),
                    type(error).__name__,
                    getattr(error, "message", None) or str(error),
                    provider_failed=isinstance(error, ProviderError),
                    status_code=getattr(error, "status_code", None),
                )
            except Exception:
                log.exception("tracing a failed run failed")
        self.observer.on_error(error)

    def on_completed(self) -> None:
        self._ended()
        self.observer.on_completed()

    def dispose(self) -> None:
        self.upstream.dispose()
        self._ended()

    def _ended(self) -> None:
        """The stream ended (or was disposed) without a last event: close what is open."""
        if self.over:
            return
        try:
            self.state = self.state.end()
            self._end_run(time.time())
        except Exception:
            log.exception("tracing the end of a run failed")

    # -- the events --------------------------------------------------------------------
    def _run_started(self, event: RunStarted) -> None:
        self.state = self.state.apply(event)
        self._open_run(event.at, event.input)

    def _open_run(self, at: float, input: Iterable[Message] | None = None) -> None:
        setup = self.setup
        attributes = dict(setup.run_attributes)
        if setup.capture_content:
            if input is not None:
                attributes["gen_ai.input.messages"] = setup.json(_messages(input))
            if setup.instructions:
                attributes["gen_ai.system_instructions"] = setup.json(
                    [{"type": "text", "content": setup.instructions}]
                )
        span = self._start(setup.run_name, SpanKind.INTERNAL, attributes, at, self.parent)
        self.run_span = span
        self.run_context = trace.set_span_in_context(span, self.parent)

    def _ensure_run(self, at: float) -> None:
        """Open the run's span, for a stream that did not begin with ``RunStarted``."""
        if self.run_span is None:
            self._open_run(at)

    def _start(
        self,
        name: str,
        kind: SpanKind,
        attributes: Mapping[str, Any],
        at: float,
        parent: Context | None = None,
    ) -> Span:
        """A span started at ``at`` (a ``time.time()``), by default a child of the run's."""
        return self.setup.tracer.start_span(
            name,
            context=parent if parent is not None else self.run_context,
            kind=kind,
            attributes=attributes,
            start_time=_ns(at),
        )

    def _failed(self, span: Span, error_type: str, message: str | None) -> None:
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, self.setup.description(error_type, message)))

    def _step_started(self, event: StepStarted) -> None:
        self._ensure_run(event.at)
        self.state = state = self.state.apply(event)
        self.step_at = self.turn_at = event.at
        self.resumed = self.awaiting_turn = state.phase is StepPhase.RESUMING
        self.step_input = state.messages
        self.step_events = []
        self.usage_seen = False

    def _usage(self, event: UsageDelta) -> None:
        self.usage_seen = True
        self.awaiting_turn = False

    def _step_retry(self, event: StepRetry) -> None:
        self.awaiting_turn = False
        attributes: dict[str, Any] = {"rxagent.retry.attempt": event.attempt}
        if self.setup.capture_content:
            attributes["rxagent.retry.error"] = self.setup.text(event.error)
        self.step_events.append(("rxagent.step.retry", attributes, time.time_ns()))

    def _output_retry(self, event: OutputRetry) -> None:
        attributes: dict[str, Any] = {"rxagent.retry.attempt": event.attempt}
        if self.setup.capture_content:
            attributes["rxagent.retry.error"] = self.setup.text(event.errors)
        self.step_events.append(("rxagent.output.retry", attributes, time.time_ns()))

    def _call_started(self, event: ToolCallStarted) -> None:
        self._ensure_run(event.at)
        self.state = self.state.apply(event)
        span = self._tool_span(event.name, event.call_id, event.step, event.at)
        if self.setup.capture_content:
            span.set_attribute("gen_ai.tool.call.arguments", self.setup.json(event.arguments))
        self.tools[event.call_id] = span
        starting = self.setup.starting
        if starting is not None:
            # For tool_context, which starts the call right after this event: per
            # thread, since the two happen in one call on the run's loop thread.
            spans: dict[str, Span] | None = getattr(starting, "spans", None)
            if spans is None:
                spans = starting.spans = {}
            spans[event.call_id] = span

    def _tool_span(self, name: str, call_id: str, step: int, at: float) -> Span:
        setup = self.setup
        attributes = dict(setup.tool_attributes)
        attributes["gen_ai.tool.name"] = name
        attributes["gen_ai.tool.call.id"] = call_id
        attributes["rxagent.step"] = step
        description = setup.descriptions.get(name)
        if description is not None:
            attributes["gen_ai.tool.description"] = description
        return self._start(f"execute_tool {name}", SpanKind.INTERNAL, attributes, at)

    def _call_pending(self, event: ToolCallPending) -> None:
        self.state = self.state.apply(event)

    def _call_ended(self, event: ToolCallEnded) -> None:
        self._ensure_run(event.at)
        self.state = self.state.apply(event)
        if self.awaiting_turn:
            # A resumed turn's calls run first: the provider turn starts after them.
            self.turn_at = max(self.turn_at, event.at)
        span = self._take_tool(event.call_id)
        if span is None:  # never started: refused, unknown tool, arguments that do not fit
            span = self._tool_span(event.name, event.call_id, event.step, event.at)
        self._end_tool(
            span, event.status, _ns(event.at), event.output, event.error, event.error_type
        )

    def _take_tool(self, call_id: str) -> Span | None:
        starting = self.setup.starting
        if starting is not None:
            spans: dict[str, Span] | None = getattr(starting, "spans", None)
            if spans:
                spans.pop(call_id, None)
        return self.tools.pop(call_id, None)

    def _end_tool(
        self,
        span: Span,
        status: ToolCallStatus,
        end: int,
        output: Any = None,
        error: str | None = None,
        error_type: str | None = None,
    ) -> None:
        setup = self.setup
        span.set_attribute("rxagent.tool.call.status", status.value)
        if status is ToolCallStatus.FAILED:
            self._failed(span, error_type or "_OTHER", error)
        if setup.capture_content and status in _ANSWERED:
            span.set_attribute(
                "gen_ai.tool.call.result", setup.json(output if error is None else error)
            )
        span.end(end_time=end)

    def _step_completed(self, event: StepCompleted) -> None:
        self._ensure_run(event.at)
        self.state = self.state.apply(event)
        outcome = event.outcome
        if self.tools:
            # Calls never outlive their step: those still open were stopped with it
            # (a cancellation, or FAIL_FAST after another call failed).
            statuses = {c.id: c.status for c in _calls_of(outcome.messages)}
            end = _ns(outcome.ended_at or event.at)
            for call_id in list(self.tools):
                span = self._take_tool(call_id)
                assert span is not None
                status = statuses.get(call_id, ToolCallStatus.CANCELLED)
                if not status.is_final:
                    status = ToolCallStatus.CANCELLED
                self._end_tool(span, status, end)
        if outcome.error is not None:
            self.failed_step = (event, self.state.phase)
            return
        self._chat(event, self.state.phase)

    def _chat(
        self,
        event: StepCompleted,
        phase: StepPhase | None,
        error_type: str | None = None,
        message: str | None = None,
    ) -> None:
        """The chat span of a step's provider turn, made now that the step is over."""
        outcome = event.outcome
        if self.resumed and self.awaiting_turn and not outcome.streamed_at:
            return  # a resumed turn that paused again, or failed, before asking the model
        setup = self.setup
        attributes = dict(setup.chat_attributes)
        attributes["rxagent.step"] = event.step
        if phase is not None:
            attributes["rxagent.step.phase"] = phase.value
        if outcome.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = (outcome.finish_reason,)
        usage = outcome.usage
        if self.usage_seen or usage.prompt_tokens or usage.completion_tokens:
            attributes.update(_usage(usage))
        if setup.capture_content:
            attributes.update(self._turn_content(event))
        start = self.turn_at if self.resumed else (self.step_at or outcome.started_at)
        span = self._start(setup.chat_name, SpanKind.CLIENT, attributes, start)
        for name, event_attributes, at in self.step_events:
            span.add_event(name, event_attributes, at)
        if error_type is not None:
            self._failed(span, error_type, message)
        span.end(end_time=_ns(outcome.streamed_at or outcome.ended_at or event.at))

    def _turn_content(self, event: StepCompleted) -> dict[str, str]:
        """What the model was sent and what it answered, for a step's chat span."""
        setup = self.setup
        outcome = event.outcome
        before = self.step_input
        if outcome.replaces:
            before = before[: len(before) - outcome.replaces]
        added = list(outcome.messages)
        turn = max(
            (i for i, m in enumerate(added) if isinstance(m, AssistantMessage)), default=None
        )
        if turn is None or (outcome.replaces and turn == 0):
            sent, answer = [*before, *added], None  # no answer came
        else:
            sent, answer = [*before, *added[:turn]], added[turn]
        content = {
            "gen_ai.input.messages": setup.json(
                _messages(with_instructions(sent, setup.instructions))
            )
        }
        if answer is not None:
            reply = _message(answer)
            reply["finish_reason"] = outcome.finish_reason or (
                "error" if outcome.error or outcome.cancelled else "stop"
            )
            content["gen_ai.output.messages"] = setup.json([reply])
        return content

    def _paused(self, event: Paused) -> None:
        self.state = self.state.apply(event)
        self.pause = event.reason

    def _run_completed(self, event: RunCompleted) -> None:
        self.state = self.state.apply(event)
        self._end_run(event.at)

    def _run_failed(self, event: RunFailed) -> None:
        self.state = self.state.apply(event)
        self._end_run(
            event.at,
            event.error_type,
            event.message,
            provider_failed=event.error_type in _provider_errors(),
        )

    # -- the end -----------------------------------------------------------------------
    def _end_run(
        self,
        at: float,
        error_type: str | None = None,
        message: str | None = None,
        *,
        provider_failed: bool = False,
        status_code: int | None = None,
    ) -> None:
        self.over = True
        self._ensure_run(at)
        setup = self.setup
        end = _ns(at)
        if self.failed_step is not None:
            step, phase = self.failed_step
            self.failed_step = None
            if provider_failed:
                self._chat(step, phase, error_type, message)
            else:
                self._chat(step, phase)
        for call_id in list(self.tools):
            span = self._take_tool(call_id)
            assert span is not None
            self._end_tool(span, ToolCallStatus.CANCELLED, end)
        span = self.run_span
        assert span is not None
        state = self.state
        span.set_attribute("rxagent.run.status", state.status.value)
        if state.stop is not None:
            span.set_attribute("rxagent.run.stop_reason", state.stop.value)
        span.set_attribute("rxagent.run.steps", state.steps)
        span.set_attribute("rxagent.run.tool_calls", state.tool_calls)
        usage = state.usage
        if usage.prompt_tokens or usage.completion_tokens:
            span.set_attributes(_usage(usage))
        if self.pause is not None:
            span.set_attribute("rxagent.run.pause.kind", self.pause.kind)
            if self.pause.awaiting_approval:
                span.set_attribute(
                    "rxagent.run.pause.awaiting_approval", self.pause.awaiting_approval
                )
            if self.pause.scheduled:
                span.set_attribute("rxagent.run.pause.scheduled", tuple(self.pause.scheduled))
        if error_type is not None:
            if status_code is not None:
                span.set_attribute("http.response.status_code", status_code)
            self._failed(span, error_type, message)
        if setup.capture_content:
            last = next(
                (m for m in reversed(state.messages) if isinstance(m, AssistantMessage)), None
            )
            if last is not None:
                span.set_attribute("gen_ai.output.messages", setup.json([_message(last)]))
        span.end(end_time=end)


_HANDLERS: dict[type[Any], Callable[[_RunSpans, Any], None]] = {
    RunStarted: _RunSpans._run_started,
    StepStarted: _RunSpans._step_started,
    UsageDelta: _RunSpans._usage,
    StepRetry: _RunSpans._step_retry,
    OutputRetry: _RunSpans._output_retry,
    ToolCallStarted: _RunSpans._call_started,
    ToolCallPending: _RunSpans._call_pending,
    ToolCallEnded: _RunSpans._call_ended,
    StepCompleted: _RunSpans._step_completed,
    Paused: _RunSpans._paused,
    RunCompleted: _RunSpans._run_completed,
    RunFailed: _RunSpans._run_failed,
}

#: Calls whose result (or error, or refusal) went back to the model.
_ANSWERED = frozenset({ToolCallStatus.COMPLETED, ToolCallStatus.FAILED, ToolCallStatus.REJECTED})


# -- tool context ------------------------------------------------------------------------
class _Current:
    """Makes a span the current one (in this context) while entered."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.token: object = None

    def __enter__(self) -> Span:
        self.token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, *_: object) -> None:
        otel_context.detach(self.token)  # type: ignore[arg-type]


def _tool_context(starting: threading.local) -> ToolContext:
    """Enter a call's ``execute_tool`` span (left by its ``ToolCallStarted``) around its start."""

    def enter(call: ToolCall) -> AbstractContextManager[Any]:
        spans: dict[str, Span] | None = getattr(starting, "spans", None)
        span = spans.pop(call.id, None) if spans else None
        return nullcontext() if span is None else _Current(span)

    return enter


def _chained(first: ToolContext, then: ToolContext | None) -> ToolContext:
    if then is None:
        return first

    def enter(call: ToolCall) -> AbstractContextManager[Any]:
        stack = ExitStack()
        with stack:
            stack.enter_context(first(call))
            stack.enter_context(then(call))
            return stack.pop_all()

    return enter


# -- helpers -----------------------------------------------------------------------------
def _ns(at: float) -> int:
    return int(at * 1e9)


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
    }


def _str_attr(obj: object, name: str) -> str | None:
    value = getattr(obj, name, None)
    return value if isinstance(value, str) and value else None


def _server(base_url: str | None) -> dict[str, Any]:
    """``server.address`` and ``server.port`` of a URL: its host and port, nothing else
    (never its user info, path or query, where a key may hide)."""
    if base_url is None:
        return {}
    try:
        parts = urlsplit(base_url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return {}
    if not host:
        return {}
    if port is None:
        port = {"https": 443, "http": 80}.get(parts.scheme)
    return {"server.address": host} | ({"server.port": port} if port is not None else {})


def _calls_of(messages: Iterable[Message]) -> Iterable[ToolCall]:
    for message in messages:
        if isinstance(message, AssistantMessage):
            yield from message.tool_calls


def _provider_errors() -> frozenset[str]:
    """The class names of ``ProviderError`` and its subclasses (for ``RunFailed`` events,
    which name their error's class)."""
    names: set[str] = set()
    pending: list[type[BaseException]] = [ProviderError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return frozenset(names)


def _messages(messages: Iterable[Message]) -> list[dict[str, Any]]:
    return [_message(m) for m in messages]


def _message(message: Message) -> dict[str, Any]:
    """A message in the conventions' input/output messages form (role and parts)."""
    parts: list[dict[str, Any]] = []
    if isinstance(message, AssistantMessage):
        if message.reasoning:
            parts.append({"type": "reasoning", "content": message.reasoning})
        if message.content:
            parts.append({"type": "text", "content": message.content})
        for call in message.tool_calls:
            parts.append(
                {
                    "type": "tool_call",
                    "id": call.id,
                    "name": call.name,
                    "arguments": _json_or_text(call.arguments),
                }
            )
    elif isinstance(message, ToolMessage):
        parts.append(
            {"type": "tool_call_response", "id": message.tool_call_id, "result": message.content}
        )
    elif isinstance(message, SystemMessage) or isinstance(message.content, str):
        parts.append({"type": "text", "content": message.content})
    else:
        for part in message.content:
            if part.get("type") == "text":
                parts.append({"type": "text", "content": part.get("text", "")})
            else:  # an image, a file, audio: its kind, not its bytes
                parts.append({"type": str(part.get("type", "unknown"))})
    return {"role": message.role, "parts": parts}


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
