-- Move a batch to a new status (and write its output and error files with it) if it is
-- still in one of the statuses the caller read; a batch that ends leaves the listing of
-- open batches. The files live as long as the batch does.
-- KEYS: 1 {P}:batch:{id}, 2 {P}:batches:open, then optional {P}:file:{output id},
--       {P}:file:{error id}
-- ARGV: 1 new batch JSON, 2 new status, 3 owner ('' = none), 4 the batch id when the new
--       status is final ('' otherwise), 5..8 a (meta, content) pair per file key, in KEYS order, padded to two
--       pairs, 9.. the statuses the batch may be in now
-- Returns 1 when the batch moved, 0 when it was in another status (a concurrent reader
-- moved it first: its files were written then, and these are dropped).
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return 0
end
local allowed = false
for i = 9, #ARGV do
  if status == ARGV[i] then
    allowed = true
  end
end
if not allowed then
  return 0
end
local ttl = redis.call('TTL', KEYS[1])
for k = 3, #KEYS do
  local meta, content = ARGV[2 * k - 1], ARGV[2 * k]
  redis.call('HSET', KEYS[k], 'meta', meta, 'content', content)
  if ARGV[3] ~= '' then
    redis.call('HSET', KEYS[k], 'owner', ARGV[3])
  end
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[k], ttl)
  end
end
redis.call('HSET', KEYS[1], 'batch', ARGV[1], 'status', ARGV[2])
if ARGV[4] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[4])
end
return 1
