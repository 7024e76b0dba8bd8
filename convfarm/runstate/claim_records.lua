-- KEYS: the locals <name>_key, from the key tuple of this script in scripts.py
-- ARGV: collector token record_id...
-- Claim record ids before writing them (docs/design.md, "Delivery guarantees"): an id nobody
-- holds, or held by a collector whose token was raised since (fenced: its claim is void), is
-- set to "pending\31<collector>\31<token>" and is ours to write. Reply: 'fenced' when our own
-- token is no longer current (nothing claimed), else 'ok' then per id: '' (ours to write),
-- 'busy' (another live collector holds it: it writes it) or the committed status.
local me, token = ARGV[1], ARGV[2]
if (redis.call('HGET', fences_key, me) or '') ~= token then return {'fenced'} end
local mine = 'pending\31' .. me .. '\31' .. token
local out = {'ok'}
-- the batch's ids read in one HMGET and the new claims written in one HSET (deferred, _floor.lua):
-- two calls per batch, not two per record. An id twice in one batch reads alike both times, as
-- it did when each claim was written at once (the second copy then read our own claim: '').
local ids = {}
for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
local held_all = hmget_many(committed_key, ids)
for i, id in ipairs(ids) do
  local held = held_all[i] or nil
  local verdict = ''
  if held and held ~= mine then
    local owner, their = string.match(held, '^pending\31(.*)\31(%d+)$')
    if not owner then
      verdict = held  -- committed: a redelivery
    elseif redis.call('HGET', fences_key, owner) == their then
      verdict = 'busy'
    end
  end
  if verdict == '' then defer('HSET', committed_key, id, {id, mine}) end
  out[#out + 1] = verdict
end
return out
