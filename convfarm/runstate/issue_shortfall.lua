-- KEYS: accepted issued reported dropped covered meta done short leases
-- ARGV: word per_word max_attempts lease_seconds member_prefix
-- Reserve the attempts a word still needs; atomic, so two producers (or a producer and a
-- collector topping up a forever run) never both issue the same shortfall.
local word = ARGV[1]
local function n(key) return tonumber(redis.call('HGET', key, word) or '0') end
local target = tonumber(redis.call('HGET', KEYS[6], 'target') or ARGV[2])
local issued = n(KEYS[2])
local missing = target - n(KEYS[1]) - n(KEYS[5]) - (issued - n(KEYS[3]))
local room = target * tonumber(ARGV[3]) - (issued - n(KEYS[4]))
if room < missing then missing = room end
if missing <= 0 then return {issued, 0} end
redis.call('HINCRBY', KEYS[2], word, missing)
-- every issued attempt holds a lease from the moment it exists (docs/design.md, "Delivery guarantees")
local t = redis.call('TIME')
local deadline = tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[4])
for a = issued, issued + missing - 1 do
  redis.call('ZADD', KEYS[9], deadline, ARGV[5] .. word .. '\31' .. a)
end
redis.call('SREM', KEYS[7], word)
redis.call('SREM', KEYS[8], word)
return {issued, missing}
