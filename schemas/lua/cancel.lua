-- Ask a job to stop: set its cancel flag, if it can still be cancelled (can_move,
-- statuses.lua). The flag is set only for a job that exists and has not ended, and
-- expires with the record: a flag for an id with no job would cancel a job submitted
-- later under that id, before it ever ran. (A job sent by a plain client has no record
-- until a consumer takes it: it can be cancelled from then on.) The final write deletes
-- the flag.
-- KEYS: a pair per job: its hash, then its cancel key
-- ARGV: 1 the owner each record must have ('' = any)
-- Returns each job's status before the call, in KEYS order: '' when there is no record
-- (or it has another owner), so nothing was asked.
local function cancel(record, flag)
  local status = redis.call('HGET', record, 'status')
  if not status then
    return ''
  end
  if ARGV[1] ~= '' and redis.call('HGET', record, 'owner') ~= ARGV[1] then
    return ''
  end
  if not can_move(status, 'cancelled') then
    return status
  end
  local ttl_ms = redis.call('PTTL', record)
  if ttl_ms > 0 then
    redis.call('SET', flag, '1', 'PX', ttl_ms)
  else
    -- A record without a TTL (written by hand): the flag goes when the job ends.
    redis.call('SET', flag, '1')
  end
  return status
end

local before = {}
for i = 1, #KEYS, 2 do
  before[#before + 1] = cancel(KEYS[i], KEYS[i + 1])
end
return before
