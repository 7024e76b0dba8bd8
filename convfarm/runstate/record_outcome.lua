-- KEYS: the locals <name>_key, from the key tuple of this script in scripts.py
-- ARGV: word attempt status reason per_word max_attempts lease_seconds member_prefix record_id
local field = ARGV[1] .. '\31' .. ARGV[2]
local word = ARGV[1]
-- deferred (_floor.lua): no outcome reads running or leases, so a batch sends one HDEL and one ZREM
defer('HDEL', running_key, field, {field})
defer('ZREM', leases_key, ARGV[8] .. field, {ARGV[8] .. field})  -- an outcome ends the attempt's lease

-- Forever mode keeps no per-attempt field below the word's floor: every attempt under it has its
-- outcome counted, and the outcome is the last thing recorded for an attempt (the record is
-- written, committed and its mentions counted before), so nothing will ask for those fields
-- again. The outcome's value names the record, so its committed and covered_records entries go too.
local function raise_floor()
  if meta_field(meta_key, 'forever') ~= '1' then return end
  local floor = tonumber(redis.call('HGET', floor_key, word) or '0')
  local passed = floor
  while true do
    local f = word .. '\31' .. passed
    local value = redis.call('HGET', outcomes_key, f)
    if not value then break end
    redis.call('HDEL', outcomes_key, f)
    redis.call('HDEL', retries_key, f)
    redis.call('HDEL', deliveries_key, f)
    defer('HDEL', running_key, f, {f})
    local record = string.match(value, ' (%S+)$')
    if record then
      redis.call('HDEL', committed_key, record)
      redis.call('SREM', covered_records_key, record)
    end
    passed = passed + 1
  end
  if passed > floor then redis.call('HSET', floor_key, word, passed) end
end

-- under the floor: counted long ago and trimmed (a late copy)
if under_floor(floor_key, field, meta_key) then
  return {0, -1, words_done(done_key)}
end
local value = ARGV[3]
if ARGV[9] and ARGV[9] ~= '' then value = value .. ' ' .. ARGV[9] end
if redis.call('HSETNX', outcomes_key, field, value) == 0 then
  local again = tonumber(redis.call('HGET', retries_key, field) or '-1')
  return {0, again, words_done(done_key)}
end
local reported = redis.call('HINCRBY', reported_key, word, 1)
if ARGV[3] == 'dropped' then
  -- the attempt never ran (its run was cancelled, or its word covered): no longer in
  -- flight, and it does not spend the word's attempt budget
  redis.call('HINCRBY', dropped_key, word, 1)
  defer_incr(counts_key, 'dropped', 1)  -- counts is not read here: one HINCRBY per field per batch
  raise_floor()
  return {1, -1, words_done(done_key)}
end
local accepted
if ARGV[3] == 'accepted' then
  accepted = redis.call('HINCRBY', accepted_key, word, 1)
  defer_incr(counts_key, 'accepted', 1)
else
  accepted = tonumber(redis.call('HGET', accepted_key, word) or '0')
  defer_incr(counts_key, 'rejected', 1)
  defer_incr(counts_key, 'reason:' .. ARGV[4], 1)
end
local target = tonumber(meta_field(meta_key, 'target') or ARGV[5])
-- covered: words that other conversations mentioned; most runs have none (no HGET then)
local covered = 0
if not key_absent(covered_key) then covered = tonumber(redis.call('HGET', covered_key, word) or '0') end
local have = accepted + covered
local retry = -1
-- issued is read only when the quota is not met yet, dropped only when a retry is wanted at all:
-- most outcomes meet their quota
local issued = have < target and tonumber(redis.call('HGET', issued_key, word) or '0') or nil
if issued and have + (issued - reported) < target
   and issued - tonumber(redis.call('HGET', dropped_key, word) or '0') < target * tonumber(ARGV[6])
   and meta_field(meta_key, 'status') == 'active' then
  retry = issued
  issued = redis.call('HINCRBY', issued_key, word, 1)
  redis.call('HSET', retries_key, field, retry)
  local member = ARGV[8] .. word .. '\31' .. retry
  defer('ZADD', leases_key, member, {now() + tonumber(ARGV[7]), member})
end
if have >= target or issued == reported then  -- (have >= target first: issued may be unread)
  if word_done(done_key, word) == 1 and have < target then
    redis.call('SADD', short_key, word)
  end
end
raise_floor()
return {1, retry, words_done(done_key)}
