"""Lua scripts of the producer: each multi-key change runs as one atomic script.

All keys go in ``KEYS`` so that a prefix in braces keeps them in one Redis Cluster slot.
"""

from __future__ import annotations

from schemas.codec import as_text
from schemas.records import FINAL_STATUSES, JobStatus

# KEYS: 1 = {P}:jobs, 2 = {P}:job:{id}
# ARGV: 1 = job JSON, 2 = TTL of the record (s), 3 = adapter ("" = base model),
#       4 = created_at (epoch s), 5 = metadata JSON ("" = none), 6 = owner ("" = none:
#       a digest of the HTTP API key that submitted the job; only that key reads it)
# Returns 1 when the job was enqueued, 0 when a record with this id already exists.
#
# All or nothing: every check comes before the first write, and XADD (which fails on a
# {P}:jobs key of another type) is the first write, so an error leaves nothing behind.
# A script that has started writing is not stopped by maxmemory either.
ENQUEUE = """
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind == 'hash' then
  return 0
end
if kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' is a ' .. kind .. ', not a job record')
end
local entry = redis.call('XADD', KEYS[1], '*', 'job', ARGV[1])
-- The entry owns the id: a raw push that reuses it cannot replace this job's answer.
redis.call('HSET', KEYS[2], 'status', 'queued', 'adapter', ARGV[3],
           'created_at', ARGV[4], 'attempts', '0', 'entry', entry)
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[2], 'metadata', ARGV[5])
end
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[2], 'owner', ARGV[6])
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: 1 = {P}:job:{id}, 2 = {P}:cancel:{id}
# ARGV: 1 = the owner the record must have ('' = any), 2.. = the final statuses
# Returns the job's status before the call: '' when there is no record (or it has another
# owner), so nothing was asked. The flag is set only for a job that exists and has not
# ended, and expires with the record: a flag for an id with no job would cancel a job
# submitted later under that id, before it ever ran. (A job sent by a plain client has no
# record until a worker takes it: it can be cancelled from then on.) The final write
# deletes the flag.
CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return ''
end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return ''
end
for i = 2, #ARGV do
  if status == ARGV[i] then
    return status
  end
end
local ttl_ms = redis.call('PTTL', KEYS[1])
if ttl_ms > 0 then
  redis.call('SET', KEYS[2], '1', 'PX', ttl_ms)
else
  -- A record without a TTL (written by hand): the flag goes when the job ends.
  redis.call('SET', KEYS[2], '1')
end
return status
"""


def cancel_args(owner: str | None = None) -> list[str]:
    """ARGV of :data:`CANCEL`: ``owner`` is the record's ``owner`` it must match."""
    return [owner or "", *sorted(status.value for status in FINAL_STATUSES)]


def cancel_took_effect(reply: str | bytes) -> bool:
    """Whether :data:`CANCEL` found a job that exists and has not ended."""
    return as_text(reply) != "" and not JobStatus(as_text(reply)).is_final
