-- KEYS: the locals <name>_key, from the key tuple of this script in scripts.py
-- ARGV: expected_target per_word
-- Forever mode: when every word met the current target, raise it by per_word. The
-- expected target makes it happen once however many collectors see the round end.
if redis.call('HGET', meta_key, 'status') ~= 'active' or redis.call('HGET', meta_key, 'forever') ~= '1' then
  return 0
end
local target = tonumber(redis.call('HGET', meta_key, 'target') or ARGV[2])
if target ~= tonumber(ARGV[1]) then return 0 end
if redis.call('SCARD', done_key) < tonumber(redis.call('HGET', meta_key, 'total_words')) then return 0 end
redis.call('HSET', meta_key, 'target', target + tonumber(ARGV[2]))
redis.call('HINCRBY', meta_key, 'round', 1)
redis.call('DEL', done_key, short_key)
return 1
