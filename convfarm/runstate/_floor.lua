-- Shared by the scripts (store.py puts it before each one). Attempt fields are
-- "<word>\31<attempt>". A forever run keeps a floor per word: every attempt under it had its
-- outcome counted and its per-attempt fields trimmed, so a late copy of one must change nothing.
local function under_floor(floor_key, field)
  local word, attempt = string.match(field, '^(.*)\31(%d+)$')
  return tonumber(attempt) < tonumber(redis.call('HGET', floor_key, word) or '0')
end

-- Read once per script call: a batched script (scripts.py, _BATCH) decides hundreds of items in one
-- call, and none of them writes these, so each item reading them again was pure Redis load.
-- meta_field: a field of the run's meta hash that no batched script writes (target, forever, status);
-- now(): Redis's clock, one reading per call (a script runs atomically: no item sees time pass).
local meta_cache = {}
local function meta_field(meta, name)
  local value = meta_cache[name]
  if value == nil then
    value = redis.call('HGET', meta, name)
    meta_cache[name] = value
  end
  return value
end
local now_cache
local function now()
  if not now_cache then
    local t = redis.call('TIME')
    now_cache = tonumber(t[1]) + tonumber(t[2]) / 1e6
  end
  return now_cache
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
