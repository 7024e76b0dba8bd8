-- KEYS: the locals <name>_key, from the key tuple of this script in scripts.py
-- ARGV: word count lease_seconds member_prefix
-- Attempts outside the budget (`producer dlq --retry`): the word is pending again, and each
-- new attempt holds a lease from the moment it exists.
local last = redis.call('HINCRBY', issued_key, ARGV[1], tonumber(ARGV[2]))
redis.call('SREM', done_key, ARGV[1])
redis.call('SREM', short_key, ARGV[1])
local t = redis.call('TIME')
local deadline = tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[3])
for a = last - tonumber(ARGV[2]), last - 1 do
  redis.call('ZADD', leases_key, deadline, ARGV[4] .. ARGV[1] .. '\31' .. a)
end
return last
