-- KEYS: the locals <name>_key, from the key tuple of this script in scripts.py
-- ARGV: run created_at field value ...
-- Record a run in one step: its whole meta and its entry in the runs index, or nothing (a second
-- enqueue of the same config keeps the first record). A meta left without `created_at` (written
-- field by field by an older release killed midway) is completed, so it cannot wedge the run.
if redis.call('HEXISTS', meta_key, 'created_at') == 0 then
  local fields = {}
  for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', meta_key, 'created_at', ARGV[2], unpack(fields))
  redis.call('ZADD', runs_index_key, ARGV[2], ARGV[1])
end
return 1
