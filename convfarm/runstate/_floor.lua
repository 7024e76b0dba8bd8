-- Shared by the scripts (store.py puts it before each one).

-- Read once per script call: a batched script (scripts.py, _BATCH) decides hundreds of items in one
-- call, and none of them writes these, so each item reading them again was pure Redis load.
-- meta_field: a field of the run's meta hash that no batched script writes (target, forever, status);
-- meta_prefetch: several of them in one HMGET (a script that needs two pays one call);
-- now(): Redis's clock, one reading per call (a script runs atomically: no item sees time pass).
local meta_cache, meta_read = {}, {}
local function meta_prefetch(meta, ...)
  local names = {...}
  local values = redis.call('HMGET', meta, unpack(names))
  for i, name in ipairs(names) do
    meta_cache[name] = values[i]
    meta_read[name] = true
  end
end
local function meta_field(meta, name)
  if not meta_read[name] then
    meta_cache[name] = redis.call('HGET', meta, name)
    meta_read[name] = true
  end
  return meta_cache[name]
end
local now_cache
local function now()
  if not now_cache then
    local t = redis.call('TIME')
    now_cache = tonumber(t[1]) + tonumber(t[2]) / 1e6
  end
  return now_cache
end

-- Attempt fields are "<word>\31<attempt>". A forever run keeps a floor per word: every attempt
-- under it had its outcome counted and its per-attempt fields trimmed, so a late copy of one must
-- change nothing. Only forever runs raise floors: given the run's meta key, a run that is not one
-- answers false without reading the floor hash (one call per attempt saved, docs/scaling.md).
local function under_floor(floor_key, field, meta)
  if meta and meta_field(meta, 'forever') ~= '1' then return false end
  local word, attempt = string.match(field, '^(.*)\31(%d+)$')
  return tonumber(attempt) < tonumber(redis.call('HGET', floor_key, word) or '0')
end

-- words_done(done_key): SCARD of the run's done set, read once per call and kept current by
-- word_done(done_key, word), the SADD that counts a word done (returns what SADD returns).
local done_count
local function words_done(done)
  if not done_count then done_count = redis.call('SCARD', done) end
  return done_count
end
local function word_done(done, word)
  local added = redis.call('SADD', done, word)
  if added == 1 and done_count then done_count = done_count + 1 end
  return added
end

-- defer_incr(key, field, amount): an HINCRBY whose reply nobody needs, summed per field and sent at
-- the end with the deferred writes (a batch of 300 outcomes adds "accepted" once). Only for keys
-- the script does not read.
local increments, increment_order = {}, {}
local function defer_incr(key, field, amount)
  local per_key = increments[key]
  if not per_key then
    per_key = {fields = {}, order = {}}
    increments[key] = per_key
    increment_order[#increment_order + 1] = key
  end
  if not per_key.fields[field] then per_key.order[#per_key.order + 1] = field end
  per_key.fields[field] = (per_key.fields[field] or 0) + amount
end
local function flush_increments()
  for _, key in ipairs(increment_order) do
    local per_key = increments[key]
    for _, field in ipairs(per_key.order) do redis.call('HINCRBY', key, field, per_key.fields[field]) end
  end
  increments, increment_order = {}, {}
end


-- Deferred writes: defer(cmd, key, member, args) buffers a per-member write whose reply nobody
-- needs (ZADD score member, ZREM member, HDEL field, HSET field value) and flush_deferred() sends
-- each command and key's buffer as ONE call when the script ends (scripts.py calls it): a batch of
-- 300 outcomes pays one ZREM of the leases, not 300. Same result as writing at once, because
-- (1) these commands act on each member alone, (2) a member deferred under another command of the
-- same key first flushes everything (its writes stay in order), and (3) a script defers only
-- writes to keys it does not read afterwards.
local deferred, deferred_order, deferred_touch = {}, {}, {}
local function flush_deferred()
  for _, group in ipairs(deferred_order) do
    local args, step = group.args, group.arity * 2000  -- unpack() has a stack limit: chunks
    for i = 1, #args, step do
      redis.call(group.cmd, group.key, unpack(args, i, math.min(i + step - 1, #args)))
    end
  end
  deferred, deferred_order, deferred_touch = {}, {}, {}
  flush_increments()  -- counters nobody reads in the call: sent with the writes
end
local function defer(cmd, key, member, args)
  local touch = key .. '\0' .. member
  if deferred_touch[touch] and deferred_touch[touch] ~= cmd then flush_deferred() end
  deferred_touch[touch] = cmd
  local id = cmd .. '\0' .. key
  local group = deferred[id]
  if not group then
    group = {cmd = cmd, key = key, arity = #args, args = {}}
    deferred[id] = group
    deferred_order[#deferred_order + 1] = group
  end
  for _, value in ipairs(args) do group.args[#group.args + 1] = value end
end

-- HMGET of any number of fields (unpack() has a stack limit: chunks of 2,000)
local function hmget_many(key, fields)
  local out = {}
  for i = 1, #fields, 2000 do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + 1999, #fields)))
    for _, value in ipairs(part) do out[#out + 1] = value end
  end
  return out
end

-- key_absent(key): the key did not exist when this script call first asked (one EXISTS per call).
-- A hash most runs never fill (covered: words other conversations mentioned) then costs no HGET per
-- item. Only for keys the call itself does not write.
local absent_cache = {}
local function key_absent(key)
  if absent_cache[key] == nil then absent_cache[key] = redis.call('EXISTS', key) == 0 end
  return absent_cache[key]
end

-- per_call: what one script call remembers across its items (a batched script's item body is a
-- function of its own, and a script may not create globals)
local per_call = {}
