-- Write a new batch with its TTL and list it: in the listing of every batch, in the
-- listing of the open ones (what the gateway's sweep reads), and in its owner's listing.
-- The lines are not here: they are appended to {P}:batch:{id}:lines as they are checked.
-- KEYS: 1 {P}:batch:{id}, 2 {P}:batches, 3 {P}:batches:open, 4 (when the batch has an
--       owner) {P}:batches:owner:{owner}
-- ARGV: 1 batch JSON, 2 status, 3 owner ('' = none), 4 TTL (s), 5 creation time (epoch s,
--       fractional), 6 the oldest creation time still alive (older ids leave the listings:
--       their hashes have expired), 7 the batch id
redis.call('HSET', KEYS[1], 'batch', ARGV[1], 'status', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'owner', ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
for k = 2, #KEYS do
  redis.call('ZADD', KEYS[k], ARGV[5], ARGV[7])
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', '(' .. ARGV[6])
  redis.call('EXPIRE', KEYS[k], ARGV[4], 'GT')
  redis.call('EXPIRE', KEYS[k], ARGV[4], 'NX')
end
return 1
