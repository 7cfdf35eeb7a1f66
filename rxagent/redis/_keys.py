"""Where rxagent keeps things in Redis: every key under one prefix."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_PREFIX", "Keys"]

#: The key prefix when none is given.
DEFAULT_PREFIX = "rxagent"


@dataclass(frozen=True)
class Keys:
    """The key names under ``prefix`` (``"rxagent"`` by default).

    * ``{prefix}:run:{id}`` - a hash, the run's metadata (status, agent, owner, ...)
    * ``{prefix}:run:{id}:events`` - a stream, the run's events; entry ``0-{n+1}`` is
      the event of index ``n``
    * ``{prefix}:jobs`` - a stream, the work queue, read by the consumer group ``workers``
    * ``{prefix}:control`` - a Pub/Sub channel: ``{"cancel": run_id}`` asks the worker
      running the run to cancel it; ``{"joined": worker}`` says a worker started
    * ``{prefix}:agents`` - a hash: the agent names workers serve, each with the last
      worker that said so
    * ``{prefix}:workers`` - a hash: the live workers, each with its last heartbeat
    """

    prefix: str = DEFAULT_PREFIX

    def meta(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}"

    def events(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:events"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def group(self) -> str:
        return "workers"

    @property
    def control(self) -> str:
        return f"{self.prefix}:control"

    @property
    def agents(self) -> str:
        return f"{self.prefix}:agents"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"


def keys_of(prefix: str | Keys) -> Keys:
    return prefix if isinstance(prefix, Keys) else Keys(prefix)
