-- Append a chunk of generated text to a job's events stream, from the attempt running it.
-- KEYS: 1 job hash, 2 job events
-- ARGV: 1 text, 2 now, 3 the attempt that made the text, 4 bytes of text that attempt
--       had streamed before this chunk
-- The record's 'streamed' field counts the bytes the running attempt has in the stream
-- (mark.lua sets it to 0 at each start). A chunk sent again after its reply was lost
-- (Redis went away) is therefore written once: the bytes already there are skipped.
-- Returns 1 when the stream has the text; 0 when the job has ended or another attempt
-- has started since (a consumer paused past the visibility timeout, then resumed): that
-- text is not the job's any more, and a reader must not find it after the end or the
-- new start.
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
    or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[3] then
  return 0
end
local have = tonumber(redis.call('HGET', KEYS[1], 'streamed') or '0')
local offset = tonumber(ARGV[4])
local text = string.sub(ARGV[1], math.max(have - offset, 0) + 1)
if text ~= '' then
  redis.call('XADD', KEYS[2], '*', 'event', 'chunk', 'text', text, 'ts', ARGV[2])
end
redis.call('HSET', KEYS[1], 'streamed', math.max(have, offset + #ARGV[1]))
return 1
