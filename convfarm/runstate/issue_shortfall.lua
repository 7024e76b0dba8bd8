-- KEYS: the locals <name>_key, from the key tuple of this script in scripts.py
-- ARGV: word per_word max_attempts lease_seconds member_prefix chunk
-- Reserve the attempts a word still needs; atomic, so two producers (or a producer and a
-- collector topping up a forever run) never both issue the same shortfall.
local word = ARGV[1]
local function n(key) return tonumber(redis.call('HGET', key, word) or '0') end
local target = tonumber(meta_field(meta_key, 'target') or ARGV[2])
local issued = n(issued_key)
local missing, room
if issued == 0 then
  -- a word never issued has no accepted, reported or dropped attempt (each counts an issued
  -- one); other words' conversations may have mentioned it (covered)
  missing = target - n(covered_key)
  room = target * tonumber(ARGV[3])
else
  missing = target - n(accepted_key) - n(covered_key) - (issued - n(reported_key))
  room = target * tonumber(ARGV[3]) - (issued - n(dropped_key))
end
if room < missing then missing = room end
-- at most `chunk` attempts per call: one script call must not hold Redis for long (the caller asks again)
if ARGV[6] and missing > tonumber(ARGV[6]) then missing = tonumber(ARGV[6]) end
if missing <= 0 then return {issued, 0} end
redis.call('HINCRBY', issued_key, word, missing)
-- every issued attempt holds a lease from the moment it exists (docs/design.md, "Delivery guarantees")
local deadline = now() + tonumber(ARGV[4])
for a = issued, issued + missing - 1 do
  redis.call('ZADD', leases_key, deadline, ARGV[5] .. word .. '\31' .. a)
end
if issued > 0 then
  -- pending again. A never-issued word is in neither set: short needs an outcome of its own, and
  -- done (covered: cover.lua) would have left nothing missing (advance_round empties both)
  redis.call('SREM', done_key, word)
  redis.call('SREM', short_key, word)
end
return {issued, missing}
