-- Append a chunk of generated text to a job's events stream, from the attempt running it.
-- KEYS: 1 job hash, 2 job events
-- ARGV: 1 text, 2 now, 3 the attempt that made the text, 4 bytes of text that attempt
--       had streamed before this chunk
-- A chunk sent again after its reply was lost (Redis went away) is written once
-- (append_text).
-- Returns 1 when the stream has the text; 0 when the job has ended or another attempt
-- has started since (a consumer paused past the visibility timeout, then resumed): that
-- text is not the job's any more, and a reader must not find it after the end or the
-- new start.
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
    or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[3] then
  return 0
end
append_text(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[4]), ARGV[2])
return 1
