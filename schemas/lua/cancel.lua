-- Ask a job to stop: set its cancel flag, if it can still be cancelled (can_move,
-- statuses.lua). The flag is set only for a job that exists and has not ended, and
-- expires with the record: a flag for an id with no job would cancel a job submitted
-- later under that id, before it ever ran. (A job sent by a plain client has no record
-- until a worker takes it: it can be cancelled from then on.) The final write deletes
-- the flag.
-- KEYS: 1 job hash, 2 cancel key
-- ARGV: 1 the owner the record must have ('' = any)
-- Returns the job's status before the call: '' when there is no record (or it has another
-- owner), so nothing was asked.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return ''
end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return ''
end
if not can_move(status, 'cancelled') then
  return status
end
local ttl_ms = redis.call('PTTL', KEYS[1])
if ttl_ms > 0 then
  redis.call('SET', KEYS[2], '1', 'PX', ttl_ms)
else
  -- A record without a TTL (written by hand): the flag goes when the job ends.
  redis.call('SET', KEYS[2], '1')
end
return status
