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
