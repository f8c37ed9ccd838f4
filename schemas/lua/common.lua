-- Shared by every loraq queue script (prepended, after statuses.lua, when the script is
-- registered: schemas/scripts.py).

-- A status entry in the job's own events stream. attempt (optional, with 'running'):
-- which start of the job this is. A job run again after its replica died streams its text
-- from the start, and readers of its events must know to drop what the earlier attempt
-- streamed.
local function add_job_status(job_events, status, ts, attempt)
  if attempt then
    redis.call('XADD', job_events, '*', 'event', 'status', 'status', status, 'ts', ts,
      'attempt', attempt)
  else
    redis.call('XADD', job_events, '*', 'event', 'status', 'status', status, 'ts', ts)
  end
end

-- One status change: the job's own events stream and the capped stream of all jobs.
local function add_status_event(job_events, all_events, maxlen, job_id, status, adapter, ts,
                                attempt)
  add_job_status(job_events, status, ts, attempt)
  redis.call('XADD', all_events, 'MAXLEN', '~', maxlen, '*',
    'id', job_id, 'status', status, 'adapter', adapter, 'ts', ts)
end

-- Append to a job's events stream what it lacks of `text`, the running attempt's text
-- from byte `offset` on. The record's 'streamed' field counts the bytes that attempt has
-- in the stream (0 at each start), so text sent again after a lost reply is written once.
local function append_text(record, job_events, text, offset, ts)
  local have = tonumber(redis.call('HGET', record, 'streamed') or '0')
  local new = string.sub(text, math.max(have - offset, 0) + 1)
  if new ~= '' then
    redis.call('XADD', job_events, '*', 'event', 'chunk', 'text', new, 'ts', ts)
  end
  redis.call('HSET', record, 'streamed', math.max(have, offset + #text))
end

-- Why a job's keys cannot take its record, or nil. An id chosen to land on another key of
-- the queue (the id 'x:events' names job x's events stream) would make a write fail half
-- way, or take the key before job x needs it; another stream entry that already owns the id must not have its answer replaced.
local function job_keys_problem(record, events, job_id, entry)
  local record_type = redis.call('TYPE', record)['ok']
  local events_type = redis.call('TYPE', events)['ok']
  if (record_type ~= 'hash' and record_type ~= 'none')
      or (events_type ~= 'stream' and events_type ~= 'none')
      or string.sub(job_id, -7) == ':events' then
    return 'job id ' .. job_id .. ' clashes with another key of the queue'
  end
  -- An id shaped like a stream entry ID is the entry's own, or it squats on the record of
  -- a plain producer's job (one sent without an id) that gets that entry ID later.
  if job_id ~= entry and string.match(job_id, '^%d+%-%d+$') then
    return 'job id ' .. job_id .. ' has the shape of a stream entry ID (<digits>-<digits>)'
      .. ', which only a job sent without an id may have'
  end
  local owner = redis.call('HGET', record, 'entry')
  if owner and owner ~= entry then
    return 'job id ' .. job_id .. ' is already used by stream entry ' .. owner
  end
  return nil
end
