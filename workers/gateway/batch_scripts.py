"""Lua scripts of the Batch API: each multi-key change of a batch runs as one script.

All keys go in ``KEYS``, so a prefix in braces keeps them in one Redis Cluster slot.
"""

from __future__ import annotations

# KEYS: 1 = {P}:file:{id}
# ARGV: 1 = meta JSON, 2 = content, 3 = owner ('' = none), 4 = TTL (s)
# A file is written whole with its TTL, or not at all: nothing of it lives for ever.
PUT_FILE = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'meta', ARGV[1], 'content', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'owner', ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS: 1 = {P}:batch:{id}, 2 = {P}:batches, 3 (when the batch has an owner) =
#       {P}:batches:owner:{owner}, the owner's own listing
# ARGV: 1 = batch JSON, 2 = status, 3 = owner ('' = none), 4 = TTL (s),
#       5 = creation time (epoch s, fractional), 6 = the oldest creation time still alive
#       (older ids leave the listings: their hashes have expired), 7 = the batch id
# The lines are not here: they are appended to {P}:batch:{id}:lines as they are checked.
CREATE_BATCH = """
redis.call('HSET', KEYS[1], 'batch', ARGV[1], 'status', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'owner', ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
for k = 2, #KEYS do
  redis.call('ZADD', KEYS[k], ARGV[5], ARGV[7])
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', '(' .. ARGV[6])
  redis.call('EXPIRE', KEYS[k], ARGV[4], 'GT')
  redis.call('EXPIRE', KEYS[k], ARGV[4], 'NX')
end
return 1
"""

# KEYS: the listings an expired batch may still be in ({P}:batches, its owner's)
# ARGV: the ids of batches whose hashes have expired
FORGET_BATCHES = """
for k = 1, #KEYS do
  redis.call('ZREM', KEYS[k], unpack(ARGV))
end
return 1
"""

# KEYS: 1 = {P}:batch:{id}, then optional {P}:file:{output id}, {P}:file:{error id}
# ARGV: 1 = new batch JSON, 2 = new status, 3 = owner ('' = none),
#       4..7 = a (meta, content) pair per file key, in KEYS order, padded to two pairs,
#       8.. = the statuses the batch may be in now
# Returns 1 when the batch moved, 0 when it was in another status (a concurrent reader
# moved it first: its files were written then, and these are dropped). The files live
# as long as the batch does.
UPDATE_BATCH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return 0
end
local allowed = false
for i = 8, #ARGV do
  if status == ARGV[i] then
    allowed = true
  end
end
if not allowed then
  return 0
end
local ttl = redis.call('TTL', KEYS[1])
for k = 2, #KEYS do
  local meta, content = ARGV[2 * k], ARGV[2 * k + 1]
  redis.call('HSET', KEYS[k], 'meta', meta, 'content', content)
  if ARGV[3] ~= '' then
    redis.call('HSET', KEYS[k], 'owner', ARGV[3])
  end
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[k], ttl)
  end
end
redis.call('HSET', KEYS[1], 'batch', ARGV[1], 'status', ARGV[2])
return 1
"""

# KEYS: 1 = {P}:batch:{id}, 2 = {P}:batch:{id}:lines
# ARGV: (none)
# A batch written before v1.3 keeps its lines as one JSON array in the hash's `lines`
# field: they move to the list, once, so that it is read a slice at a time like the
# others. Returns how many lines moved.
MOVE_LEGACY_LINES = """
local raw = redis.call('HGET', KEYS[1], 'lines')
if not raw then
  return 0
end
local lines = cjson.decode(raw)
for i = 1, #lines do
  redis.call('RPUSH', KEYS[2], cjson.encode(lines[i]))
end
redis.call('HDEL', KEYS[1], 'lines')
local ttl = redis.call('TTL', KEYS[1])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[2], ttl)
end
return #lines
"""
