-- Store a job's final status, its terminal event, and acknowledge its stream entry: the
-- one write that ends a job. It writes only when the job may still move to that status
-- (can_move, statuses.lua: not once it has ended), so a job delivered twice (a slow
-- consumer that resumed) keeps its first answer; the second writer still acknowledges
-- its entry.
-- KEYS: 1 job hash, 2 job events, 3 all events, 4 jobs stream, 5 dead-letter stream,
--       6 the job's cancel flag (deleted: a flag never outlives its job)
-- ARGV: 1 group, 2 entry id, 3 job id, 4 final status, 5 adapter, 6 now,
--       7 created_at (used if the hash has none), 8 result ttl seconds, 9 events maxlen,
--       10 '1' to copy the job to the dead-letter stream, 11 its original payload
--       (already cut to the dead letters' byte limit), 12 its error JSON, 13 the
--       result's text, 14 the attempt that made it ('' when none ran), 15 dead-letter
--       stream maxlen (approximate, like {P}:events), 16.. more record fields as name,
--       value pairs
-- The events stream is completed so that its chunks after the latest 'running' entry are
-- the result: the text it lacks (chunks an outage held back; the record's 'streamed'
-- bytes are there) goes in as one last chunk. When another attempt has started since the
-- writer's (its entry was reclaimed while this one held its answer through an outage),
-- the writer's answer stands: the stream restarts with a 'running' entry of the writer's
-- attempt and the whole text.
-- Returns {1, status} when written, {0, existing status} when the job was already final,
-- {0, ''} when its keys could not take the record (job_keys_problem): the entry is then
-- dead-lettered under its entry id, with the problem, and acknowledged.
local problem = job_keys_problem(KEYS[1], KEYS[2], ARGV[3], ARGV[2])
if problem then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[15], '*', 'id', ARGV[2], 'entry', ARGV[2],
    'payload', ARGV[11],
    'error', cjson.encode({type = 'validation', message = problem}), 'cause', ARGV[12],
    'attempts', '0', 'ts', ARGV[6])
  redis.call('XACK', KEYS[4], ARGV[1], ARGV[2])
  return {0, ''}
end
local current = redis.call('HGET', KEYS[1], 'status')
if not can_move(current, ARGV[4]) then
  redis.call('XACK', KEYS[4], ARGV[1], ARGV[2])
  return {0, current}
end
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'adapter', ARGV[5], 'finished_at', ARGV[6])
if ARGV[14] ~= '' then
  if redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[14] then
    -- The stream starts again, which is no status change: {P}:events does not hear of it.
    add_job_status(KEYS[2], 'running', ARGV[6], ARGV[14])
    redis.call('HSET', KEYS[1], 'streamed', '0')
  end
  append_text(KEYS[1], KEYS[2], ARGV[13], 0, ARGV[6])
end
if #ARGV >= 16 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 16))
end
redis.call('DEL', KEYS[6])
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[7])
redis.call('HSETNX', KEYS[1], 'entry', ARGV[2])
add_status_event(KEYS[2], KEYS[3], ARGV[9], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('EXPIRE', KEYS[2], ARGV[8])
if ARGV[10] == '1' then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[15], '*', 'id', ARGV[3], 'entry', ARGV[2],
    'payload', ARGV[11],
    'error', ARGV[12], 'attempts', redis.call('HGET', KEYS[1], 'attempts') or '0',
    'ts', ARGV[6])
end
redis.call('XACK', KEYS[4], ARGV[1], ARGV[2])
return {1, ARGV[4]}
