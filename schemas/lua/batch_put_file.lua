-- Write a Batch API file whole with its TTL, or not at all: nothing of it lives for ever.
-- KEYS: 1 {P}:file:{id}
-- ARGV: 1 meta JSON, 2 content, 3 owner ('' = none), 4 TTL (s)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'meta', ARGV[1], 'content', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'owner', ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
