-- KEYS: outcomes retries reported accepted issued done short counts meta dropped running covered leases
--       floor deliveries committed covered_records
-- ARGV: word attempt status reason per_word max_attempts lease_seconds member_prefix record_id
local field = ARGV[1] .. '\31' .. ARGV[2]
local word = ARGV[1]
redis.call('HDEL', KEYS[11], field)
redis.call('ZREM', KEYS[13], ARGV[8] .. field)  -- an outcome ends the attempt's lease

-- Forever mode keeps no per-attempt field below the word's floor: every attempt under it has its
-- outcome counted, and the outcome is the last thing recorded for an attempt (the record is
-- written, committed and its mentions counted before), so nothing will ask for those fields
-- again. The outcome's value names the record, so its committed and covered_records entries go too.
local function raise_floor()
  if redis.call('HGET', KEYS[9], 'forever') ~= '1' then return end
  local floor = tonumber(redis.call('HGET', KEYS[14], word) or '0')
  local passed = floor
  while true do
    local f = word .. '\31' .. passed
    local value = redis.call('HGET', KEYS[1], f)
    if not value then break end
    redis.call('HDEL', KEYS[1], f)
    redis.call('HDEL', KEYS[2], f)
    redis.call('HDEL', KEYS[15], f)
    redis.call('HDEL', KEYS[11], f)
    local record = string.match(value, ' (%S+)$')
    if record then
      redis.call('HDEL', KEYS[16], record)
      redis.call('SREM', KEYS[17], record)
    end
    passed = passed + 1
  end
  if passed > floor then redis.call('HSET', KEYS[14], word, passed) end
end

-- under the floor: counted long ago and trimmed (a late copy)
if under_floor(KEYS[14], field) then
  return {0, -1, redis.call('SCARD', KEYS[6])}
end
local value = ARGV[3]
if ARGV[9] and ARGV[9] ~= '' then value = value .. ' ' .. ARGV[9] end
if redis.call('HSETNX', KEYS[1], field, value) == 0 then
  local again = tonumber(redis.call('HGET', KEYS[2], field) or '-1')
  return {0, again, redis.call('SCARD', KEYS[6])}
end
local reported = redis.call('HINCRBY', KEYS[3], word, 1)
if ARGV[3] == 'dropped' then
  -- the attempt never ran (its run was cancelled, or its word covered): no longer in
  -- flight, and it does not spend the word's attempt budget
  redis.call('HINCRBY', KEYS[10], word, 1)
  redis.call('HINCRBY', KEYS[8], 'dropped', 1)
  raise_floor()
  return {1, -1, redis.call('SCARD', KEYS[6])}
end
local accepted = tonumber(redis.call('HGET', KEYS[4], word) or '0')
if ARGV[3] == 'accepted' then
  accepted = redis.call('HINCRBY', KEYS[4], word, 1)
  redis.call('HINCRBY', KEYS[8], 'accepted', 1)
else
  redis.call('HINCRBY', KEYS[8], 'rejected', 1)
  redis.call('HINCRBY', KEYS[8], 'reason:' .. ARGV[4], 1)
end
local target = tonumber(redis.call('HGET', KEYS[9], 'target') or ARGV[5])
local have = accepted + tonumber(redis.call('HGET', KEYS[12], word) or '0')
local dropped = tonumber(redis.call('HGET', KEYS[10], word) or '0')
local issued = tonumber(redis.call('HGET', KEYS[5], word) or '0')
local retry = -1
if have + (issued - reported) < target and issued - dropped < target * tonumber(ARGV[6])
   and redis.call('HGET', KEYS[9], 'status') == 'active' then
  retry = issued
  issued = redis.call('HINCRBY', KEYS[5], word, 1)
  redis.call('HSET', KEYS[2], field, retry)
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[13], tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[7]), ARGV[8] .. word .. '\31' .. retry)
end
if have >= target or issued == reported then
  if redis.call('SADD', KEYS[6], word) == 1 and have < target then
    redis.call('SADD', KEYS[7], word)
  end
end
raise_floor()
return {1, retry, redis.call('SCARD', KEYS[6])}
