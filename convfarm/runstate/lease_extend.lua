-- KEYS: the locals <name>_key, from the key tuple of this script in scripts.py
-- ARGV: field member lease_seconds running_json(optional)
-- A task starts (running_json given) or is still running: its attempt's lease runs until
-- now + lease_seconds (Redis's clock: one clock for every machine). An attempt whose outcome
-- is counted already (or is under its word's floor: counted and trimmed) holds no lease (a
-- late duplicate must not revive it).
if redis.call('HEXISTS', outcomes_key, ARGV[1]) == 1 or under_floor(floor_key, ARGV[1]) then
  redis.call('ZREM', leases_key, ARGV[2])
  return 0
end
local t = redis.call('TIME')
redis.call('ZADD', leases_key, tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[3]), ARGV[2])
if ARGV[4] and ARGV[4] ~= '' then redis.call('HSET', running_key, ARGV[1], ARGV[4]) end
return 1
