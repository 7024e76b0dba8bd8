-- KEYS: the locals <name>_key, from the key tuple of this script in scripts.py
-- ARGV: field member lease_seconds running_json skip_covered word max_deliveries
-- Everything a generation task checks and writes before it generates, in one round trip (it was
-- five: status, is_done, has_outcome, count_delivery, extend_lease). In this order:
--   the run is cancelled or failed         -> {'drop', 'run <status>'}
--   skip_covered and the word is done      -> {'drop', 'word covered'}
--   the attempt's outcome is counted       -> {'duplicate', 0}  (recorded, or under its word's floor)
--   one more delivery, past the budget     -> {'give_up', deliveries}  (no lease: it is dead-lettered)
--   otherwise                              -> {'run', deliveries}  lease until now + lease_seconds,
--                                             shown as running (docs/design.md, "Delivery guarantees")
meta_prefetch(meta_key, 'status', 'forever')  -- one call: the floor is read only in a forever run
local status = meta_field(meta_key, 'status')
if status == 'cancelled' or status == 'failed' then return {'drop', 'run ' .. status} end
if ARGV[5] == '1' and redis.call('SISMEMBER', done_key, ARGV[6]) == 1 then return {'drop', 'word covered'} end
if redis.call('HEXISTS', outcomes_key, ARGV[1]) == 1 or under_floor(floor_key, ARGV[1], meta_key) then
  redis.call('ZREM', leases_key, ARGV[2])  -- a late duplicate must not revive a lease
  return {'duplicate', 0}
end
local deliveries = redis.call('HINCRBY', deliveries_key, ARGV[1], 1)
if deliveries > tonumber(ARGV[7]) then return {'give_up', deliveries} end
local t = redis.call('TIME')
redis.call('ZADD', leases_key, tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[3]), ARGV[2])
redis.call('HSET', running_key, ARGV[1], ARGV[4])
return {'run', deliveries}
