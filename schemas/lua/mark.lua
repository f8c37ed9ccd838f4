-- Move a job to a non-final status ('running' or back to 'queued').
-- KEYS: 1 job hash, 2 job events, 3 all events, 4 cancel key
-- ARGV: 1 job id, 2 status, 3 adapter, 4 consumer (stored as the record's field 'worker'),
--       5 now, 6 created_at (used if the hash has none: a job pushed without a record),
--       7 record ttl seconds, 8 events maxlen, 9 max attempts, 10 the stream entry id
-- Returns {outcome, value}: {'final', status} when the job already ended, so that it cannot
-- move to ARGV 2 (can_move, statuses.lua; nothing changed);
-- {'cancel', ''} when cancellation was asked; {'exhausted', attempts} when 'running' was
-- asked for a job started max-attempts times already; {'refused', why} when the job's
-- keys cannot hold its record (see job_keys_problem); otherwise {'ok', attempts}.
local problem = job_keys_problem(KEYS[1], KEYS[2], ARGV[1], ARGV[10])
if problem then
  return {'refused', problem}
end
local current = redis.call('HGET', KEYS[1], 'status')
if not can_move(current, ARGV[2]) then
  return {'final', current}
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return {'cancel', ''}
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
local started = nil
if ARGV[2] == 'running' then
  if attempts >= tonumber(ARGV[9]) then
    return {'exhausted', tostring(attempts)}
  end
  attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  started = tostring(attempts)
  redis.call('HSET', KEYS[1], 'started_at', ARGV[5], 'streamed', '0')
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'adapter', ARGV[3], 'worker', ARGV[4])
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[6])
redis.call('HSETNX', KEYS[1], 'entry', ARGV[10])
redis.call('EXPIRE', KEYS[1], ARGV[7])
add_status_event(KEYS[2], KEYS[3], ARGV[8], ARGV[1], ARGV[2], ARGV[3], ARGV[5], started)
redis.call('EXPIRE', KEYS[2], ARGV[7])
return {'ok', tostring(attempts)}
