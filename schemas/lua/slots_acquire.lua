-- Admit one consumer's planned jobs onto model replicas, each job admitted or refused on
-- its own: a replica never holds jobs of more distinct adapters than its device slots,
-- nor more jobs than its cap, counting the jobs of every consumer (protocol v1.4). This
-- is the slot rule that several consumers keep together; docs/SERVING.md has the design.
-- KEYS: 1 slots hash (field "<replica>\t<holder>\t<adapter>" -> jobs in flight; adapter
--       '' is the base model), 2 holders hash (holder -> lease expiry, epoch ms)
-- ARGV: 1 holder, 2 now (epoch ms), 3 lease (ms), then per job four values: replica,
--       adapter ('' for the base model), the replica's slots, its job cap
-- Returns one 1 (admitted and counted) or 0 (refused) per job, in order.
local holder, now = ARGV[1], tonumber(ARGV[2])
redis.call('HSET', KEYS[2], holder, now + tonumber(ARGV[3]))
-- A holder whose lease ran out (its consumer died) holds nothing any more.
local live = {}
local holders = redis.call('HGETALL', KEYS[2])
for i = 1, #holders, 2 do
  if tonumber(holders[i + 1]) >= now then
    live[holders[i]] = true
  else
    redis.call('HDEL', KEYS[2], holders[i])
  end
end
local held, distinct, jobs = {}, {}, {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local replica, owner, adapter = string.match(fields[i], '^([^\t]*)\t([^\t]*)\t(.*)$')
  if replica and live[owner] then
    held[replica] = held[replica] or {}
    local before = held[replica][adapter] or 0
    if before == 0 and adapter ~= '' then
      distinct[replica] = (distinct[replica] or 0) + 1
    end
    held[replica][adapter] = before + tonumber(fields[i + 1])
    jobs[replica] = (jobs[replica] or 0) + tonumber(fields[i + 1])
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
local admitted = {}
for i = 4, #ARGV, 4 do
  local replica, adapter = ARGV[i], ARGV[i + 1]
  local slots, cap = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  held[replica] = held[replica] or {}
  local count = held[replica][adapter] or 0
  local new = adapter ~= '' and count == 0
  if (jobs[replica] or 0) < cap and (not new or (distinct[replica] or 0) < slots) then
    if new then
      distinct[replica] = (distinct[replica] or 0) + 1
    end
    held[replica][adapter] = count + 1
    jobs[replica] = (jobs[replica] or 0) + 1
    redis.call('HINCRBY', KEYS[1], replica .. '\t' .. holder .. '\t' .. adapter, 1)
    admitted[#admitted + 1] = 1
  else
    admitted[#admitted + 1] = 0
  end
end
return admitted
