"""Runs past one process, on Redis: a durable event log per run, remote observers with
replay, a worker pool that survives crashes, durable pauses, cancel from anywhere.

Needs the ``redis`` extra (``pip install 'rxagent[redis]'``: redis-py's asyncio client
with hiredis) and a Redis server (6.2 or later; Debian's ``redis-server`` will do)::

    import redis.asyncio as redis
    import rxagent as ra
    from rxagent.redis import RunQueue, Worker, observe

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")

    # in each worker process (or: rxagent worker myapp.agents:agents)
    await Worker(client, agents={"assistant": agent}).run()

    # anywhere else
    queue = RunQueue(client)
    run_id = await queue.submit("assistant", "Weather in Oslo?")
    result = await ra.collect_final(observe(client, run_id))

* Each run's events go to a Redis Stream, ``{prefix}:run:{id}:events`` (entry
  ``0-{n+1}`` is the event of index ``n``), its metadata (status, agent, owner,
  created, last index, the conversation as of its last completed step) to the hash
  ``{prefix}:run:{id}``; both expire ``ttl`` seconds after the run ends.
* :func:`observe` replays a run from any index and follows it live, in any process.
* :class:`RunQueue` submits runs, cancels them and decides their waiting calls;
  :class:`Worker` runs them (a consumer group), and claims the runs of workers that
  stopped heart-beating, resuming each from its last completed step (a ``RunResumed``
  event; the interrupted step's started calls run again with the same call ids, so
  tools get at-least-once calls with :data:`rxagent.tools.current_call` as their
  idempotency key).

Importing ``rxagent`` does not import this module (nor redis-py).
"""

from rxagent.redis._codec import RunMeta, error_of
from rxagent.redis._errors import EventsTrimmed, RedisUnavailable, RunNotFound, UnknownAgent
from rxagent.redis._keys import DEFAULT_PREFIX, Keys
from rxagent.redis._log import DEFAULT_TTL, EventLog, LogSettings
from rxagent.redis._observe import follow, observe
from rxagent.redis._queue import RunQueue, new_run_id
from rxagent.redis._worker import Worker

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_TTL",
    "EventLog",
    "EventsTrimmed",
    "Keys",
    "LogSettings",
    "RedisUnavailable",
    "RunMeta",
    "RunNotFound",
    "RunQueue",
    "UnknownAgent",
    "Worker",
    "error_of",
    "follow",
    "new_run_id",
    "observe",
]
