"""``step``: one provider turn plus the tools it calls."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from reactivex import Observable, abc
from reactivex import operators as rx_ops
from reactivex.disposable import CompositeDisposable
from reactivex.subject import Subject

from rxagent.errors import AgentError, ProviderError
from rxagent.events import (
    AgentEvent,
    AgentRun,
    ReasoningDelta,
    StepCompleted,
    StepRetry,
    StepStarted,
    Structured,
    TextDelta,
    ToolCallEnded,
    ToolCallStarted,
    UsageDelta,
)
from rxagent.messages import (
    AssistantMessage,
    Conversation,
    ConversationInput,
    Message,
    SystemMessage,
    ToolCall,
    ToolCallStatus,
    ToolMessage,
    Usage,
)
from rxagent.ops._fan_out import fan_out_tools
from rxagent.policies import StepOutcome, StopReason
from rxagent.providers.base import Finish, Provider, ProviderChunk, ProviderRequest, ToolCallReady
from rxagent.tools import JoinPolicy, Tool, ToolRegistry, output_text

__all__ = ["StepConfig", "step", "with_instructions"]


@dataclass(frozen=True)
class StepConfig:
    """Everything a step needs besides the conversation."""

    provider: Provider
    registry: ToolRegistry = field(default_factory=ToolRegistry)
    instructions: str | None = None
    max_tool_concurrency: int | None = None
    join: JoinPolicy = JoinPolicy.REPORT_TO_MODEL
    options: Mapping[str, Any] = field(default_factory=dict)
    tool_timeout: float | None = None
    executor: Executor | None = None
    #: When this emits, the step stops and completes with a cancelled outcome.
    cancel: Observable[Any] | None = None


def step(
    provider: Provider,
    *,
    tools: ToolRegistry | Iterable[Tool[..., Any] | Callable[..., Any]] = (),
    instructions: str | None = None,
    max_tool_concurrency: int | None = None,
    join: JoinPolicy = JoinPolicy.REPORT_TO_MODEL,
    options: Mapping[str, Any] | None = None,
    tool_timeout: float | None = None,
    executor: Executor | None = None,
    cancel: Observable[Any] | None = None,
    first_step: int = 1,
) -> Callable[[Observable[ConversationInput]], Observable[AgentEvent]]:
    """Run one step for each conversation that arrives: a provider turn and its tools.

    Every provider chunk is forwarded the moment it arrives. A tool call starts
    as soon as its arguments are complete, while the model may still be
    streaming later calls (see :func:`fan_out_tools`). The step ends with
    ``StepCompleted(outcome)`` once the stream has ended and every call has
    ended; ``outcome.messages`` holds the assistant message and the tool
    messages in call order::

        conversation: --c-----------------------------------
        result:       --StepStarted-TextDelta*-ToolArgsDelta*-ToolCallStarted
                        -...-ToolCallEnded-StepCompleted-|

    Conversations arriving while a step runs wait their turn; steps are numbered
    from ``first_step``. ``instructions`` go to the model as the first system
    message (replacing a system message the conversation has) but are not
    added to the conversation. When ``cancel`` emits, the provider stream and
    the running tools stop and the step completes with ``outcome.cancelled``.
    A failure is an ``AgentError`` whose ``partial`` run holds the
    conversation so far (assistant text streamed, calls marked failed or
    cancelled), so it still validates.
    """
    config = StepConfig(
        provider=provider,
        registry=tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools),
        instructions=instructions,
        max_tool_concurrency=max_tool_concurrency,
        join=join,
        options=dict(options or {}),
        tool_timeout=tool_timeout,
        executor=executor,
        cancel=cancel,
    )
    if max_tool_concurrency is not None and max_tool_concurrency < 1:
        raise ValueError(
            f"max_tool_concurrency must be None or at least 1, got {max_tool_concurrency}"
        )

    def operator(source: Observable[ConversationInput]) -> Observable[AgentEvent]:
        def subscribe(
            observer: abc.ObserverBase[AgentEvent], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            numbers = itertools.count(first_step)

            def one(conversation: ConversationInput) -> Observable[AgentEvent]:
                number = next(numbers)

                def run(
                    obs: abc.ObserverBase[AgentEvent], _: abc.SchedulerBase | None = None
                ) -> abc.DisposableBase:
                    return _Step(config, Conversation.of(conversation), number, obs).start()

                return Observable(run)

            return source.pipe(rx_ops.map(one), rx_ops.merge(max_concurrent=1)).subscribe(
                observer, scheduler=scheduler
            )

        return Observable(subscribe)

    return operator


def with_instructions(messages: Iterable[Message], instructions: str | None) -> list[Message]:
    """``messages`` with ``instructions`` as the first system message (replacing one)."""
    out = list(messages)
    if instructions is None:
        return out
    for i, m in enumerate(out):
        if isinstance(m, SystemMessage):
            del out[i]
            break
    out.insert(0, SystemMessage(content=instructions))
    return out


class _Step:
    """The state of one running step."""

    def __init__(
        self,
        config: StepConfig,
        conversation: Conversation,
        number: int,
        observer: abc.ObserverBase[AgentEvent],
    ) -> None:
        self.config = config
        self.conversation = conversation
        self.number = number
        self.observer = observer
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.structured: list[Any] = []
        self.usage = Usage()
        self.calls: list[ToolCall] = []
        self.call_ids: set[str] = set()
        self.started: set[str] = set()
        self.ended: dict[str, ToolCallEnded] = {}
        self.finish_reason: str | None = None
        self.provider_done = False
        self.tools_done = False
        self.finished = False
        self.calls_subject: Subject[ToolCall] = Subject()
        self.disposables = CompositeDisposable()
        self.started_at = time.time()
        self.streamed_at = 0.0

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> abc.DisposableBase:
        config = self.config
        self.observer.on_next(StepStarted(step=self.number, at=self.started_at))
        fan = self.calls_subject.pipe(
            fan_out_tools(
                config.registry,
                max_concurrent=config.max_tool_concurrency,
                join=config.join,
                step=self.number,
                timeout=config.tool_timeout,
                executor=config.executor,
            )
        )
        self.disposables.add(fan.subscribe(self._on_tool_event, self._fail, self._on_tools_done))
        if config.cancel is not None:
            self.disposables.add(config.cancel.subscribe(lambda _: self._cancel()))
        if not self.finished:
            request = ProviderRequest(
                messages=tuple(with_instructions(self.conversation, config.instructions)),
                tools=config.registry.specs,
                options=config.options,
                step=self.number,
            )
            try:
                stream = config.provider.stream(request)
            except Exception as error:
                self._on_provider_error(error)
            else:
                self.disposables.add(
                    stream.subscribe(
                        self._on_chunk, self._on_provider_error, self._on_provider_done
                    )
                )
        return self.disposables

    def _on_chunk(self, chunk: ProviderChunk) -> None:
        if self.finished:
            return
        kind = type(chunk)
        if kind is TextDelta:
            self.text.append(chunk.text)  # type: ignore[union-attr]
        elif kind is ToolCallReady:
            self._dispatch(chunk)  # type: ignore[arg-type]
            return
        elif kind is UsageDelta:
            self.usage = self.usage + Usage(
                prompt_tokens=chunk.prompt_tokens,  # type: ignore[union-attr]
                completion_tokens=chunk.completion_tokens,  # type: ignore[union-attr]
            )
        elif kind is Finish:
            self.finish_reason = chunk.reason  # type: ignore[union-attr]
            return
        elif kind is ReasoningDelta:
            self.reasoning.append(chunk.text)  # type: ignore[union-attr]
        elif kind is Structured:
            if not chunk.partial:  # type: ignore[union-attr]
                self.structured.append(chunk.value)  # type: ignore[union-attr]
        elif kind is StepRetry:
            # The provider starts the turn again: what it streamed so far is void.
            self.text.clear()
            self.reasoning.clear()
            self.structured.clear()
        self.observer.on_next(chunk)  # type: ignore[arg-type]

    def _dispatch(self, ready: ToolCallReady) -> None:
        call_id = ready.call_id
        if not call_id or call_id in self.call_ids:
            # Some OpenAI-compatible servers send empty or repeated ids; the
            # conversation needs unique ones.
            call_id = f"call_{self.number}_{len(self.calls) + 1}"
            while call_id in self.call_ids:
                call_id += "_"
        self.call_ids.add(call_id)
        call = ToolCall(
            id=call_id, name=ready.name, arguments=ready.arguments, status=ToolCallStatus.RUNNING
        )
        self.calls.append(call)
        self.calls_subject.on_next(call)

    def _on_provider_done(self) -> None:
        self.streamed_at = time.time()
        self.provider_done = True
        self.calls_subject.on_completed()
        self._maybe_finish()

    def _on_provider_error(self, error: Exception) -> None:
        if not isinstance(error, AgentError):
            wrapped = ProviderError(f"the provider failed: {type(error).__name__}: {error}")
            wrapped.__cause__ = error
            error = wrapped
        self._fail(error)

    def _on_tool_event(self, event: AgentEvent) -> None:
        if self.finished:
            return
        if isinstance(event, ToolCallEnded):
            self.ended[event.call_id] = event
        elif isinstance(event, ToolCallStarted):
            self.started.add(event.call_id)
        self.observer.on_next(event)

    def _on_tools_done(self) -> None:
        self.tools_done = True
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.finished or not (self.provider_done and self.tools_done):
            return
        self.finished = True
        self.disposables.dispose()
        outcome = self._outcome(cancelled=False)
        self.observer.on_next(StepCompleted(step=self.number, outcome=outcome, at=outcome.ended_at))
        self.observer.on_completed()

    def _cancel(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.disposables.dispose()
        outcome = self._outcome(cancelled=True)
        self.observer.on_next(StepCompleted(step=self.number, outcome=outcome, at=outcome.ended_at))
        self.observer.on_completed()

    def _fail(self, error: Exception) -> None:
        if self.finished:
            return
        self.finished = True
        self.disposables.dispose()
        if isinstance(error, AgentError):
            outcome = self._outcome(cancelled=True)
            error.partial = AgentRun(
                messages=self.conversation + outcome.messages,
                steps=self.number,
                stop=StopReason.ERROR,
                usage=self.usage,
                tool_calls=len(self.calls),
            )
        self.observer.on_error(error)

    # -- the outcome ------------------------------------------------------------------
    def _outcome(self, *, cancelled: bool) -> StepOutcome:
        """What the step did; with ``cancelled``, calls that did not end are cancelled."""
        calls = tuple(self._final_call(c) for c in self.calls)
        text = "".join(self.text)
        messages: list[Message] = []
        if calls or text or self.reasoning or self.structured or not cancelled:
            messages.append(
                AssistantMessage(
                    content=text or (None if calls else ""),
                    tool_calls=calls,
                    reasoning="".join(self.reasoning) or None,
                    structured=tuple(self.structured),
                )
            )
        for c in calls:
            end = self.ended.get(c.id)
            if end is None:
                messages.append(
                    ToolMessage(
                        tool_call_id=c.id,
                        content="Cancelled: the call was stopped before it finished.",
                        is_error=True,
                    )
                )
            elif end.error is not None:
                messages.append(
                    ToolMessage(tool_call_id=c.id, content=f"Error: {end.error}", is_error=True)
                )
            else:
                messages.append(ToolMessage(tool_call_id=c.id, content=output_text(end.output)))
        now = time.time()
        return StepOutcome(
            step=self.number,
            messages=tuple(messages),
            usage=self.usage,
            tool_calls=calls,
            invoked_tools=tuple(c.name for c in calls if c.id in self.started),
            finish_reason=self.finish_reason,
            cancelled=cancelled and not (self.provider_done and self.tools_done),
            started_at=self.started_at,
            streamed_at=self.streamed_at or now,
            ended_at=now,
        )

    def _final_call(self, call: ToolCall) -> ToolCall:
        end = self.ended.get(call.id)
        if end is None:
            status = ToolCallStatus.CANCELLED
        elif end.error is None:
            status = ToolCallStatus.COMPLETED
        else:
            status = ToolCallStatus.FAILED
        return call.with_status(status)
