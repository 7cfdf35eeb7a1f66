"""Agent, Run and collect_final: the sugar over the operators, and one run's many observers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import inspect
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from concurrent.futures import Executor
from typing import Any

from reactivex import Observable, abc
from reactivex import operators as rx_ops
from reactivex.disposable import Disposable

from rxagent.aio import (
    DirectObservable,
    call_on,
    current_loop,
    from_async_iterable,
    running_loop,
    to_async_iterable,
)
from rxagent.errors import AgentError, ApprovalError, ToolArgumentsError
from rxagent.events import AgentEvent, AgentRun, RunCompleted, RunStarted
from rxagent.messages import (
    AssistantMessage,
    Conversation,
    ConversationInput,
    ToolCallStatus,
    ToolMessage,
)
from rxagent.ops._collect import missing_end
from rxagent.ops._fan_out import ToolContext
from rxagent.ops._step import BeforeHook, StepConfig
from rxagent.ops._until import run_steps
from rxagent.output import OutputSpec
from rxagent.policies import Policy, StopReason, max_steps, until_no_tool_calls
from rxagent.providers.base import Provider
from rxagent.state import RunState
from rxagent.subagents import agent_tool
from rxagent.tools import JoinPolicy, Tool, ToolRegistry, ToolsInput

__all__ = ["DEFAULT_POLICY", "AfterHook", "Agent", "Run", "collect_final"]

#: Sees each finished run (sync or async).
AfterHook = Callable[[AgentRun], "Awaitable[None] | None"]

log = logging.getLogger("rxagent")

#: The policy of an agent given none: stop at the model's final answer, or after 10 steps.
DEFAULT_POLICY = until_no_tool_calls() | max_steps(10)


class Agent:
    """A model, its tools and a stop policy; ``run(input)`` starts a :class:`Run`.

    ``instructions`` go to the model as the first system message of every
    request. ``max_tool_concurrency`` bounds how many tool calls of one step run
    at once (``None``: no bound; ``1``: one after another). ``join`` says what
    failing tool calls do (see :class:`~rxagent.tools.JoinPolicy`); the
    default reports them to the model, which can then recover. ``tool_timeout``
    (seconds) applies to tools without a timeout of their own. ``options`` go
    to the provider with every request, unchanged.

    ``tools`` may mix tools, plain functions and :class:`~rxagent.tools.Toolset`
    groups (with their approval strategies); a name held twice is an error here.

    ``output_type`` (a pydantic model, or any type a ``TypeAdapter`` takes) makes
    the final answer structured: the model is asked for JSON of that schema,
    partial parses stream as ``Structured(partial=True)`` events, and
    ``result.output`` is the validated value. An answer that does not fit goes
    back to the model with the errors, up to ``output_retries`` times (each an
    ``OutputRetry`` event); past that the run fails with ``OutputValidationError``.

    ``tool_context(call)`` (a function returning a context manager) is entered
    around starting each tool call, so the context variables it sets reach the tool,
    in its task or its worker thread: how tracing (``rxagent.otel``) makes a tool's
    own spans children of its ``execute_tool`` span.

    ``run_operator`` (an operator on a run's events) is applied to each run's events
    before they are shared: it sees every run once, however many observe it (how
    ``rxagent.otel.instrument`` makes one trace per run).

    ``before(messages)`` may rewrite the messages of each provider request (trim,
    inject context) and ``after(run)`` sees each finished run (log, store); both
    are plain functions or coroutine functions. ``before`` changes what is sent,
    never the conversation; an ``after`` that raises is logged, and the run still
    completes; an async ``after`` is awaited before ``RunCompleted`` is emitted.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        tools: ToolsInput = (),
        instructions: str | None = None,
        policy: Policy | None = None,
        max_tool_concurrency: int | None = None,
        join: JoinPolicy = JoinPolicy.REPORT_TO_MODEL,
        tool_timeout: float | None = None,
        options: Mapping[str, Any] | None = None,
        executor: Executor | None = None,
        output_type: Any = None,
        output_retries: int = 1,
        before: BeforeHook | None = None,
        after: AfterHook | None = None,
        name: str | None = None,
        scheduler: abc.SchedulerBase | None = None,
        tool_context: ToolContext | None = None,
        run_operator: Callable[[Observable[AgentEvent]], Observable[AgentEvent]] | None = None,
    ) -> None:
        #: The agent's name (for sub-agents, handoffs and logs); ``None`` when unnamed.
        self.name = name
        #: Every option of a step, in one object handed down whole.
        self.config = StepConfig.make(
            provider,
            tools=tools,
            instructions=instructions,
            max_tool_concurrency=max_tool_concurrency,
            join=join,
            options=options,
            tool_timeout=tool_timeout,
            executor=executor,
            output=(
                OutputSpec(output_type, retries=output_retries) if output_type is not None else None
            ),
            before=before,
            scheduler=scheduler,
            tool_context=tool_context,
        )
        self.policy = policy or DEFAULT_POLICY
        self.after = after
        #: The clock of tool timeouts and of the run's time budget (default: asyncio's).
        self.scheduler = scheduler
        #: Applied to each run's events before they are shared (``None``: nothing).
        self.run_operator = run_operator

    # The options, as attributes (read-only: make a new Agent to change one).
    @property
    def provider(self) -> Provider:
        return self.config.provider

    @property
    def tools(self) -> ToolRegistry:
        return self.config.registry

    @property
    def instructions(self) -> str | None:
        return self.config.instructions

    @property
    def max_tool_concurrency(self) -> int | None:
        return self.config.max_tool_concurrency

    @property
    def join(self) -> JoinPolicy:
        return self.config.join

    @property
    def tool_timeout(self) -> float | None:
        return self.config.tool_timeout

    @property
    def output(self) -> OutputSpec | None:
        return self.config.output

    @property
    def before(self) -> BeforeHook | None:
        return self.config.before

    def as_tool(self, name: str | None = None, description: str | None = None) -> Tool[..., Any]:
        """This agent as a tool another agent calls with ``input`` (a task, a question).

        The sub-run's events reach the caller's stream as they happen, each as a
        ``ToolProgress`` whose ``event`` is the nested event (``depth`` says how deep);
        its final text, or structured output, is the tool's output; its tokens count
        in the caller's usage and budgets; cancelling either run cancels the other. A
        sub-agent that pauses for approval is refused with a clear error (see
        :func:`rxagent.subagents.agent_tool`). ``name`` defaults to the agent's name.
        """
        return agent_tool(self, name=name, description=description)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<Agent{label} on {self.provider!r} with {len(self.tools)} tool(s)>"

    def operator(
        self, *, cancel: Observable[Any] | None = None, interrupt: Callable[[], None] | None = None
    ) -> Callable[[Observable[ConversationInput]], Observable[AgentEvent]]:
        """The agent as an operator from conversations to run events (not multicast).

        ``cancel`` stops the step under way when it emits (it should replay a past
        emission, as a latch); ``interrupt`` fires it, which lets a time budget
        (``max_time``) cut a step short at its deadline.
        """

        def one(conversation: ConversationInput) -> Observable[AgentEvent]:
            return self._events(conversation, cancel, interrupt)

        def operator(source: Observable[ConversationInput]) -> Observable[AgentEvent]:
            return source.pipe(rx_ops.map(one), rx_ops.merge(max_concurrent=1))

        return operator

    def _events(
        self,
        conversation: ConversationInput,
        cancel: Observable[Any] | None,
        interrupt: Callable[[], None] | None,
        current: Agent | None = None,
    ) -> Observable[AgentEvent]:
        """One run's events on ``conversation`` (cold, not multicast).

        A conversation whose history handed off to other agents goes on with the last
        of them (``current``, found here when not given: its config), under this
        agent's policy: a run paused after a handoff resumes where it was.
        """
        if isinstance(conversation, Conversation):
            history = conversation
        else:
            history = Conversation.of(conversation)
        if current is None:
            current = self.handed_off_to(history)
        config = (
            current.config if cancel is None else dataclasses.replace(current.config, cancel=cancel)
        )
        events = run_steps(
            config,
            self.policy,
            history,
            scheduler=self.scheduler,
            interrupt=interrupt,
            agent=current.name,
        )
        if self.after is not None:
            events = events.pipe(_after(self.after))
        return events if self.run_operator is None else events.pipe(self.run_operator)

    def run(self, input: ConversationInput) -> Run:
        """A run on ``input`` (text, messages or a Conversation); it starts when observed.

        A conversation whose last turn waits on approvals resumes it: approved calls
        run first, rejected ones are answered with the refusal, calls still pending
        pause the run again, and then the next provider turn follows. Raises
        :class:`~rxagent.errors.ApprovalError` at once when such a conversation
        cannot be resumed (edited arguments that do not fit, messages added after
        the waiting calls, ...).
        """
        conversation = Conversation.of(input)
        current = self.handed_off_to(conversation)
        current._check_resumable(conversation)

        def build(cancel: _Latch) -> Observable[AgentEvent]:
            return self._events(conversation, cancel, cancel.fire, current)

        return Run(build, conversation)

    def handed_off_to(self, conversation: Conversation) -> Agent:
        """The agent ``conversation``'s handoffs left it with (this one if none did).

        The answered handoff calls of its history (``ra.handoff(agent)`` tools that
        completed), followed in order from this agent, each through the tools of the
        agent before it; the first of a turn counts, as in a run.
        """
        if not any(getattr(tool, "handoff_agent", None) for tool in self.tools):
            return self  # no handoff starts from here: nothing to follow
        answered = {
            m.tool_call_id for m in conversation if isinstance(m, ToolMessage) and not m.is_error
        }
        agent: Agent = self
        for message in conversation:
            if not isinstance(message, AssistantMessage):
                continue
            for call in message.tool_calls:
                target = getattr(agent.tools.get(call.name), "handoff_agent", None)
                if isinstance(target, Agent) and call.id in answered:
                    agent = target
                    break
        return agent

    def _check_resumable(self, conversation: Conversation) -> None:
        turn = conversation.open_turn()
        if turn is None:
            return
        for call in turn.unanswered:
            if call.status is not ToolCallStatus.APPROVED:
                continue
            tool = self.tools.get(call.name)
            if tool is None:
                raise ApprovalError(
                    f"call {call.id!r} was approved for tool {call.name!r}, "
                    "which this agent does not have"
                )
            try:
                tool.bind(call.arguments, call.id)
            except ToolArgumentsError as error:
                raise ApprovalError(
                    f"the approved arguments of call {call.id!r} do not fit tool "
                    f"{call.name!r}: {error.message}"
                ) from None

    def run_sync(self, input: ConversationInput, *, timeout: float | None = None) -> AgentRun:
        """Run to the end and return the result; for scripts with no running event loop."""
        if running_loop() is not None:
            raise RuntimeError(
                "run_sync() would block the running event loop; "
                "use `await ra.collect_final(agent.run(...))` instead"
            )
        return self.run(input).result(timeout=timeout)


