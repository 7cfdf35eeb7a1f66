"""Pipeable operators: each a function returning ``Callable[[Observable], Observable]``.

* :func:`step` - one provider turn and its tools, for each conversation
  (:func:`steps_of` takes its options as one :class:`StepConfig`).
* :func:`fan_out_tools` - tool calls in, ``ToolCallStarted``/``ToolProgress``/
  ``ToolCallEnded`` out, concurrently, ends in call order.
* :func:`until` - mirror step events until a policy says stop, then ``RunCompleted``.
* :func:`loop` - feed each step's conversation back into ``step`` until the policy stops.
* :func:`tap` - tee every event to an observer or function that cannot break the run.
* :func:`isolate` - a slow observer behind a bounded buffer, off the run's hot path.
* :func:`within` - a source bounded in time as a whole (tool timeouts).
* :func:`text` - the assistant's text pieces as strings.
* :func:`collect_final` - the final ``AgentRun``.
* :func:`materialize` - ``on_error`` as a ``RunFailed`` event.

``Agent`` is sugar over them: ``loop(step(provider, tools=...), policy)``.
"""

from rxagent.ops._collect import collect_final
from rxagent.ops._fan_out import fan_out_tools, within
from rxagent.ops._isolate import ObserverOverflow, Overflow, isolate
from rxagent.ops._materialize import materialize
from rxagent.ops._step import StepConfig, step, steps_of
from rxagent.ops._tap import tap
from rxagent.ops._text import text
from rxagent.ops._until import loop, until

__all__ = [
    "ObserverOverflow",
    "Overflow",
    "StepConfig",
    "collect_final",
    "fan_out_tools",
    "isolate",
    "loop",
    "materialize",
    "step",
    "steps_of",
    "tap",
    "text",
    "until",
    "within",
]
