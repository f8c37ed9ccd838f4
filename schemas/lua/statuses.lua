-- The job state machine: which status may follow which. Generated from
-- schemas/records.py (TRANSITIONS) by `python -m schemas.export`: edit that,
-- not this file. A test runs the scripts against it.
-- NEXT[''] is a job with no record yet (pushed with plain XADD).
local NEXT = {
  [''] = {queued = true, running = true, succeeded = true, failed = true, cancelled = true, expired = true},
  queued = {queued = true, running = true, succeeded = true, failed = true, cancelled = true, expired = true},
  running = {queued = true, running = true, succeeded = true, failed = true, cancelled = true, expired = true},
  succeeded = {},
  failed = {},
  cancelled = {},
  expired = {},
}

-- Whether a record in status `current` (false: none) may move to `new`. A status
-- the machine does not know (a record written by hand) counts as none.
local function can_move(current, new)
  return (NEXT[current] or NEXT[''])[new] == true
end
