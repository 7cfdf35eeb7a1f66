"""``until`` and ``loop``: steps chained until a policy says stop."""

from __future__ import annotations

from collections.abc import Callable

from reactivex import Observable, abc
from reactivex import operators as rx_ops
from reactivex.disposable import CompositeDisposable, SingleAssignmentDisposable
from reactivex.subject import Subject

from rxagent.aio import loop_scheduler
from rxagent.errors import AgentError
from rxagent.events import (
    AgentEvent,
    AgentRun,
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
from rxagent.policies import Policy, StopReason
from rxagent.state import RunState, StepPhase

__all__ = ["loop", "run_loop", "until"]

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


def _until(
    policy: Policy,
    history: ConversationInput | None,
    on_continue: Callable[[Conversation], None] | None,
    interrupt: Callable[[], None] | None,
    scheduler: abc.SchedulerBase | None,
) -> Callable[[Observable[AgentEvent]], Observable[AgentEvent]]:
    deadline = policy.time_limit

    def operator(source: Observable[AgentEvent]) -> Observable[AgentEvent]:
        def subscribe(
            observer: abc.ObserverBase[AgentEvent], default: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            clock = scheduler or default or loop_scheduler()
            started = clock.now
            start = RunStarted(step=1, input=Conversation.of(history or []))
            state = RunState().apply(start)
            over = timed_out = False
            subscription = SingleAssignmentDisposable()

            def on_next(event: AgentEvent) -> None:
                nonlocal state
                if over:
                    return
                kind = type(event)
                if kind in _STREAMING:
                    observer.on_next(event)
                    return
                state = state.apply(event)
                if kind is not StepCompleted:
                    observer.on_next(event)
                    return
                outcome = event.outcome  # type: ignore[union-attr]
                observer.on_next(event)
                if outcome.error is not None:
                    return  # the step's error follows
                try:
                    if outcome.cancelled:
                        stop: StopReason | None = (
                            StopReason.TIME_BUDGET if timed_out else StopReason.CANCELLED
                        )
                    elif outcome.pause is not None:
                        stop = StopReason.PAUSED
                    else:
                        elapsed = (clock.now - started).total_seconds()
                        stop = policy(state.loop_state(elapsed), outcome)
                except Exception as error:
                    failure = AgentError(
                        f"the policy {policy!r} raised {type(error).__name__}: {error}",
                        partial=state.to_run(StopReason.ERROR),
                    )
                    failure.__cause__ = error
                    end(failure)
                    return
                if stop is None:
                    if on_continue is not None:
                        on_continue(state.conversation)
                    return
                if stop is StopReason.PAUSED and outcome.pause is not None:
                    paused = Paused(step=outcome.step, reason=outcome.pause)
                    state = state.apply(paused)
                    observer.on_next(paused)
                completed = RunCompleted(step=outcome.step, run=state.to_run(stop))
                state = state.apply(completed)
                observer.on_next(completed)
                end(None)

            def end(error: Exception | None) -> None:
                nonlocal over
                over = True
                subscription.dispose()
                if error is None:
                    observer.on_completed()
                else:
                    observer.on_error(error)

            def on_error(error: Exception) -> None:
                if over:
                    return
                if isinstance(error, AgentError):
                    error.partial = _partial(state, error)
                end(error)

            def on_completed() -> None:
                if not over:
                    end(None)

            observer.on_next(start)
            subscription.disposable = source.subscribe(
                on_next, on_error, on_completed, scheduler=default
            )
            if deadline is None or interrupt is None:
                return subscription

            def expire(_: abc.SchedulerBase, __: object = None) -> None:
                nonlocal timed_out
                if not over:
                    timed_out = True
                    interrupt()

            # A budget of time bounds the run even mid-step: the step under way is
            # cancelled at the deadline and the run stops with ``time_budget``.
            timer = clock.schedule_relative(deadline, expire)
            return CompositeDisposable(subscription, timer)

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
