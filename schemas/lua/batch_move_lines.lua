-- A batch written before v1.3 keeps its lines as one JSON array in the hash's `lines`
-- field: they move to the list, once, so that it is read a slice at a time like the
-- others. Returns how many lines moved.
-- KEYS: 1 {P}:batch:{id}, 2 {P}:batch:{id}:lines
-- ARGV: (none)
local raw = redis.call('HGET', KEYS[1], 'lines')
if not raw then
  return 0
end
local lines = cjson.decode(raw)
for i = 1, #lines do
  redis.call('RPUSH', KEYS[2], cjson.encode(lines[i]))
end
redis.call('HDEL', KEYS[1], 'lines')
local ttl = redis.call('TTL', KEYS[1])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[2], ttl)
end
return #lines
