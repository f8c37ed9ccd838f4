-- A job admitted by slots_acquire.lua has ended: one job fewer of its adapter on its
-- replica, and the adapter's slot free once none is left (protocol v1.4).
-- KEYS: 1 slots hash
-- ARGV: 1 field ("<replica>\t<holder>\t<adapter>")
-- Returns the jobs left under that field.
local left = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if left <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return left
