-- KEYS: deliveries floor
-- ARGV: field
-- One more delivery of an attempt; 0 (and nothing written) when the attempt is under its word's
-- floor: its outcome was counted and its fields trimmed, so a late copy must not leave one behind.
local word, attempt = string.match(ARGV[1], '^(.*)\31(%d+)$')
if tonumber(attempt) < tonumber(redis.call('HGET', KEYS[2], word) or '0') then return 0 end
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
