-- KEYS: the locals <name>_key, from the key tuple of this script in scripts.py
-- ARGV: word per_word max_attempts lease_seconds member_prefix chunk
-- Reserve the attempts a word still needs; atomic, so two producers (or a producer and a
-- collector topping up a forever run) never both issue the same shortfall.
local word = ARGV[1]
local function n(key) return tonumber(redis.call('HGET', key, word) or '0') end
local target = tonumber(meta_field(meta_key, 'target') or ARGV[2])
-- a new run's first enqueue finds no issued and no covered hash: one EXISTS per call instead of
-- two HGETs per word. issued_here: the words this call issued, their new totals; those are written
-- in one deferred HSET at the end (_floor.lua), and a word's later item reads them here
per_call.issued = per_call.issued or {}
local issued_here = per_call.issued
local issued = issued_here[word] or (key_absent(issued_key) and 0) or n(issued_key)
local missing, room
if issued == 0 then
  -- a word never issued has no accepted, reported or dropped attempt (each counts an issued
  -- one); other words' conversations may have mentioned it (covered)
  missing = target - (key_absent(covered_key) and 0 or n(covered_key))
  room = target * tonumber(ARGV[3])
else
  missing = target - n(accepted_key) - n(covered_key) - (issued - n(reported_key))
  room = target * tonumber(ARGV[3]) - (issued - n(dropped_key))
end
if room < missing then missing = room end
-- at most `chunk` attempts per call: one script call must not hold Redis for long (the caller asks again)
if ARGV[6] and missing > tonumber(ARGV[6]) then missing = tonumber(ARGV[6]) end
if missing <= 0 then return {issued, 0} end
issued_here[word] = issued + missing
defer('HSET', issued_key, word, {word, issued + missing})
-- every issued attempt holds a lease from the moment it exists (docs/design.md, "Delivery guarantees")
local deadline = now() + tonumber(ARGV[4])
for a = issued, issued + missing - 1 do
  local member = ARGV[5] .. word .. '\31' .. a
  defer('ZADD', leases_key, member, {deadline, member})  -- one ZADD per script call (_floor.lua)
end
if issued > 0 then
  -- pending again. A never-issued word is in neither set: short needs an outcome of its own, and
  -- done (covered: cover.lua) would have left nothing missing (advance_round empties both)
  redis.call('SREM', done_key, word)
  redis.call('SREM', short_key, word)
end
return {issued, missing}