class _Subscriber(abc.DisposableBase):
    """One observer of a run; disposing it detaches it, on the run's loop."""

    __slots__ = ("active", "observer", "run")

    def __init__(self, observer: abc.ObserverBase[AgentEvent], run: Run) -> None:
        self.observer = observer
        self.active = True
        self.run = run

    def attach(self) -> None:
        self.run._attach(self)

    def dispose(self) -> None:
        loop = self.run._loop
        if loop is not None and self.active:
            call_on(loop, self.detach)

    def detach(self) -> None:
        self.run._detach(self)


class _Latch(DirectObservable[None]):
    """Fires once; an observer that subscribes after that hears it at once.

    A run's cancellation must not be lost when it happens between two steps (the
    next step subscribes after it), so it is a latch, not a plain Subject. Every
    step of every run subscribes to one, directly (see ``DirectObservable``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.fired = False
        self._observers: list[abc.ObserverBase[None]] = []

    def fire(self) -> None:
        if self.fired:
            return
        self.fired = True
        for observer in tuple(self._observers):
            observer.on_next(None)

    def _subscribe_core(
        self, observer: abc.ObserverBase[None], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        if self.fired:
            observer.on_next(None)
            return Disposable()
        self._observers.append(observer)

        def dispose() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return Disposable(dispose)


class Run(DirectObservable[AgentEvent]):
    """One agent run: an Observable of its events, shared by every observer.

    The run starts when first subscribed and makes one provider call per step
    however many observers subscribe. A subscriber that comes late gets every
    event so far, then the live ones; after the end, the whole run is replayed
    (at once, on the subscriber's own thread). Observers are called on the
    event loop the run lives on (the one running where it was first subscribed,
    else rxagent's background loop), one event at a time and in the same order
    for all, even when an observer cancels the run from inside ``on_next``. An
    observer whose ``on_next`` raises is unsubscribed (and the error logged);
    the others keep receiving.

    ``cancel()``, or disposing the last subscription, stops the provider stream
    and the running tools; the run then ends with ``RunCompleted`` whose
    ``stop`` is ``cancelled`` and whose conversation still validates. A
    cancellation between two steps stops the run before the next provider call.

    Why not RxPY's ``replay()``/``ref_count()``: ``ReplaySubject`` stamps every item
    with its scheduler's time and trims by it, and delivers through a
    ``ScheduledObserver`` per subscriber; measured, 59 us per event for two
    observers, against about 1 us here, in a library whose whole cost per streamed
    token is a few microseconds. It also lets an observer's exception escape into
    the source, and ``ref_count`` disposes (a hard stop) where a run must cancel
    (ending with ``RunCompleted(stop="cancelled")`` and a valid conversation). So
    ``Run`` keeps its own small multicast: a replay list, a serialised delivery
    loop (re-entrant emissions wait their turn), observer isolation, and
    cancellation when the last subscriber leaves.

    ``await ra.collect_final(run)`` gives the :class:`~rxagent.events.AgentRun`
    (a plain ``await run`` gives the last event, as for any Observable);
    ``async for event in run`` iterates the events; ``run.result()`` blocks
    for the AgentRun outside the event loop. All of these work from any thread
    and any event loop.
    """

    def __init__(
        self, build: Callable[[_Latch], Observable[AgentEvent]], input: Conversation
    ) -> None:
        super().__init__()
        self._build = build
        self._input = input
        self._cancel_signal = _Latch()
        self._bind_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: list[AgentEvent] = []
        self._folded: tuple[RunState, int] = (_NOTHING_YET, 0)
        self._subscribers: list[_Subscriber] = []
        self._state = "idle"  # idle -> running -> done
        self._error: Exception | None = None
        self._connection: abc.DisposableBase | None = None
        # Notifications raised while observers are being called wait here, so that
        # every observer sees every event, in one order, one at a time.
        self._busy = False
        self._backlog: deque[Callable[[], None]] = deque()

    # -- what a caller can read ------------------------------------------------------
    @property
    def events(self) -> tuple[AgentEvent, ...]:
        """The events so far."""
        return tuple(self._events)

    @property
    def done(self) -> bool:
        return self._state == "done"

    @property
    def error(self) -> Exception | None:
        """The error the run failed with, if it failed."""
        return self._error

    @property
    def input(self) -> Conversation:
        return self._input.copy()

    @property
    def state(self) -> RunState:
        """The run's state now: the fold of its events so far (see :class:`RunState`)."""
        # Folded when asked, from where the last fold stopped: a run nobody asks
        # pays nothing for it.
        state, folded = self._folded
        if state is _NOTHING_YET:
            state = RunState(self._input)
        events = self._events
        if folded < len(events):
            for event in events[folded:]:
                state = state.apply(event)
            if self._state == "done" and self._error is not None:
                state = state.fail(self._error)
            self._folded = (state, len(events))
        elif self._state == "done" and self._error is not None and not state.done:
            state = state.fail(self._error)
            self._folded = (state, len(events))
        return state

    # -- Observable ------------------------------------------------------------------
    def _subscribe_core(
        self, observer: abc.ObserverBase[AgentEvent], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        subscriber = _Subscriber(observer, self)
        if self._state == "done":
            # A finished run never changes: replay it here, whatever became of its loop.
            self._attach(subscriber)
            return Disposable()
        loop = self._bind()
        _check_alive(loop)
        call_on(loop, subscriber.attach)
        return subscriber

    def _bind(self) -> asyncio.AbstractEventLoop:
        with self._bind_lock:
            if self._loop is None:
                self._loop = current_loop()
            return self._loop

    def _attach(self, subscriber: _Subscriber) -> None:
        # Replay by index: an observer may cause events while it is replayed to.
        i = 0
        while i < len(self._events):
            if not subscriber.active or not self._deliver(subscriber, self._events[i]):
                return
            i += 1
        if not subscriber.active:
            return
        if self._state == "done":
            subscriber.active = False
            self._terminate(subscriber)
            return
        self._subscribers.append(subscriber)
        if self._state == "idle":
            self._connect()

    def _detach(self, subscriber: _Subscriber) -> None:
        if not subscriber.active:
            return
        subscriber.active = False
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
        if not self._subscribers and self._state == "running":
            self._cancel_now()

    def _connect(self) -> None:
        self._state = "running"
        self._connection = self._build(self._cancel_signal).subscribe(
            self._emit, self._fail, self._complete
        )

    def _deliver(self, subscriber: _Subscriber, event: AgentEvent) -> bool:
        try:
            subscriber.observer.on_next(event)
        except Exception:
            log.exception("an observer of a run raised in on_next; it is unsubscribed")
            subscriber.active = False
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)
            return False
        return True

    def _emit(self, event: AgentEvent) -> None:
        if self._busy:  # an observer caused this event: it waits its turn
            self._backlog.append(functools.partial(self._emit_now, event))
            return
        self._busy = True
        try:
            self._emit_now(event)
            while self._backlog:
                self._backlog.popleft()()
        finally:
            self._busy = False

    def _emit_now(self, event: AgentEvent) -> None:
        self._events.append(event)
        for subscriber in tuple(self._subscribers):
            if subscriber.active:
                self._deliver(subscriber, event)

    def _terminate(self, subscriber: _Subscriber) -> None:
        try:
            if self._error is not None:
                subscriber.observer.on_error(self._error)
            else:
                subscriber.observer.on_completed()
        except Exception:
            log.exception("an observer of a run raised at the end of the run")

    def _serially(self, action: Callable[[], None]) -> None:
        """Run ``action`` now, or after the notification being delivered, if one is."""
        if self._busy:
            self._backlog.append(action)
            return
        self._busy = True
        try:
            action()
            while self._backlog:
                self._backlog.popleft()()
        finally:
            self._busy = False

    def _finish(self) -> None:
        self._serially(self._finish_now)

    def _finish_now(self) -> None:
        self._state = "done"
        subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            if subscriber.active:
                subscriber.active = False
                self._terminate(subscriber)

    def _fail(self, error: Exception) -> None:
        self._error = error
        self._finish()

    def _complete(self) -> None:
        self._finish()

    # -- cancellation ----------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the run: it ends with ``RunCompleted(stop="cancelled")``. Safe from any thread."""
        with self._bind_lock:
            if self._loop is None:
                # Never subscribed: it ends here, before it began.
                if self._state == "idle":
                    started = RunStarted(step=1, input=self._input.copy())
                    run = AgentRun(messages=self._input.copy(), stop=StopReason.CANCELLED)
                    self._events += [started, RunCompleted(step=1, run=run)]
                    self._state = "done"
                return
            loop = self._loop
        if self._state != "done":
            call_on(loop, self._cancel_now)

    def _cancel_now(self) -> None:
        if self._state == "running":
            self._cancel_signal.fire()

    # -- asyncio ---------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[AgentEvent]:
        return to_async_iterable(self)

    def __await__(self) -> Generator[Any, None, AgentEvent]:
        """The last event (``RunCompleted``, for a run that did not fail), from any loop."""
        return self._last_event().__await__()

    async def _last_event(self) -> AgentEvent:
        last: AgentEvent | None = None
        async for event in to_async_iterable(self):
            last = event
        if last is None:
            raise AgentError("the run ended without any event")
        return last

    def result(self, timeout: float | None = None) -> AgentRun:
        """Block until the run ends and return it; not from the run's own event loop.

        As with :func:`collect_final`, its ``messages`` are your own copy. When
        ``timeout`` seconds pass first, it raises ``TimeoutError`` and stops waiting:
        a run nobody else observes is then cancelled.
        """
        if self._state == "done":
            return _final_of(self._events, self._error)
        loop = self._bind()
        if running_loop() is loop:
            raise RuntimeError(
                "result() would block the event loop the run lives on; use "
                "`await ra.collect_final(run)`"
            )
        _check_alive(loop)
        future = asyncio.run_coroutine_threadsafe(collect_final(self), loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            # Given up on: stop waiting, which (as the last observer leaving) cancels it.
            future.cancel()
            raise


_NOTHING_YET = RunState()


def _check_alive(loop: asyncio.AbstractEventLoop) -> None:
    if loop.is_closed() or not loop.is_running():
        raise RuntimeError(
            "the event loop this run was started on is no longer running, and the run did "
            "not finish there; start a new run"
        )


def _final_of(events: list[AgentEvent], error: Exception | None) -> AgentRun:
    if error is not None:
        raise error
    for event in reversed(events):
        if type(event) is RunCompleted:
            return event.run.editable()
    raise missing_end()


async def collect_final(source: Observable[AgentEvent]) -> AgentRun:
    """Wait for a run (or any stream of run events) to end; return its ``AgentRun``.

    A failed run raises its ``AgentError`` (with ``partial`` set). Cancelling
    the awaiting task disposes the subscription.

    The result's ``messages`` are a writable copy of the run's conversation, yours
    to approve, reject or extend and run again; the run's own record (its
    ``RunCompleted`` event, what a late subscriber replays) never changes.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[AgentRun] = loop.create_future()
    final: list[AgentRun] = []

    def on_next(event: AgentEvent) -> None:
        if type(event) is RunCompleted:
            final.append(event.run)

    def settle(error: Exception | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        elif final:
            future.set_result(final[-1].editable())
        else:
            future.set_exception(missing_end())

    subscription = source.subscribe(
        on_next,
        lambda e: call_on(loop, lambda: settle(e)),
        lambda: call_on(loop, lambda: settle(None)),
    )
    try:
        return await future
    finally:
        subscription.dispose()


def _after(hook: AfterHook) -> Callable[[Observable[AgentEvent]], Observable[AgentEvent]]:
    """Call ``hook`` with the finished run before ``RunCompleted`` goes on."""

    def operator(source: Observable[AgentEvent]) -> Observable[AgentEvent]:
        def subscribe(
            observer: abc.ObserverBase[AgentEvent], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            held: list[AgentEvent] = []
            waiting: list[abc.DisposableBase] = []

            def release() -> None:
                for event in held:
                    observer.on_next(event)
                observer.on_completed()

            def on_next(event: AgentEvent) -> None:
                if type(event) is not RunCompleted or held:
                    observer.on_next(event)
                    return
                held.append(event)
                try:
                    result = hook(event.run)
                except Exception:
                    log.exception("the after hook raised; the run completes anyway")
                    return
                if inspect.isawaitable(result):
                    awaited = result

                    async def wait() -> AsyncIterator[None]:
                        try:
                            await awaited
                        except Exception:
                            log.exception("the after hook raised; the run completes anyway")
                        yield None

                    waiting.append(from_async_iterable(wait).subscribe(on_completed=release))

            def on_completed() -> None:
                if not waiting:
                    release()

            disposable = source.subscribe(
                on_next, observer.on_error, on_completed, scheduler=scheduler
            )

            def dispose() -> None:
                for d in (disposable, *waiting):
                    d.dispose()

            return Disposable(dispose)

        return Observable(subscribe)

    return operator
