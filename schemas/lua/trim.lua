-- Trim {P}:jobs of entries the group is done with: below both the oldest pending entry
-- and the first entry never delivered. Plain MAXLEN trimming would drop pending entries.
-- KEYS: 1 jobs stream
-- ARGV: 1 group
-- Returns the number of entries removed (0 when the stream or the group does not exist).

-- Stream ids as {ms, seq}; both stay below 2^53 in practice, so Lua numbers hold them.
local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return {tonumber(ms), tonumber(seq)}
end

local function is_before(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local last_delivered = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local fields = {}
  for i = 1, #group, 2 do
    fields[group[i]] = group[i + 1]
  end
  if fields['name'] == ARGV[1] then
    last_delivered = fields['last-delivered-id']
  end
end
if not last_delivered then
  return 0
end
local first_undelivered = parse_id(last_delivered)
first_undelivered[2] = first_undelivered[2] + 1
local keep_from = first_undelivered
local oldest_pending = redis.call('XPENDING', KEYS[1], ARGV[1])[2]
if oldest_pending then
  local pending = parse_id(oldest_pending)
  if is_before(pending, keep_from) then
    keep_from = pending
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID',
  string.format('%.0f-%.0f', keep_from[1], keep_from[2]))
