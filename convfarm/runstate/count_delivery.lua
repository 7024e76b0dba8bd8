-- KEYS: the locals <name>_key, from the key tuple of this script in scripts.py
-- ARGV: field
-- One more delivery of an attempt; 0 (and nothing written) when the attempt is under its word's
-- floor: its outcome was counted and its fields trimmed, so a late copy must not leave one behind.
if under_floor(floor_key, ARGV[1]) then return 0 end
return redis.call('HINCRBY', deliveries_key, ARGV[1], 1)
