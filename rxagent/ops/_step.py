"""``step``: one provider turn plus the tools it calls (and the resumption of a paused turn)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, TypeVar

import reactivex as rx
from reactivex import Observable, abc
from reactivex import operators as rx_ops
from reactivex.disposable import CompositeDisposable
from reactivex.subject import Subject

from rxagent.aio import from_async_iterable, running_loop
from rxagent.errors import AgentError, ApprovalError, OutputValidationError, ProviderError
from rxagent.events import (
    AgentEvent,
    AgentRun,
    OutputRetry,
    ReasoningDelta,
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
    Conversation,
    ConversationInput,
    Message,
    OpenTurn,
    SystemMessage,
    ToolCall,
    ToolCallStatus,
    ToolMessage,
    Usage,
)
from rxagent.ops._fan_out import ToolContext, fan_out_tools
from rxagent.output import _NOTHING, OutputInvalid, OutputSpec, grows
from rxagent.policies import PauseReason, StepOutcome, StopReason
from rxagent.providers.base import Finish, Provider, ProviderChunk, ProviderRequest, ToolCallReady
from rxagent.state import StepPhase
from rxagent.tools import JoinPolicy, ToolRegistry, ToolsInput, output_text

__all__ = ["BeforeHook", "StepConfig", "step", "steps_of", "with_instructions"]

#: Rewrites the messages of each provider request (sync or async); ``None`` keeps them.
BeforeHook: TypeAlias = Callable[
    [list[Message]], "Sequence[Message] | Awaitable[Sequence[Message] | None] | None"
]


@dataclass(frozen=True)
class StepConfig:
    """Everything a step needs besides the conversation: the one options object.

    ``Agent`` makes one when it is made and hands it down whole (a run only adds
    its cancellation signal), so no option is passed by hand from layer to layer.
    """

    provider: Provider
    registry: ToolRegistry = field(default_factory=ToolRegistry)
    instructions: str | None = None
    max_tool_concurrency: int | None = None
    join: JoinPolicy = JoinPolicy.REPORT_TO_MODEL
    #: Request options sent with every request (with ``response_format`` for ``output``).
    options: Mapping[str, Any] = field(default_factory=dict)
    tool_timeout: float | None = None
    executor: Executor | None = None
    #: When this emits, the step stops and completes with a cancelled outcome. It
    #: should replay a past emission to a late subscriber (as a run's latch does).
    cancel: Observable[Any] | None = None
    output: OutputSpec | None = None
    before: BeforeHook | None = None
    #: The clock of tool timeouts (``None``: the asyncio event loop's).
    scheduler: abc.SchedulerBase | None = None
    #: Entered around starting each tool call (see :func:`fan_out_tools`).
    tool_context: ToolContext | None = None

    @classmethod
    def make(
        cls,
        provider: Provider,
        *,
        tools: ToolRegistry | ToolsInput = (),
        instructions: str | None = None,
        max_tool_concurrency: int | None = None,
        join: JoinPolicy = JoinPolicy.REPORT_TO_MODEL,
        options: Mapping[str, Any] | None = None,
        tool_timeout: float | None = None,
        executor: Executor | None = None,
        cancel: Observable[Any] | None = None,
        output: OutputSpec | None = None,
        before: BeforeHook | None = None,
        scheduler: abc.SchedulerBase | None = None,
        tool_context: ToolContext | None = None,
    ) -> StepConfig:
        """A checked config (a bad value is an error here, not in the middle of a run)."""
        if not callable(getattr(provider, "stream", None)):
            raise TypeError(f"provider must have a stream(request) method, got {provider!r}")
        if max_tool_concurrency is not None and max_tool_concurrency < 1:
            raise ValueError(
                f"max_tool_concurrency must be None or at least 1, got {max_tool_concurrency}"
            )
        if tool_timeout is not None and tool_timeout <= 0:
            raise ValueError(f"tool_timeout must be positive, got {tool_timeout!r}")
        request_options = dict(options or {})
        if output is not None:
            request_options.setdefault("response_format", output.response_format)
        return cls(
            provider=provider,
            registry=tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools),
            instructions=instructions,
            max_tool_concurrency=max_tool_concurrency,
            join=JoinPolicy(join),
            options=request_options,
            tool_timeout=tool_timeout,
            executor=executor,
            cancel=cancel,
            output=output,
            before=before,
            scheduler=scheduler,
            tool_context=tool_context,
        )


def step(
    provider: Provider,
    *,
    tools: ToolRegistry | ToolsInput = (),
    instructions: str | None = None,
    max_tool_concurrency: int | None = None,
    join: JoinPolicy = JoinPolicy.REPORT_TO_MODEL,
    options: Mapping[str, Any] | None = None,
    tool_timeout: float | None = None,
    executor: Executor | None = None,
    cancel: Observable[Any] | None = None,
    output: OutputSpec | None = None,
    before: BeforeHook | None = None,
    scheduler: abc.SchedulerBase | None = None,
    first_step: int = 1,
    config: StepConfig | None = None,
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
    added to the conversation; ``before`` may rewrite each request's messages
    (trim, inject context) without touching the conversation either.

    Human in the loop: calls that need approval or are deferred emit
    ``ToolCallPending`` and do not run; the others do, and the outcome's
    ``pause`` says what waits. A conversation whose last turn has such calls
    (approved, rejected, or still pending) is resumed first: approved and due
    calls run, rejections are answered, and only when nothing waits any more
    does the provider turn follow (``outcome.replaces`` then says which
    messages the rewritten turn replaces).

    ``output`` makes the final answer structured: partial parses stream as
    ``Structured(partial=True)``, the validated value as ``Structured`` and in
    ``outcome.output``; an answer that does not fit is sent back with the errors
    (``OutputRetry``), up to ``output.retries`` times, then fails the step with
    ``OutputValidationError``.

    When ``cancel`` emits, the provider stream and the running tools stop and
    the step completes with ``outcome.cancelled``. A failure is an
    ``AgentError`` whose ``partial`` run holds the conversation so far
    (assistant text streamed, calls marked failed or cancelled), so it still
    validates.
    (assistant text streamed, calls marked failed or cancelled), so it still
    validates; a failing step first emits ``StepCompleted`` whose outcome is
    that partial step, with ``outcome.error`` set.

    ``config`` (a :class:`StepConfig`) gives every option at once, in place of
    the keyword arguments; ``scheduler`` is the clock of tool timeouts.
    """
    if config is None:
        config = StepConfig.make(
            provider,
            tools=tools,
            instructions=instructions,
            max_tool_concurrency=max_tool_concurrency,
            join=join,
            options=options,
            tool_timeout=tool_timeout,
            executor=executor,
            cancel=cancel,
            output=output,
            before=before,
            scheduler=scheduler,
        )
    return steps_of(config, first_step)


