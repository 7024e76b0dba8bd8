-- KEYS: the locals <name>_key, from the key tuple of this script in scripts.py
-- ARGV: collector token model_identity n_counters counter amount ... record_id status ...
-- The claimed ids are on disk: set their committed status and add what they bring to the run's
-- counters, in one step, only while our token is current (a collector whose results were taken
-- over is fenced: it rolls its write back). Reply: 1 done, 0 fenced (nothing changed).
local me, token = ARGV[1], ARGV[2]
if (redis.call('HGET', fences_key, me) or '') ~= token then return 0 end
if ARGV[3] ~= '' then redis.call('HSETNX', meta_key, 'model_identity', ARGV[3]) end
local n = tonumber(ARGV[4])
for i = 5, 4 + 2 * n, 2 do
  if tonumber(ARGV[i + 1]) ~= 0 then redis.call('HINCRBY', counts_key, ARGV[i], ARGV[i + 1]) end
end
for i = 5 + 2 * n, #ARGV, 2 do
  defer('HSET', committed_key, ARGV[i], {ARGV[i], ARGV[i + 1]})  -- one HSET per batch (_floor.lua)
end
return 1
