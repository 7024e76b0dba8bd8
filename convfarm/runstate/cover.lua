-- KEYS: covered_records covered accepted meta done short
-- ARGV: record_id per_word word...
-- skip_covered: each word mentioned in an accepted conversation of another word gains one
-- "coverage"; once per record (a redelivered record does not count twice).
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return redis.call('SCARD', KEYS[5]) end
local target = tonumber(redis.call('HGET', KEYS[4], 'target') or ARGV[2])
for i = 3, #ARGV do
  local word = ARGV[i]
  local have = redis.call('HINCRBY', KEYS[2], word, 1) + tonumber(redis.call('HGET', KEYS[3], word) or '0')
  if have >= target then
    redis.call('SADD', KEYS[5], word)
    redis.call('SREM', KEYS[6], word)
  end
end
return redis.call('SCARD', KEYS[5])
