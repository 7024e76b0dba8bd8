-- Shared by the scripts (store.py puts it before each one). Attempt fields are
-- "<word>\31<attempt>". A forever run keeps a floor per word: every attempt under it had its
-- outcome counted and its per-attempt fields trimmed, so a late copy of one must change nothing.
local function under_floor(floor_key, field)
  local word, attempt = string.match(field, '^(.*)\31(%d+)$')
  return tonumber(attempt) < tonumber(redis.call('HGET', floor_key, word) or '0')
end
