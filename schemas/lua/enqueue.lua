-- Enqueue a job: its stream entry and its record ('queued'), both or neither.
-- KEYS: 1 jobs stream, 2 job hash, 3 (only with a rate per tenant) the job's tenant's
--       token bucket, a hash of 'tokens' and 'ts' (ms)
-- ARGV: 1 job JSON, 2 record ttl seconds, 3 adapter ('' = base model), 4 created_at
--       (epoch s), 5 metadata JSON ('' = none), 6 owner ('' = none: a digest of the HTTP
--       API key that submitted the job; only that key reads it), 7 and 8 (with KEYS[3])
--       the tenant's rate (jobs/s) and burst (jobs)
-- Returns 1 when the job was enqueued, 0 when a record with this id already exists, and
-- -N when the tenant is over its rate: nothing is written, a token is there in N ms.
-- The bucket is read and refilled here, atomically with the enqueue, on Redis's clock
-- (TIME): producers on many machines share one rate.
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
local rate, burst, now_ms, tokens
if KEYS[3] then
  rate, burst = tonumber(ARGV[7]), tonumber(ARGV[8])
  local time = redis.call('TIME')
  now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local bucket = redis.call('HMGET', KEYS[3], 'tokens', 'ts')
  local last = tonumber(bucket[2]) or now_ms
  tokens = math.min(burst, (tonumber(bucket[1]) or burst) + (now_ms - last) * rate / 1000)
  if tokens < 1 then
    return -math.max(1, math.ceil((1 - tokens) * 1000 / rate))
  end
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
if KEYS[3] then
  -- Stored as text: a float reply would be cut to an integer, a float argument is kept.
  redis.call('HSET', KEYS[3], 'tokens', tostring(tokens - 1), 'ts', now_ms)
  -- Gone once full again: a full bucket and no bucket read the same.
  redis.call('PEXPIRE', KEYS[3], math.ceil(burst * 1000 / rate) + 1000)
end
return 1
