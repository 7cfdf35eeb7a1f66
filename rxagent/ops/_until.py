"""``until`` and ``loop``: steps chained until a policy says stop."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from reactivex import Observable, abc
from reactivex import operators as rx_ops
from reactivex.disposable import Disposable, SingleAssignmentDisposable
from reactivex.subject import Subject

from rxagent.aio import DirectObservable, loop_scheduler
from rxagent.errors import AgentError
from rxagent.events import (
    AgentEvent,
    AgentRun,
    Handoff,
    Paused,
    ReasoningDelta,
    RunCompleted,
    RunStarted,
    StepCompleted,
    TextDelta,
    ToolArgsDelta,
    ToolProgress,
    UsageDelta,
)
from rxagent.messages import Conversation, ConversationInput
from rxagent.ops._step import StepConfig, _Shared, _Step
from rxagent.policies import Policy, StepOutcome, StopReason
from rxagent.state import RunState, StepPhase

__all__ = ["loop", "run_loop", "run_steps", "until"]

Operator = Callable[[Observable[ConversationInput]], Observable[AgentEvent]]


def until(
    policy: Policy,
    *,
    history: ConversationInput | None = None,
    scheduler: abc.SchedulerBase | None = None,
) -> Callable[[Observable[AgentEvent]], Observable[AgentEvent]]:
    """Mirror step events until ``policy`` says stop, then end with ``RunCompleted``.

    A fold of the events into the run's :class:`~rxagent.state.RunState` with a
    take-while on it: after each ``StepCompleted`` the policy is asked (with the
    steps, usage, tool calls and time so far); when it returns a stop reason,
    ``RunCompleted(run)`` follows, ``run`` being the state folded so far, and the
    stream completes::

        source:  -S1-...-C1-S2-...-C2-S3-...
        result:  R-S1-...-C1-S2-...-C2-RC|        (policy stops after step 2)

    The first event is ``RunStarted`` with ``history``, the conversation the
    steps start from; the run's messages are ``history`` followed by every
    step's messages. A cancelled step stops the run with ``stop="cancelled"``; a
    step whose calls wait for a human or a schedule stops it with
    ``Paused(reason)`` and ``stop="paused"`` (the waiting calls are
    ``run.pending``). An error from the source is passed on, its ``partial`` the
    run folded so far. ``scheduler`` is the clock of ``elapsed`` (default: the
    asyncio event loop's).
    """
    return _until(policy, history, None, None, scheduler)


# Why one operator and not ``scan(RunState.apply)`` + ``take_while(inclusive=True)``:
# measured on the 100k-token benchmark, those two hops (and a tuple per event to carry
# the events out of the scan) cost 2.0 us per event, and folding every text delta
# into the state 1.6 us more: together they took the CPU per event from 8.4 to 14.4 us.
# So the take-while is inline, and the fold skips the deltas, which no stop decision
# reads (``Run.state`` folds them, when asked).
_STREAMING = frozenset({TextDelta, ReasoningDelta, ToolArgsDelta, ToolProgress, UsageDelta})


class _Fold:
    """The loop's state machine: folds step events into the run's state, asks the policy
    after each step, and ends the run; an observer of step events that forwards to
    ``observer``. ``until`` subscribes one to its source; an agent's run drives one
    directly (see :func:`run_steps`), with no operator in between."""

    __slots__ = (
        "clock",
        "interrupt",
        "observer",
        "on_continue",
        "over",
        "policy",
        "started",
        "state",
        "subscription",
        "timed_out",
        "timer",
    )

    def __init__(
        self,
        policy: Policy,
        history: Conversation,
        observer: abc.ObserverBase[AgentEvent],
        clock: abc.SchedulerBase,
        on_continue: Callable[[Conversation], None] | None,
        interrupt: Callable[[], None] | None,
        agent: str | None = None,
    ) -> None:
        self.policy = policy
        self.observer = observer
        self.clock = clock
        self.on_continue = on_continue
        self.interrupt = interrupt
        self.started = clock.now
        self.over = False
        self.timed_out = False
        self.subscription = SingleAssignmentDisposable()
        self.timer: abc.DisposableBase | None = None
        start = RunStarted(step=1, input=history, agent=agent, at=time.time())
        self.state = RunState().apply(start)
        observer.on_next(start)
        deadline = policy.time_limit
        if deadline is not None and interrupt is not None:
            # A budget of time bounds the run even mid-step: the step under way is
            # cancelled at the deadline and the run stops with ``time_budget``.
            self.timer = clock.schedule_relative(deadline, self._expire)

    def _expire(self, _: abc.SchedulerBase, __: object = None) -> None:
        if not self.over and self.interrupt is not None:
            self.timed_out = True
            self.interrupt()

    def on_next(self, event: AgentEvent) -> None:
        if self.over:
            return
        kind = type(event)
        if kind in _STREAMING:
            self.observer.on_next(event)
            return
        state = self.state = self.state.apply(event)
        self.observer.on_next(event)
        if kind is not StepCompleted:
            return
        outcome = event.outcome  # type: ignore[union-attr]
        if outcome.error is not None:
            return  # the step's error follows
        try:
            if outcome.cancelled:
                stop: StopReason | None = (
                    StopReason.TIME_BUDGET if self.timed_out else StopReason.CANCELLED
                )
            elif outcome.pause is not None:
                stop = StopReason.PAUSED
            else:
                elapsed = (self.clock.now - self.started).total_seconds()
                stop = self.policy(state.loop_state(elapsed), outcome)
        except Exception as error:
            failure = AgentError(
                f"the policy {self.policy!r} raised {type(error).__name__}: {error}",
                partial=state.to_run(StopReason.ERROR),
            )
            failure.__cause__ = error
            self._end(failure)
            return
        if stop is None:
            if self.on_continue is not None:
                self.on_continue(state.conversation)
            return
        if stop is StopReason.PAUSED and outcome.pause is not None:
            paused = Paused(step=outcome.step, reason=outcome.pause)
            state = state.apply(paused)
            self.observer.on_next(paused)
        completed = RunCompleted(step=outcome.step, run=state.to_run(stop), at=time.time())
        self.state = state.apply(completed)
        self.observer.on_next(completed)
        self._end(None)

    def on_error(self, error: Exception) -> None:
        if self.over:
            return
        if isinstance(error, AgentError):
            error.partial = _partial(self.state, error)
        self._end(error)

    def on_completed(self) -> None:
        if not self.over:
            self._end(None)

    def _end(self, error: Exception | None) -> None:
        self.over = True
        self.dispose()
        if error is None:
            self.observer.on_completed()
        else:
            self.observer.on_error(error)

    def dispose(self) -> None:
        self.subscription.dispose()
        if self.timer is not None:
            self.timer.dispose()


def _until(
    policy: Policy,
    history: ConversationInput | None,
    on_continue: Callable[[Conversation], None] | None,
    interrupt: Callable[[], None] | None,
    scheduler: abc.SchedulerBase | None,
) -> Callable[[Observable[AgentEvent]], Observable[AgentEvent]]:
    def operator(source: Observable[AgentEvent]) -> Observable[AgentEvent]:
        def subscribe(
            observer: abc.ObserverBase[AgentEvent], default: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            clock = scheduler or default or loop_scheduler()
            history_ = Conversation.of(history or [])
            fold = _Fold(policy, history_, observer, clock, on_continue, interrupt)
            fold.subscription.disposable = source.subscribe(
                fold.on_next, fold.on_error, fold.on_completed, scheduler=default
            )
            return Disposable(fold.dispose)

        return Observable(subscribe)

    return operator


def _partial(state: RunState, error: AgentError) -> AgentRun:
    """The run so far for a failed run: the fold, or a foreign step's own partial joined
    to the loop's totals (a step that emits no ``StepCompleted`` when it fails)."""
    if state.phase is StepPhase.FAILED or error.partial is None:
        return state.to_run(StopReason.ERROR)
    step_run = error.partial
    totals = state.to_run(StopReason.ERROR)
    return step_run.model_copy(
        update={
            "steps": totals.steps + 1,
            "usage": totals.usage + step_run.usage,
            "tool_calls": totals.tool_calls + step_run.tool_calls,
        }
    )


def loop(
    step: Operator,
    policy: Policy,
    *,
    scheduler: abc.SchedulerBase | None = None,
    interrupt: Callable[[], None] | None = None,
) -> Callable[[Observable[ConversationInput]], Observable[AgentEvent]]:
    """Run ``step`` again and again on the growing conversation until ``policy`` stops.

    For each conversation that arrives, the first step runs on it; each
    ``StepCompleted`` that the policy lets pass feeds the conversation so far
    (with the step's messages) back into ``step``; the stop ends the run with
    ``RunCompleted``. ``step`` is any operator from conversations to step
    events, ``ops.step(...)`` usually::

        conversation: --c--------------------------------------------|
        result:       --RunStarted-[step 1 events]-[step 2 events]-RunCompleted-|

    ``interrupt`` cancels the step under way (the run's cancel signal, which
    ``step`` listens to): given it, a policy with a time budget
    (``max_time``) cuts the step under way short at the deadline; without it,
    the budget is checked between steps. ``scheduler`` is the clock of that
    budget (default: the asyncio event loop's).
    """

    def run_one(initial: ConversationInput) -> Observable[AgentEvent]:
        return run_loop(step, policy, initial, scheduler=scheduler, interrupt=interrupt)

    def operator(source: Observable[ConversationInput]) -> Observable[AgentEvent]:
        return source.pipe(rx_ops.map(run_one), rx_ops.merge(max_concurrent=1))

    return operator


def run_loop(
    step: Operator,
    policy: Policy,
    initial: ConversationInput,
    *,
    scheduler: abc.SchedulerBase | None = None,
    interrupt: Callable[[], None] | None = None,
) -> Observable[AgentEvent]:
    """The events of one run of :func:`loop` on ``initial`` (a cold Observable)."""

    def subscribe(
        observer: abc.ObserverBase[AgentEvent], default: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        history = Conversation.of(initial)
        feedback: Subject[ConversationInput] = Subject()
        events = feedback.pipe(
            step, _until(policy, history, feedback.on_next, interrupt, scheduler)
        )
        subscription = events.subscribe(observer, scheduler=default)
        feedback.on_next(history.copy())
        return subscription

    return Observable(subscribe)


def run_steps(
    config: StepConfig,
    policy: Policy,
    initial: ConversationInput,
    *,
    scheduler: abc.SchedulerBase | None = None,
    interrupt: Callable[[], None] | None = None,
    agent: str | None = None,
) -> Observable[AgentEvent]:
    """One run of ``loop(steps_of(config), policy)`` on ``initial``, the way ``Agent``
    runs it: the steps are driven one after another with no operator in between (the
    same step, the same fold; a run starts with 2 subscriptions instead of 8). A step
    whose model called a handoff tool (``ra.handoff(agent)``) hands the rest of the
    run to that agent's config, with a ``Handoff`` event; ``policy`` goes on counting
    across agents."""

    def subscribe(
        observer: abc.ObserverBase[AgentEvent], default: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        clock = scheduler or default or loop_scheduler()
        history = initial if isinstance(initial, Conversation) else Conversation.of(initial)
        steps = _Steps(config, policy, history, observer, clock, interrupt, agent)
        steps.advance()
        return Disposable(steps.dispose)

    return DirectObservable(subscribe)


class _Steps(abc.ObserverBase[AgentEvent]):
    """Starts a step, hands its events to the fold, and starts the next one when the fold
    says go on and the step has completed."""

    __slots__ = (
        "agent",
        "config",
        "current",
        "disposed",
        "fold",
        "following",
        "handoff",
        "number",
        "ready",
        "shared",
    )

    def __init__(
        self,
        config: StepConfig,
        policy: Policy,
        history: Conversation,
        observer: abc.ObserverBase[AgentEvent],
        clock: abc.SchedulerBase,
        interrupt: Callable[[], None] | None,
        agent: str | None = None,
    ) -> None:
        self.config = config
        self.agent = agent
        #: The handoff the last step asked for: (the new agent's config, the event).
        self.handoff: tuple[StepConfig, Handoff] | None = None
        self.number = 0
        self.shared = _Shared()
        self.current: abc.DisposableBase | None = None
        self.disposed = False
        #: The conversation of the next step, once the fold said go on.
        self.following: Conversation | None = None
        #: The next step may start (the first, or the previous one completed).
        self.ready: Conversation | None = history.copy()
        self.fold = _Fold(policy, history, observer, clock, self._go_on, interrupt, agent)

    def _go_on(self, conversation: Conversation) -> None:
        self.following = conversation

    def advance(self) -> None:
        # A loop, not recursion: a step that completes at once (cancelled before it
        # began) starts the next one here, not deeper in the stack.
        while self.ready is not None and not (self.disposed or self.fold.over):
            conversation, self.ready = self.ready, None
            self.number += 1
            step = _Step(self.config, conversation, self.number, self, self.shared)
            self.current = step.start()

    def on_next(self, value: AgentEvent) -> None:
        if type(value) is StepCompleted and value.outcome.handoff is not None:
            self._prepare_handoff(value.outcome)
        self.fold.on_next(value)

    def _prepare_handoff(self, outcome: StepOutcome) -> None:
        call = next(c for c in outcome.tool_calls if c.id == outcome.handoff_call)
        target = getattr(self.config.registry.get(call.name), "handoff_agent", None)
        if target is None:
            return
        config = target.config
        if self.config.cancel is not None:
            config = dataclasses.replace(config, cancel=self.config.cancel)
        event = Handoff(
            step=outcome.step,
            from_agent=self.agent,
            to_agent=str(target.name),
            call_id=call.id,
        )
        self.handoff = (config, event)

    def on_error(self, error: Exception) -> None:
        self.fold.on_error(error)

    def on_completed(self) -> None:
        following, self.following = self.following, None
        if following is None:
            self.fold.on_completed()  # a step that ended without saying how
            return
        handoff, self.handoff = self.handoff, None
        if handoff is not None:
            self.config, event = handoff
            self.agent = event.to_agent
            self.shared = _Shared()
            self.fold.on_next(event)
        self.ready = following
        if self.current is not None:  # else: inside start(); advance() goes on from there
            self.current = None
            self.advance()

    def dispose(self) -> None:
        self.disposed = True
        if self.current is not None:
            self.current.dispose()
        self.fold.dispose()
