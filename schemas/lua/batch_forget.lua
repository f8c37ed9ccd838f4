-- Drop batches from listings: expired ones from every listing they may still be in, or
-- ended ones from the listing of open batches.
-- KEYS: the listings ({P}:batches, {P}:batches:open, an owner's)
-- ARGV: the batch ids
for k = 1, #KEYS do
  redis.call('ZREM', KEYS[k], unpack(ARGV))
end
return 1