def steps_of(
    config: StepConfig, first_step: int = 1
) -> Callable[[Observable[ConversationInput]], Observable[AgentEvent]]:
    """:func:`step` with its options as one :class:`StepConfig`."""

    def operator(source: Observable[ConversationInput]) -> Observable[AgentEvent]:
        def subscribe(
            observer: abc.ObserverBase[AgentEvent], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            numbers = itertools.count(first_step)
            shared = _Shared()

            def one(conversation: ConversationInput) -> Observable[AgentEvent]:
                number = next(numbers)

                def run(
                    obs: abc.ObserverBase[AgentEvent], _: abc.SchedulerBase | None = None
                ) -> abc.DisposableBase:
                    return _Step(config, Conversation.of(conversation), number, obs, shared).start()

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


@dataclass
class _Shared:
    """State the steps of one subscription share."""

    output_attempts: int = 0


class _ProviderObserver(abc.ObserverBase[ProviderChunk]):
    """The step's observer of its provider stream, on the event loop whatever thread the
    provider emits from (a blocking client's, say): observers and tools live there."""

    __slots__ = ("loop", "step")

    def __init__(self, step: _Step, loop: asyncio.AbstractEventLoop | None) -> None:
        self.step = step
        self.loop = loop

    def _here(self) -> bool:
        return self.loop is None or running_loop() is self.loop

    def on_next(self, value: ProviderChunk) -> None:
        if self._here():
            self.step._on_chunk(value)
        else:
            self.loop.call_soon_threadsafe(self.step._on_chunk, value)  # type: ignore[union-attr]

    def on_error(self, error: Exception) -> None:
        if self._here():
            self.step._on_provider_error(error)
        else:
            self.loop.call_soon_threadsafe(self.step._on_provider_error, error)  # type: ignore[union-attr]

    def on_completed(self) -> None:
        if self._here():
            self.step._on_provider_done()
        else:
            self.loop.call_soon_threadsafe(self.step._on_provider_done)  # type: ignore[union-attr]


_F = TypeVar("_F", bound=Callable[..., None])


def _guarded(method: _F) -> _F:
    """A callback of the step that fails the step, rather than raising, on any exception.

    The step's callbacks are called by Rx sources (the provider stream, the tools,
    the cancel signal, an asyncio task); an exception escaping them would be lost
    in the source ("Task exception was never retrieved") and leave the run
    waiting forever. Here it fails the step with an ``AgentError`` carrying the
    partial run.
    """

    @functools.wraps(method)
    def guarded(self: _Step, *args: Any) -> None:
        try:
            method(self, *args)
        except Exception as error:
            self._fail(_as_agent_error(error, "the step"))

    return guarded  # type: ignore[return-value]


class _Step:
    """One running step, its life an explicit :class:`~rxagent.state.StepPhase`::

        (start) -> resuming -> streaming -> finishing -> completed
                       |           |            |
                       +-----------+------------+-> cancelled | failed

    ``phase`` is ``None`` until ``StepStarted`` is out; every exit checks that
    the phase is not final yet, so a step ends exactly once.
    """

    def __init__(
        self,
        config: StepConfig,
        conversation: Conversation,
        number: int,
        observer: abc.ObserverBase[AgentEvent],
        shared: _Shared,
    ) -> None:
        self.config = config
        self.conversation = conversation
        self.number = number
        self.observer = observer
        self.shared = shared
        self.phase: StepPhase | None = None
        #: Whether the provider turn began (the outcome then has an assistant message).
        self.turn_began = False
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.structured: list[Any] = []
        self.snapshot: Any = _NOTHING
        self.usage = _NO_USAGE
        #: The paused turn this step resumes, if any.
        self.resumed: OpenTurn | None = None
        #: The calls the model made in this step's turn.
        self.calls: list[ToolCall] = []
        # Ids must stay unique across the whole conversation.
        self.call_ids: set[str] = {c.id for c in conversation.tool_calls()}
        self.started: list[str] = []
        self.ended: dict[str, ToolCallEnded] = {}
        self.pending: dict[str, ToolCallPending] = {}
        self.finish_reason: str | None = None
        #: What the provider asked to keep with the answer (Responses API reasoning items).
        self.provider_data: dict[str, Any] | None = None
        #: (agent name, call id) of the first handoff call that ended well.
        self.handoff: tuple[str, str] | None = None
        #: Provider call ids -> the ids the calls get (unique in the conversation).
        self.open_ids: dict[str, str] = {}
        #: The turn's calls, into the fan-out; made with the first call (most turns of a
        #: run have none, and a fan-out costs five subscriptions).
        self.calls_subject: Subject[ToolCall] | None = None
        self.disposables = CompositeDisposable()
        self.started_at = time.time()
        self.streamed_at = 0.0

    @property
    def over(self) -> bool:
        return self.phase in _OVER

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> abc.DisposableBase:
        self.observer.on_next(StepStarted(step=self.number, at=self.started_at))
        try:
            turn = self.conversation.open_turn()
        except ApprovalError as error:
            self.phase = StepPhase.STREAMING
            self._fail(error)
            return self.disposables
        self.phase = StepPhase.STREAMING if turn is None else StepPhase.RESUMING
        if self.config.cancel is not None:
            # The signal replays a past cancel (it is a latch): one raised before this
            # step, or by an observer of StepStarted, stops the step here.
            self.disposables.add(self.config.cancel.subscribe(lambda _: self._cancel()))
        if self.over:
            return self.disposables
        try:
            if turn is None:
                self._turn()
            else:
                self._resume(turn)
        except Exception as error:
            self._fail(_as_agent_error(error, "the step"))
        return self.disposables

    def _run_tools(self, calls: Observable[ToolCall], on_done: Callable[[], None]) -> None:
        config = self.config
        fan = calls.pipe(
            fan_out_tools(
                config.registry,
                max_concurrent=config.max_tool_concurrency,
                join=config.join,
                step=self.number,
                timeout=config.tool_timeout,
                executor=config.executor,
                scheduler=config.scheduler,
                tool_context=config.tool_context,
            )
        )
        self.disposables.add(fan.subscribe(self._on_tool_event, self._fail, on_done))

    def _resume(self, turn: OpenTurn) -> None:
        """Run the approved and due calls of a paused turn and answer its rejections."""
        self.resumed = turn
        now = time.time()
        ready: list[ToolCall] = []
        for call in turn.unanswered:
            if call.status is not ToolCallStatus.PENDING:
                ready.append(call)  # approved or rejected by a human
            elif call.not_before is not None and call.not_before <= now:
                ready.append(call.with_status(ToolCallStatus.APPROVED))  # its time has come
            else:
                self.pending[call.id] = ToolCallPending(
                    step=self.number,
                    call_id=call.id,
                    name=call.name,
                    arguments=_arguments_of(call),
                    awaiting="approval" if call.not_before is None else "schedule",
                    reason=call.reason,
                    not_before=call.not_before,
                )
        self._run_tools(rx.from_iterable(ready), self._resumed_tools_done)

    @_guarded
    def _resumed_tools_done(self) -> None:
        if self.over:
            return
        if self.pending:
            for event in self.pending.values():
                self.observer.on_next(event)
            self._finish()
        else:
            self.phase = StepPhase.STREAMING
            self._turn()

    def _turn(self) -> None:
        """The provider turn: stream the answer, run its calls as they come."""
        self.turn_began = True
        messages = list(self.conversation)
        if self.resumed is not None:
            messages[self.resumed.index :] = self._resumed_messages()
        messages = with_instructions(messages, self.config.instructions)
        before = self.config.before
        if before is None:
            self._request(messages)
            return
        try:
            rewritten = before(messages)
        except Exception as error:
            self._fail(_hook_error(error))
            return
        if not inspect.isawaitable(rewritten):
            self._request(list(rewritten) if rewritten is not None else messages)
            return
        pending_hook = rewritten

        async def wait() -> AsyncIterator[Sequence[Message] | None]:
            yield await pending_hook

        @_guarded
        def ready(self: _Step, value: Sequence[Message] | None) -> None:
            self._request(list(value) if value is not None else messages)

        self.disposables.add(
            from_async_iterable(wait).subscribe(
                functools.partial(ready, self), lambda e: self._fail(_hook_error(e))
            )
        )

    def _request(self, messages: list[Message]) -> None:
        if self.over:
            return
        config = self.config
        request = ProviderRequest(
            messages=tuple(messages),
            tools=config.registry.specs,
            options=config.options,
            step=self.number,
        )
        try:
            stream = config.provider.stream(request)
        except Exception as error:
            self._on_provider_error(error)
            return
        # A provider should emit on the event loop; one that emits from a thread of its
        # own (a blocking client) is brought back to it, where observers and tools live.
        self.disposables.add(stream.subscribe(_ProviderObserver(self, running_loop())))

    @_guarded
    def _on_chunk(self, chunk: ProviderChunk) -> None:
        if self.over:
            return
        kind = type(chunk)
        if kind is TextDelta:
            self.text.append(chunk.text)  # type: ignore[union-attr]
            if self.config.output is not None:
                self.observer.on_next(chunk)  # type: ignore[arg-type]
                self._stream_snapshot()
                return
        elif kind is ToolCallReady:
            self._dispatch(chunk)  # type: ignore[arg-type]
            return
        elif kind is ToolArgsDelta:
            call_id = self._call_id(chunk.call_id)  # type: ignore[union-attr]
            if call_id != chunk.call_id:  # type: ignore[union-attr]
                chunk = chunk.model_copy(update={"call_id": call_id})  # type: ignore[union-attr]
        elif kind is UsageDelta:
            self.usage = self.usage + Usage(
                prompt_tokens=chunk.prompt_tokens,  # type: ignore[union-attr]
                completion_tokens=chunk.completion_tokens,  # type: ignore[union-attr]
            )
        elif kind is Finish:
            self.finish_reason = chunk.reason  # type: ignore[union-attr]
            data = chunk.data  # type: ignore[union-attr]
            self.provider_data = None if data is None else dict(data)
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
            self.snapshot = _NOTHING
        self.observer.on_next(chunk)  # type: ignore[arg-type]

    def _stream_snapshot(self) -> None:
        """Emit the best parse of the structured answer so far, when it grew."""
        assert self.config.output is not None
        snapshot = self.config.output.parse_partial("".join(self.text))
        if snapshot is _NOTHING or snapshot == self.snapshot or not grows(self.snapshot, snapshot):
            return
        self.snapshot = snapshot
        self.observer.on_next(Structured(step=self.number, value=snapshot, partial=True))

    def _call_id(self, given: str) -> str:
        """The id a call the provider calls ``given`` gets: ``given``, unless it is empty
        or already taken in the conversation (some OpenAI-compatible servers send empty
        or repeated ids; a conversation needs unique ones)."""
        call_id = self.open_ids.get(given)
        if call_id is not None:
            return call_id
        call_id = given
        if not call_id or call_id in self.call_ids:
            call_id = f"call_{self.number}_{len(self.calls) + 1}"
            while call_id in self.call_ids:
                call_id += "_"
        self.call_ids.add(call_id)
        self.open_ids[given] = call_id
        return call_id

    def _dispatch(self, ready: ToolCallReady) -> None:
        call_id = self._call_id(ready.call_id)
        del self.open_ids[ready.call_id]  # the call is complete; the id may come again
        call = ToolCall(
            id=call_id, name=ready.name, arguments=ready.arguments, status=ToolCallStatus.PENDING
        )
        self.calls.append(call)
        if self.calls_subject is None:
            self.calls_subject = Subject()
            self._run_tools(self.calls_subject, self._on_tools_done)
        self.calls_subject.on_next(call)

    @_guarded
    def _on_provider_done(self) -> None:
        if self.over:
            return
        self.streamed_at = time.time()
        self.phase = StepPhase.FINISHING
        if self.calls_subject is None:
            self._finish()  # no calls: nothing to wait for
        else:
            self.calls_subject.on_completed()  # the calls re-join; then _on_tools_done

    @_guarded
    def _on_provider_error(self, error: Exception) -> None:
        if not isinstance(error, AgentError):
            wrapped = ProviderError(f"the provider failed: {type(error).__name__}: {error}")
            wrapped.__cause__ = error
            error = wrapped
        self._fail(error)

    @_guarded
    def _on_tool_event(self, event: AgentEvent) -> None:
        if self.over:
            return
        if isinstance(event, ToolProgress):
            inner = event.innermost
            if isinstance(inner, UsageDelta):
                # A sub-agent's tokens count as this step's: usage and budgets roll up.
                self.usage = self.usage + Usage(
                    prompt_tokens=inner.prompt_tokens, completion_tokens=inner.completion_tokens
                )
        elif isinstance(event, ToolCallEnded):
            self.ended[event.call_id] = event
            if event.status is ToolCallStatus.CANCELLED:
                self.observer.on_next(event)
                self._cancel()  # its other side was cancelled: so is the step
                return
            if event.error is None and self.handoff is None:
                target = getattr(self.config.registry.get(event.name), "handoff_agent", None)
                if target is not None:
                    self.handoff = (str(target.name), event.call_id)
        elif isinstance(event, ToolCallStarted):
            self.started.append(event.call_id)
        elif isinstance(event, ToolCallPending):
            self.pending[event.call_id] = event
        self.observer.on_next(event)

    @_guarded
    def _on_tools_done(self) -> None:
        # The turn's calls complete only after the provider's stream did.
        if self.phase is StepPhase.FINISHING:
            self._finish()

    def _finish(self) -> None:
        if self.over:
            return
        outcome = self._outcome(cancelled=False)
        final_answer = self.turn_began and not self.calls and not self.pending
        if self.config.output is not None and final_answer:
            try:
                outcome = self._checked_output(outcome)
            except OutputValidationError as error:
                self._fail(error)
                return
        self.phase = StepPhase.COMPLETED
        self.disposables.dispose()
        self.observer.on_next(StepCompleted(step=self.number, outcome=outcome, at=outcome.ended_at))
        self.observer.on_completed()

    def _checked_output(self, outcome: StepOutcome) -> StepOutcome:
        """The outcome with the validated answer folded in, or asking the model again."""
        spec = self.config.output
        assert spec is not None
        text = "".join(self.text)
        try:
            if self.structured:
                value, data = spec.validate_data(self.structured[-1])
            else:
                value, data = spec.validate_text(text)
        except OutputInvalid as invalid:
            self.shared.output_attempts += 1
            if self.shared.output_attempts > spec.retries:
                raise OutputValidationError(
                    f"the answer does not fit {spec.name} after {spec.retries} "
                    f"retr{'y' if spec.retries == 1 else 'ies'}: {invalid.errors}",
                    errors=invalid.errors,
                    text=text,
                ) from None
            self.observer.on_next(
                OutputRetry(
                    step=self.number, attempt=self.shared.output_attempts, errors=invalid.errors
                )
            )
            return outcome.model_copy(
                update={
                    "messages": (*outcome.messages, spec.feedback(invalid.errors)),
                    "output_retry": True,
                }
            )
        except Exception as error:
            # A validator of the user's that raised something other than a validation
            # error (a KeyError), an answer nested too deep to parse (RecursionError), ...
            failure = OutputValidationError(
                f"validating the answer against {spec.name} raised {type(error).__name__}: {error}",
                errors=f"{type(error).__name__}: {error}",
                text=text,
            )
            failure.__cause__ = error
            raise failure from error
        self.observer.on_next(Structured(step=self.number, value=data))
        messages = list(outcome.messages)
        for i in range(len(messages) - 1, -1, -1):
            message = messages[i]
            if isinstance(message, AssistantMessage):
                messages[i] = message.model_copy(update={"structured": (data,)})
                break
        return outcome.model_copy(update={"messages": tuple(messages), "output": value})

    def _cancel(self) -> None:
        if self.over:
            return
        self.phase = StepPhase.CANCELLED
        self.disposables.dispose()
        outcome = self._outcome(cancelled=True)
        self.observer.on_next(StepCompleted(step=self.number, outcome=outcome, at=outcome.ended_at))
        self.observer.on_completed()

    def _fail(self, error: Exception) -> None:
        if self.over:
            return
        self.phase = StepPhase.FAILED
        self.disposables.dispose()
        failure = _as_agent_error(error, "the step")
        try:
            outcome = self._outcome(cancelled=True).model_copy(
                update={"error": f"{type(failure).__name__}: {failure.message}"}
            )
            conversation = self.conversation.copy()
            outcome.apply(conversation)
            failure.partial = AgentRun(
                messages=conversation,
                steps=self.number,
                stop=StopReason.ERROR,
                usage=self.usage,
                tool_calls=len(self.calls),
            )
            self.observer.on_next(
                StepCompleted(step=self.number, outcome=outcome, at=outcome.ended_at)
            )
        finally:
            self.observer.on_error(failure)

    # -- the outcome ------------------------------------------------------------------
    def _outcome(self, *, cancelled: bool) -> StepOutcome:
        """What the step did; with ``cancelled``, calls that did not end are cancelled
        (a run that ends other than by pausing leaves no call waiting)."""
        messages: list[Message] = []
        replaces = 0
        if self.resumed is not None:
            messages.extend(self._resumed_messages())
            replaces = len(self.conversation) - self.resumed.index
        calls = tuple(self._final_call(c) for c in self.calls)
        if self.turn_began:
            text = "".join(self.text)
            if calls or text or self.reasoning or self.structured or not cancelled:
                messages.append(
                    AssistantMessage(
                        content=text or (None if calls else ""),
                        tool_calls=calls,
                        reasoning="".join(self.reasoning) or None,
                        structured=tuple(self.structured),
                        provider_data=self.provider_data,
                    )
                )
            messages.extend(self._answers(calls))
        now = time.time()
        names = {c.id: c.name for c in self.calls}
        if self.resumed is not None:
            names.update({c.id: c.name for c in self.resumed.assistant.tool_calls})
        return StepOutcome(
            step=self.number,
            messages=tuple(messages),
            replaces=replaces,
            usage=self.usage,
            tool_calls=calls,
            invoked_tools=tuple(names[i] for i in self.started),
            finish_reason=self.finish_reason,
            cancelled=cancelled,
            pause=None if cancelled else self._pause_reason(),
            started_at=self.started_at,
            streamed_at=self.streamed_at,
            ended_at=now,
            handoff=None if cancelled or self.handoff is None else self.handoff[0],
            handoff_call=None if cancelled or self.handoff is None else self.handoff[1],
        )

    def _resumed_messages(self) -> list[Message]:
        """The resumed turn with its calls' new status, and its answers in call order."""
        turn = self.resumed
        assert turn is not None
        calls = tuple(
            c if c.id in turn.answers else self._final_call(c) for c in turn.assistant.tool_calls
        )
        out: list[Message] = [turn.assistant.model_copy(update={"tool_calls": calls})]
        for call in calls:
            answer = turn.answers.get(call.id)
            if answer is not None:
                out.append(answer)
            else:
                out.extend(self._answers((call,)))
        return out

    def _answers(self, calls: Iterable[ToolCall]) -> list[ToolMessage]:
        """The tool messages for ``calls`` (none for a call that still waits)."""
        out: list[ToolMessage] = []
        for c in calls:
            end = self.ended.get(c.id)
            if c.status is ToolCallStatus.PENDING:
                continue
            if end is None:
                out.append(
                    ToolMessage(
                        tool_call_id=c.id,
                        content="Cancelled: the call was stopped before it finished.",
                        is_error=True,
                    )
                )
            elif end.status is ToolCallStatus.REJECTED:
                out.append(ToolMessage(tool_call_id=c.id, content=end.error or "", is_error=True))
            elif end.error is not None:
                out.append(
                    ToolMessage(tool_call_id=c.id, content=f"Error: {end.error}", is_error=True)
                )
            else:
                out.append(ToolMessage(tool_call_id=c.id, content=output_text(end.output)))
        return out

    def _final_call(self, call: ToolCall) -> ToolCall:
        pending = self.pending.get(call.id)
        if pending is not None and self.phase not in _STOPPED:
            return call.model_copy(
                update={
                    "status": ToolCallStatus.PENDING,
                    "reason": pending.reason,
                    "not_before": pending.not_before,
                }
            )
        end = self.ended.get(call.id)
        if end is None:
            return call.with_status(ToolCallStatus.CANCELLED)
        if end.status is ToolCallStatus.REJECTED:
            reason = end.error.removeprefix("Rejected: ") if end.error else None
            return call.model_copy(update={"status": end.status, "reason": reason})
        return call.with_status(end.status)

    def _pause_reason(self) -> PauseReason | None:
        if not self.pending:
            return None
        awaiting = tuple(i for i, p in self.pending.items() if p.awaiting == "approval")
        scheduled = {
            i: p.not_before or 0.0 for i, p in self.pending.items() if p.awaiting == "schedule"
        }
        kind: Literal["awaiting_approval", "scheduled", "mixed"] = (
            "mixed" if awaiting and scheduled else "scheduled" if scheduled else "awaiting_approval"
        )
        return PauseReason(kind=kind, awaiting_approval=awaiting, scheduled=scheduled)


_STOPPED = (StepPhase.CANCELLED, StepPhase.FAILED)
_NO_USAGE = Usage()
_OVER = frozenset({StepPhase.COMPLETED, StepPhase.CANCELLED, StepPhase.FAILED})


def _arguments_of(call: ToolCall) -> dict[str, Any]:
    try:
        parsed = call.parsed_arguments()
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _as_agent_error(error: Exception, where: str) -> AgentError:
    """``error`` as an ``AgentError`` (wrapped, its cause kept, when it is not one)."""
    if isinstance(error, AgentError):
        return error
    wrapped = AgentError(f"{where} raised {type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped


def _hook_error(error: Exception) -> AgentError:
    wrapped = AgentError(f"the before hook raised {type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped
