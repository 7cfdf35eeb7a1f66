"""The Lua scripts that keep a run's log consistent: each runs atomically in Redis."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

__all__ = ["Scripts"]

# Appends a batch of events and updates the metadata, if the caller still holds the
# run's lease (fencing: a worker that lost the run to another cannot write to it).
# Events at or below the last index are skipped, so retrying a batch whose reply was
# lost with the connection writes nothing twice.
# With a job id, the job is acknowledged (and deleted) in the same step: the run's
# end and its job's end are one.
#   KEYS: meta, events, jobs
#   ARGV: lease, first index, maxlen (0: none), ttl (>0 expire, -1 persist, 0 keep),
#         n (meta field/value pairs), the pairs..., the events' JSON, one a line (one
#         argument: the client encodes one string, not one per event), the consumer
#         group, the job id to acknowledge ('' for none)
# Returns {last index} or {-1, holder} when the lease is someone else's (or the run is
# gone), {-2, last} when the batch would leave a gap.
APPEND = """
local lease = redis.call('HGET', KEYS[1], 'lease')
if lease ~= ARGV[1] then return {-1, lease or ''} end
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '-1')
local first = tonumber(ARGV[2])
if first > last + 1 then return {-2, last} end
local maxlen = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local pairs_end = 5 + 2 * tonumber(ARGV[5])
local index = first
for event in string.gmatch(ARGV[pairs_end + 1] or '', '[^\\n]+') do
  if index > last then
    local id = '0-' .. string.format('%d', index + 1)
    if maxlen > 0 then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, id, 'e', event)
    else
      redis.call('XADD', KEYS[2], id, 'e', event)
    end
    last = index
  end
  index = index + 1
end
redis.call('HSET', KEYS[1], 'last', last)
for j = 6, pairs_end, 2 do
  redis.call('HSET', KEYS[1], ARGV[j], ARGV[j + 1])
end
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
elseif ttl < 0 then
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
end
local job = ARGV[pairs_end + 3]
if job and job ~= '' then
  redis.call('XACK', KEYS[3], ARGV[pairs_end + 2], job)
  redis.call('XDEL', KEYS[3], job)
end
return {last, ''}
"""

# Takes a run's lease for a worker: fencing off whoever held it before.
#   KEYS: meta
#   ARGV: worker name, job kind ('start' or 'resume'), now
# Returns {attempts, lease, last, cancel, status, the whole hash as field, value, ...},
# or {-1} when the run is gone, or {-2, status} when it has nothing to do (it ended,
# or waits for decisions).
ACQUIRE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {-1} end
if status == 'completed' or status == 'failed' or status == 'cancelled' or status == 'ended'
   or (status == 'paused' and ARGV[2] ~= 'resume') then
  return {-2, status}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local lease = ARGV[1] .. '#' .. attempts
redis.call('HSET', KEYS[1], 'lease', lease, 'worker', ARGV[1], 'updated', ARGV[3])
local last = redis.call('HGET', KEYS[1], 'last') or '-1'
local cancel = redis.call('HGET', KEYS[1], 'cancel') or '0'
return {attempts, lease, last, cancel, status, redis.call('HGETALL', KEYS[1])}
"""

# Records the decisions on a paused run and enqueues its resume: replaces its
# conversation if it is unchanged since it was read (so two deciders at once cannot
# lose a decision).
#   KEYS: meta, jobs, events
#   ARGV: the conversation read, the decided one, run id, now
# Returns {1, last index}, or {0} when the conversation changed meanwhile, or {-1} when
# the run is not paused (any more), or its resume is queued already.
DECIDE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'paused' then return {-1} end
if redis.call('HGET', KEYS[1], 'resuming') == '1' then return {-1} end
if redis.call('HGET', KEYS[1], 'snapshot') ~= ARGV[1] then return {0} end
redis.call('HSET', KEYS[1], 'snapshot', ARGV[2], 'updated', ARGV[4], 'resuming', '1')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[3])
redis.call('XADD', KEYS[2], '*', 'run', ARGV[3], 'kind', 'resume')
return {1, tonumber(redis.call('HGET', KEYS[1], 'last') or '-1')}
"""


class Scripts:
    """The scripts, registered on one client (redis-py loads them again after a restart)."""

    def __init__(self, client: Redis) -> None:
        self.append: AsyncScript = client.register_script(APPEND)
        self.acquire: AsyncScript = client.register_script(ACQUIRE)
        self.decide: AsyncScript = client.register_script(DECIDE)
