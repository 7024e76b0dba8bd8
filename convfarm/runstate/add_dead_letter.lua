-- KEYS: the locals <name>_key, from the key tuple of this script in scripts.py
-- ARGV: letter_json word cap   (word '': a letter of no word of the run, e.g. one refused at the door)
-- Append a dead letter, remember its word (status counts words without reading the letters),
-- and keep the list to `cap` letters: the oldest go, counted in the run's meta
-- (dead_letters_dropped), so a run that dead-letters forever stays bounded.
local n = redis.call('RPUSH', dlq_key, ARGV[1])
if ARGV[2] ~= '' then redis.call('SADD', dlq_words_key, ARGV[2]) end
local cap = tonumber(ARGV[3])
if n > cap then
  redis.call('LTRIM', dlq_key, n - cap, -1)
  redis.call('HINCRBY', meta_key, 'dead_letters_dropped', n - cap)
end
return n
