-- Renew the lease of a consumer's in-flight entries: reset their idle time without
-- bumping their delivery count (XCLAIM ... JUSTID), but only for entries this consumer
-- still owns, so a consumer that was paused cannot take back what another reclaimed.
-- KEYS: 1 jobs stream
-- ARGV: 1 group, 2 consumer, 3.. entry ids
-- Returns the ids no longer owned by this consumer (acknowledged, or reclaimed).
local lost = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
