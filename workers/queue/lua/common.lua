-- Shared by every loraq queue script (prepended when the script is registered).
local FINAL = {succeeded = true, failed = true, cancelled = true, expired = true}

-- One status change: the job's own events stream and the capped stream of all jobs.
local function add_status_event(job_events, all_events, maxlen, job_id, status, adapter, ts)
  redis.call('XADD', job_events, '*', 'event', 'status', 'status', status, 'ts', ts)
  redis.call('XADD', all_events, 'MAXLEN', '~', maxlen, '*',
    'id', job_id, 'status', status, 'adapter', adapter, 'ts', ts)
end
