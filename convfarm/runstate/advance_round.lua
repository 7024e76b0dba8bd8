-- KEYS: meta done short
-- ARGV: expected_target per_word
-- Forever mode: when every word met the current target, raise it by per_word. The
-- expected target makes it happen once however many collectors see the round end.
if redis.call('HGET', KEYS[1], 'status') ~= 'active' or redis.call('HGET', KEYS[1], 'forever') ~= '1' then
  return 0
end
local target = tonumber(redis.call('HGET', KEYS[1], 'target') or ARGV[2])
if target ~= tonumber(ARGV[1]) then return 0 end
if redis.call('SCARD', KEYS[2]) < tonumber(redis.call('HGET', KEYS[1], 'total_words')) then return 0 end
redis.call('HSET', KEYS[1], 'target', target + tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[1], 'round', 1)
redis.call('DEL', KEYS[2], KEYS[3])
return 1
