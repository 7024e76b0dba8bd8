-- KEYS: the locals <name>_key, from the key tuple of this script in scripts.py
-- ARGV: writer record_id status ...
-- Records found on disk in an open file of `writer` (our own after a crash, or a dead
-- collector's we adopt) are committed: set the status where the id is not committed yet, or
-- only claimed by that writer or by a fenced collector. An id a live collector claimed is left
-- to it. Reply: the ids set (their counters are added by the caller).
local writer = ARGV[1]
local set = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local held = redis.call('HGET', committed_key, id)
  local take = not held
  if held then
    local owner, their = string.match(held, '^pending\31(.*)\31(%d+)$')
    take = owner ~= nil and (owner == writer or redis.call('HGET', fences_key, owner) ~= their)
  end
  if take then
    redis.call('HSET', committed_key, id, ARGV[i + 1])
    set[#set + 1] = id
  end
end
return set
