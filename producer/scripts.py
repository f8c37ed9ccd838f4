"""Lua scripts of the producer: each multi-key change runs as one atomic script.

All keys go in ``KEYS`` so that a prefix in braces keeps them in one Redis Cluster slot.
"""

from __future__ import annotations

from schemas.codec import as_text
from schemas.records import FINAL_STATUSES, JobStatus

# KEYS: 1 = {P}:jobs, 2 = {P}:job:{id}
# ARGV: 1 = job JSON, 2 = TTL of the record (s), 3 = adapter ("" = base model),
#       4 = created_at (epoch s), 5 = metadata JSON ("" = none)
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
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: 1 = {P}:job:{id}, 2 = {P}:cancel:{id}
# ARGV: 1 = TTL of the cancel flag (s), 2.. = the final statuses
# Returns the job's status before the call ("" when there is no record yet). The flag is
# set unless the job has already ended: a job sent by a plain client has no record until a
# worker takes it, and the flag still stops it then.
CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status') or ''
for i = 2, #ARGV do
  if status == ARGV[i] then
    return status
  end
end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
return status
"""


def cancel_args(flag_ttl_s: int) -> list[str]:
    """ARGV of :data:`CANCEL`."""
    return [str(flag_ttl_s), *sorted(status.value for status in FINAL_STATUSES)]


def cancel_took_effect(reply: str | bytes) -> bool:
    """Whether :data:`CANCEL` found a job that exists and has not ended."""
    return as_text(reply) != "" and not JobStatus(as_text(reply)).is_final
