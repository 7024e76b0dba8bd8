-- KEYS: deliveries floor
-- ARGV: field
-- One more delivery of an attempt; 0 (and nothing written) when the attempt is under its word's
-- floor: its outcome was counted and its fields trimmed, so a late copy must not leave one behind.
if under_floor(KEYS[2], ARGV[1]) then return 0 end
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
