-- Enqueue a job: its stream entry and its record ('queued'), both or neither.
-- KEYS: 1 jobs stream, 2 job hash
-- ARGV: 1 job JSON, 2 record ttl seconds, 3 adapter ('' = base model), 4 created_at
--       (epoch s), 5 metadata JSON ('' = none), 6 owner ('' = none: a digest of the HTTP
--       API key that submitted the job; only that key reads it)
-- Returns 1 when the job was enqueued, 0 when a record with this id already exists.
-- All or nothing: every check comes before the first write, and XADD (which fails on a
-- jobs key of another type) is the first write, so an error leaves nothing behind. A
-- script that has started writing is not stopped by maxmemory either.
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
