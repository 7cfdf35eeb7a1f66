"""``until`` and ``loop``: steps chained until a policy says stop."""

from __future__ import annotations

import time
from collections.abc import Callable

from reactivex import Observable, abc
from reactivex import operators as rx_ops
from reactivex.disposable import SingleAssignmentDisposable
from reactivex.subject import Subject

from rxagent.errors import AgentError
from rxagent.events import AgentEvent, AgentRun, Paused, RunCompleted, StepCompleted
from rxagent.messages import Conversation, ConversationInput
from rxagent.policies import LoopState, Policy, StopReason

__all__ = ["loop", "until"]

Operator = Callable[[Observable[ConversationInput]], Observable[AgentEvent]]


def until(
    policy: Policy, *, history: ConversationInput | None = None
) -> Callable[[Observable[AgentEvent]], Observable[AgentEvent]]:
    """Mirror step events until ``policy`` says stop, then end with ``RunCompleted``.

    After each ``StepCompleted`` the loop state (steps, usage, tool calls,
    elapsed time) is updated and the policy asked; when it returns a stop
    reason, ``RunCompleted(run)`` follows and the stream completes (a
    ``take_while`` that also says why)::

        source:  -S1-...-C1-S2-...-C2-S3-...
        result:  -S1-...-C1-S2-...-C2-R|        (policy stops after step 2)

    A cancelled step stops the run with ``stop="cancelled"``; a step whose calls
    wait for a human or a schedule stops it with ``Paused(reason)`` and
    ``stop="paused"`` (the waiting calls are ``run.pending``). ``history`` is the
    conversation the steps started from: the run's messages are ``history``
    followed by every step's messages. An error from the source is passed on,
    its ``partial`` run completed with the whole conversation and totals.
    """
    return _until(policy, history, None)


def _until(
    policy: Policy,
    history: ConversationInput | None,
    on_continue: Callable[[Conversation], None] | None,
) -> Callable[[Observable[AgentEvent]], Observable[AgentEvent]]:
    def operator(source: Observable[AgentEvent]) -> Observable[AgentEvent]:
        def subscribe(
            observer: abc.ObserverBase[AgentEvent], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            conversation = Conversation.of(history or [])
            state = LoopState()
            started = time.monotonic()
            done = False
            subscription = SingleAssignmentDisposable()

            def on_next(event: AgentEvent) -> None:
                nonlocal state, done
                if done:
                    return
                if type(event) is not StepCompleted:
                    observer.on_next(event)
                    return
                outcome = event.outcome
                outcome.apply(conversation)
                state = state.after(outcome, time.monotonic() - started)
                observer.on_next(event)
                try:
                    if outcome.cancelled:
                        stop: StopReason | None = StopReason.CANCELLED
                    elif outcome.pause is not None:
                        stop = StopReason.PAUSED
                    else:
                        stop = policy(state, outcome)
                except Exception as error:
                    done = True
                    subscription.dispose()
                    failure = AgentError(
                        f"the policy {policy!r} raised {type(error).__name__}: {error}",
                        partial=AgentRun(
                            messages=conversation,
                            steps=state.steps,
                            stop=StopReason.ERROR,
                            usage=state.usage,
                            tool_calls=state.tool_calls,
                        ),
                    )
                    failure.__cause__ = error
                    observer.on_error(failure)
                    return
                if stop is None:
                    if on_continue is not None:
                        on_continue(conversation.copy())
                    return
                done = True
                subscription.dispose()
                run = AgentRun(
                    messages=conversation,
                    steps=state.steps,
                    stop=stop,
                    usage=state.usage,
                    output=outcome.output,
                    pending=tuple(conversation.pending) if stop is StopReason.PAUSED else (),
                    tool_calls=state.tool_calls,
                )
                if stop is StopReason.PAUSED and outcome.pause is not None:
                    observer.on_next(Paused(step=outcome.step, reason=outcome.pause))
                observer.on_next(RunCompleted(step=outcome.step, run=run))
                observer.on_completed()

            def on_error(error: Exception) -> None:
                nonlocal done
                if done:
                    return
                done = True
                if isinstance(error, AgentError) and error.partial is not None:
                    step_run = error.partial
                    error.partial = step_run.model_copy(
                        update={
                            "steps": state.steps + 1,
                            "usage": state.usage + step_run.usage,
                            "tool_calls": state.tool_calls + step_run.tool_calls,
                        }
                    )
                observer.on_error(error)

            def on_completed() -> None:
                nonlocal done
                if not done:
                    done = True
                    observer.on_completed()

            subscription.disposable = source.subscribe(
                on_next, on_error, on_completed, scheduler=scheduler
            )
            return subscription

        return Observable(subscribe)

    return operator


def loop(
    step: Operator, policy: Policy
) -> Callable[[Observable[ConversationInput]], Observable[AgentEvent]]:
    """Run ``step`` again and again on the growing conversation until ``policy`` stops.

    For each conversation that arrives, the first step runs on it; each
    ``StepCompleted`` that the policy lets pass feeds the conversation so far
    (with the step's messages) back into ``step``; the stop ends the run with
    ``RunCompleted``. ``step`` is any operator from conversations to step
    events, ``ops.step(...)`` usually::

        conversation: --c--------------------------------------|
        result:       --[step 1 events]-[step 2 events]-RunCompleted-|
    """

    def operator(source: Observable[ConversationInput]) -> Observable[AgentEvent]:
        def run_one(initial: ConversationInput) -> Observable[AgentEvent]:
            def subscribe(
                observer: abc.ObserverBase[AgentEvent], scheduler: abc.SchedulerBase | None = None
            ) -> abc.DisposableBase:
                history = Conversation.of(initial)
                feedback: Subject[ConversationInput] = Subject()
                events = feedback.pipe(step, _until(policy, history, feedback.on_next))
                subscription = events.subscribe(observer, scheduler=scheduler)
                feedback.on_next(history.copy())
                return subscription

            return Observable(subscribe)

        return source.pipe(rx_ops.map(run_one), rx_ops.merge(max_concurrent=1))

    return operator
