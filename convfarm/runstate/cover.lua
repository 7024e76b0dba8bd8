-- KEYS: the locals <name>_key, from the key tuple of this script in scripts.py
-- ARGV: record_id per_word word...
-- skip_covered: each word mentioned in an accepted conversation of another word gains one
-- "coverage"; once per record (a redelivered record does not count twice).
if redis.call('SADD', covered_records_key, ARGV[1]) == 0 then return redis.call('SCARD', done_key) end
local target = tonumber(redis.call('HGET', meta_key, 'target') or ARGV[2])
for i = 3, #ARGV do
  local word = ARGV[i]
  local have = redis.call('HINCRBY', covered_key, word, 1) + tonumber(redis.call('HGET', accepted_key, word) or '0')
  if have >= target then
    redis.call('SADD', done_key, word)
    redis.call('SREM', short_key, word)
  end
end
return redis.call('SCARD', done_key)
