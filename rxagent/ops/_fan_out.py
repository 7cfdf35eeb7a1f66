"""``fan_out_tools``: run tool calls concurrently, re-join their ends in call order."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from typing import Any, TypeAlias, TypeVar

from reactivex import Observable, abc
from reactivex import operators as rx_ops
from reactivex.disposable import CompositeDisposable, Disposable, SingleAssignmentDisposable

from rxagent.aio import from_async_iterable, loop_scheduler
from rxagent.approval import EXECUTE
from rxagent.errors import (
    AgentError,
    ToolCancelled,
    ToolError,
    ToolExecutionError,
    ToolOutputError,
    ToolsFailed,
    ToolTimeoutError,
)
from rxagent.events import (
    AgentEvent,
    ToolCallEnded,
    ToolCallPending,
    ToolCallStarted,
    ToolProgress,
    _Event,
)
from rxagent.messages import ToolCall, ToolCallStatus
from rxagent.tools import JoinPolicy, ToolRegistry, ToolsInput, tool_output

__all__ = ["ToolContext", "fan_out_tools", "within"]

_T = TypeVar("_T")

#: Entered around starting each tool call: ``tool_context(call)`` is a context manager.
ToolContext: TypeAlias = Callable[[ToolCall], AbstractContextManager[Any]]

# (call index, event, the error when the event is a failed ToolCallEnded)
_Item: TypeAlias = tuple[int, AgentEvent, ToolError | None]


def fan_out_tools(
    tools: ToolRegistry | ToolsInput,
    *,
    max_concurrent: int | None = None,
    join: JoinPolicy = JoinPolicy.REPORT_TO_MODEL,
    step: int = 1,
    timeout: float | None = None,
    executor: Executor | None = None,
    scheduler: abc.SchedulerBase | None = None,
    tool_context: ToolContext | None = None,
) -> Callable[[Observable[ToolCall]], Observable[AgentEvent]]:
    """Run each incoming tool call, at most ``max_concurrent`` at a time.

    Calls start the moment they arrive (a free slot permitting), through
    ``merge(max_concurrent=k)``. Each call emits ``ToolCallStarted`` when it
    starts, ``ToolProgress`` while a streaming tool streams, and
    ``ToolCallEnded`` when it ends; the ends are re-joined into call order, so
    a fast second call's end waits for the first call's::

        calls:   --c1--c2--------------|
        tools:      [c1 ......... ]
                       [c2 ..]
        result:  --S1--S2--------E1-E2-|

    A call to an unknown tool, or with arguments that are not JSON or do not
    fit the tool's schema, never starts: it ends at once with the error.
    Each valid call is put to its approval strategy (unless it is already
    ``approved``): a call that needs approval, or is deferred to later, emits
    ``ToolCallPending`` instead of running; a refused call (or one a human
    ``rejected``) ends at once with ``status="rejected"`` and the refusal as its
    error, which no join policy counts as a failure.
    ``join`` says what failures do (see :class:`~rxagent.tools.JoinPolicy`):
    ``FAIL_FAST`` cancels the running calls, emits the ends it has (in call
    order; a cancelled call has none) and errors with the failure;
    ``JOIN_ALL`` lets all run, emits every end, then errors with
    :class:`~rxagent.errors.ToolsFailed`; ``REPORT_TO_MODEL`` never errors.
    ``timeout`` (seconds) applies to tools that have none of their own; the
    timeouts run on ``scheduler`` (default: the asyncio event loop's clock), so a
    test can drive them in virtual time (``reactivex.testing.TestScheduler``).
    ``tool_context(call)``, where given, is entered around starting each call (its
    task is made inside it, and a sync tool's thread runs in a copy of that task's
    context), so context variables it sets, a tracing span say, reach the tool.
    """
    if max_concurrent is not None and max_concurrent < 1:
        raise ValueError(f"max_concurrent must be None or at least 1, got {max_concurrent}")
    registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
    merge = (
        rx_ops.merge_all()
        if max_concurrent is None
        else rx_ops.merge(max_concurrent=max_concurrent)
    )

    def run_call(call: ToolCall, index: int) -> Observable[_Item]:
        def subscribe(
            observer: abc.ObserverBase[_Item], _: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            def ended(
                output: Any = None,
                error: ToolError | None = None,
                status: ToolCallStatus | None = None,
            ) -> None:
                event = ToolCallEnded(
                    step=step,
                    call_id=call.id,
                    name=call.name,
                    output=output,
                    error=None if error is None else error.message,
                    error_type=(
                        type(error).__name__
                        if error is not None and status is not ToolCallStatus.REJECTED
                        else None
                    ),
                    status=status
                    or (ToolCallStatus.COMPLETED if error is None else ToolCallStatus.FAILED),
                )
                # A refusal is the call's answer, not a failure of the step (nor is a
                # cancellation: the step is cancelled).
                failure = (
                    None if status in (ToolCallStatus.REJECTED, ToolCallStatus.CANCELLED) else error
                )
                observer.on_next((index, event, failure))
                observer.on_completed()

            if call.status is ToolCallStatus.REJECTED:
                ended(error=_refusal(call, call.reason), status=ToolCallStatus.REJECTED)
                return Disposable()
            try:
                bound = registry.bind(call.id, call.name, call.arguments)
            except ToolError as error:
                ended(error=error)
                return Disposable()
            try:
                decision = (
                    EXECUTE
                    if call.status is ToolCallStatus.APPROVED
                    else registry.decide(call.id, bound)
                )
            except Exception as error:  # the tool never ran: its approval strategy failed
                ended(error=_strategy_error(error, call))
                return Disposable()
            if decision.kind == "reject":
                ended(error=_refusal(call, decision.reason), status=ToolCallStatus.REJECTED)
                return Disposable()
            if decision.kind == "require_approval" or (
                decision.kind == "defer" and (decision.until or 0) > time.time()
            ):
                pending = ToolCallPending(
                    step=step,
                    call_id=call.id,
                    name=call.name,
                    arguments=bound.arguments,
                    awaiting="approval" if decision.kind == "require_approval" else "schedule",
                    reason=decision.reason,
                    not_before=decision.until,
                )
                observer.on_next((index, pending, None))
                observer.on_completed()
                return Disposable()
            observer.on_next(
                (
                    index,
                    ToolCallStarted(
                        step=step, call_id=call.id, name=call.name, arguments=bound.arguments
                    ),
                    None,
                )
            )

            def on_item(item: tuple[bool, Any]) -> None:
                final, value = item
                if not final and isinstance(value, _Event):
                    # A sub-agent's event (agent.as_tool()): nested, typed, as it happens.
                    inner = value.depth if type(value) is ToolProgress and value.event else 0
                    progress = ToolProgress(
                        step=step,
                        call_id=call.id,
                        event=value,  # type: ignore[arg-type]  # an _Event is an AgentEvent
                        depth=inner + 1,
                    )
                    observer.on_next((index, progress, None))
                    return
                try:
                    data = tool_output(value, call.name, call.id, progress=not final)
                except ToolOutputError as error:
                    ended(error=error)  # ends the call (and stops a tool still streaming)
                    return
                if final:
                    ended(output=data)
                else:
                    observer.on_next(
                        (index, ToolProgress(step=step, call_id=call.id, data=data), None)
                    )

            def on_error(error: Exception) -> None:
                failure = _as_tool_error(error, call)
                if isinstance(failure, ToolCancelled):
                    # The other side of the call was cancelled (a sub-agent's run):
                    # the step is cancelled with it.
                    ended(error=failure, status=ToolCallStatus.CANCELLED)
                else:
                    ended(error=failure)

            items = from_async_iterable(
                lambda: bound.tool.stream(bound.kwargs, executor=executor, call_id=call.id)
            )
            limit = bound.tool.timeout or timeout
            if limit is not None:
                items = items.pipe(
                    within(
                        limit,
                        lambda: ToolTimeoutError(
                            f"tool {call.name!r} timed out after {limit:g}s",
                            call_id=call.id,
                            tool_name=call.name,
                        ),
                        scheduler,
                    )
                )
            if tool_context is None:
                return items.subscribe(on_item, on_error)
            # The tool's task copies the context tool_context sets; what the tool sends
            # back runs in the context the call started in, so that context does not
            # leak into what follows (the next step's provider request, say).
            outer = contextvars.copy_context()
            with tool_context(call):
                return items.subscribe(_in_context(outer, on_item), _in_context(outer, on_error))

        return Observable(subscribe)

    def operator(source: Observable[ToolCall]) -> Observable[AgentEvent]:
        def subscribe(
            observer: abc.ObserverBase[AgentEvent], default: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            # Ends (and pendings, which end a call's part in this step) by call index.
            ends: dict[int, ToolCallEnded | ToolCallPending] = {}
            failures: dict[int, ToolError] = {}
            next_index = 0
            finished = False
            subscription = SingleAssignmentDisposable()

            def flush() -> None:
                nonlocal next_index
                while next_index in ends:
                    observer.on_next(ends.pop(next_index))
                    next_index += 1

            def on_next(item: _Item) -> None:
                nonlocal finished
                if finished:
                    return
                index, event, error = item
                if not isinstance(event, ToolCallEnded | ToolCallPending):
                    observer.on_next(event)
                    return
                ends[index] = event
                if error is not None:
                    failures[index] = error
                    if join is JoinPolicy.FAIL_FAST:
                        finished = True
                        subscription.dispose()
                        for i in sorted(ends):
                            observer.on_next(ends[i])
                        observer.on_error(error)
                        return
                flush()

            def on_error(error: Exception) -> None:
                nonlocal finished
                if not finished:
                    finished = True
                    observer.on_error(error)

            def on_completed() -> None:
                nonlocal finished
                if finished:
                    return
                finished = True
                flush()
                if join is JoinPolicy.JOIN_ALL and failures:
                    observer.on_error(ToolsFailed([failures[i] for i in sorted(failures)]))
                else:
                    observer.on_completed()

            subscription.disposable = source.pipe(rx_ops.map_indexed(run_call), merge).subscribe(
                on_next, on_error, on_completed, scheduler=default
            )
            return subscription

        return Observable(subscribe)

    return operator


def within(
    seconds: float,
    error: Callable[[], Exception],
    scheduler: abc.SchedulerBase | None = None,
) -> Callable[[Observable[_T]], Observable[_T]]:
    """Mirror the source, failing with ``error()`` if it has not ended ``seconds`` after
    subscription (the source is then disposed: its task cancelled)::

        source:  --a---b------c--|
        result:  --a---b--X          (seconds elapsed before the source ended)

    Unlike Rx's ``timeout``, which bounds the wait for each item, this bounds the
    whole: a streaming tool's progress does not extend its time. The clock is
    ``scheduler`` (default: the asyncio event loop's).
    """

    def operator(source: Observable[_T]) -> Observable[_T]:
        def subscribe(
            observer: abc.ObserverBase[_T], default: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            clock = scheduler or default or loop_scheduler()
            subscription = SingleAssignmentDisposable()
            over = False

            def fire(_: abc.SchedulerBase, __: Any = None) -> None:
                nonlocal over
                if over:
                    return
                over = True
                subscription.dispose()
                observer.on_error(error())

            timer = clock.schedule_relative(seconds, fire)

            def on_next(item: _T) -> None:
                if not over:
                    observer.on_next(item)

            def on_error(failure: Exception) -> None:
                nonlocal over
                if not over:
                    over = True
                    timer.dispose()
                    observer.on_error(failure)

            def on_completed() -> None:
                nonlocal over
                if not over:
                    over = True
                    timer.dispose()
                    observer.on_completed()

            subscription.disposable = source.subscribe(on_next, on_error, on_completed)
            return CompositeDisposable(subscription, timer)

        return Observable(subscribe)

    return operator


def _in_context(context: contextvars.Context, fn: Callable[[_T], None]) -> Callable[[_T], None]:
    """``fn``, run in a copy of ``context`` (a copy: a context cannot be entered twice,
    and a notification may cause another)."""

    def run(value: _T) -> None:
        context.copy().run(fn, value)

    return run


def _refusal(call: ToolCall, reason: str | None) -> ToolError:
    return ToolError(
        f"Rejected: {reason or 'the call was not approved.'}", call_id=call.id, tool_name=call.name
    )


def _strategy_error(error: Exception, call: ToolCall) -> ToolError:
    wrapped = ToolError(
        f"the approval strategy of tool {call.name!r} raised {type(error).__name__}"
        + (f": {error}" if str(error) else ""),
        call_id=call.id,
        tool_name=call.name,
    )
    wrapped.__cause__ = error
    return wrapped


def _as_tool_error(error: Exception, call: ToolCall) -> ToolError:
    if isinstance(error, ToolError):
        if not error.call_id:
            error.call_id = call.id
        if not error.tool_name:
            error.tool_name = call.name
        return error
    detail = error.message if isinstance(error, AgentError) else str(error)
    message = f"tool {call.name!r} raised {type(error).__name__}" + (
        f": {detail}" if detail else ""
    )
    wrapped = ToolExecutionError(message, call_id=call.id, tool_name=call.name)
    wrapped.__cause__ = error
    return wrapped
