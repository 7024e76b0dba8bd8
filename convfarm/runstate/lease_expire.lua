-- KEYS: the locals <name>_key, from the key tuple of this script in scripts.py
-- ARGV: member field lease_seconds max_deliveries queued(0/1)
-- One expired lease, decided once however many collectors look (the new deadline is set
-- before anyone is told to act). Returns 0: nothing to do; 1: issue the attempt again;
-- 2: its delivery budget is spent, dead-letter it.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local deadline = redis.call('ZSCORE', leases_key, ARGV[1])
if not deadline or tonumber(deadline) > now then return 0 end
local status = redis.call('HGET', meta_key, 'status')
local counted = redis.call('HEXISTS', outcomes_key, ARGV[2]) == 1 or under_floor(floor_key, ARGV[2], meta_key)
if counted or not status or status == 'complete' then
  redis.call('ZREM', leases_key, ARGV[1])
  return 0
end
redis.call('ZADD', leases_key, now + tonumber(ARGV[3]), ARGV[1])
-- cancelled or failed: kept, so the attempt is issued again once the run is resumed
if status ~= 'active' then return 0 end
local started = redis.call('HEXISTS', running_key, ARGV[2]) == 1
-- never started while its queue still holds messages: most likely still waiting its turn
if not started and ARGV[5] == '1' then return 0 end
local deliveries
if started then
  -- the task counted its own delivery when it started
  deliveries = tonumber(redis.call('HGET', deliveries_key, ARGV[2]) or '0')
  redis.call('HDEL', running_key, ARGV[2])
else
  -- lost before it ever ran (a message a Redis restart or an acknowledged failure lost)
  deliveries = redis.call('HINCRBY', deliveries_key, ARGV[2], 1)
end
if deliveries >= tonumber(ARGV[4]) then return 2 end
return 1
