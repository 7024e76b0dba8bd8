-- KEYS: the locals <name>_key, from DEDUP_KEYS in workers/dedup.py (content minhash lsh kept)
-- ARGV: needed_equal num_perm band_width window, then per record: id content_hash signature bands
-- (needed_equal = 0: exact only; window = 0: no window). bands: one band_width-byte hash per band,
-- concatenated; the key of band b is "b:<its hash>". A kept record's minhash entry is its
-- signature followed by its bands argument, so forgetting it needs nothing else.
-- BUCKET_CAP (a local dedup.py puts before this text): a bucket holding that many records gets no new member.
-- Returns kind, owner per record. A batch in one script: one round trip instead of one per record.
local needed, n, width, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function band_keys(bands)
  local keys = {}
  if width == 0 then return keys end  -- exact dedup only: no bands
  for b = 0, #bands / width - 1 do keys[#keys + 1] = b .. ':' .. string.sub(bands, b * width + 1, (b + 1) * width) end
  return keys
end
-- the oldest kept record leaves the window: its exact entry, signature and bucket memberships go
local function forget(entry)
  local id, hash = string.match(entry, '^(%S+) (%S+)$')
  if not id then return end
  if redis.call('HGET', content_key, hash) == id then redis.call('HDEL', content_key, hash) end
  local stored = redis.call('HGET', minhash_key, id)
  if not stored then return end
  redis.call('HDEL', minhash_key, id)
  for _, band in ipairs(band_keys(string.sub(stored, 4 * n + 1))) do
    local members = redis.call('HGET', lsh_key, band)
    if members then
      local others, found = {}, false
      for member in string.gmatch(members, '%S+') do
        if member == id then found = true else others[#others + 1] = member end
      end
      if found and #others == 0 then
        redis.call('HDEL', lsh_key, band)
      elseif found then
        redis.call('HSET', lsh_key, band, table.concat(others, ' '))
      end
    end
  end
end
-- a bucket's members are read once (one HMGET for all bands) and its new members written in one
-- HSET: a few calls per record instead of three per band (each call from Lua has a fixed cost)
local function judge(id, hash, sig, bands_arg)
  local bands = band_keys(bands_arg)
  -- claim the exact hash first: one call for a new text (most records), a second only to name the
  -- owner of a duplicate (a near duplicate gives its claim back below)
  local added = redis.call('HSETNX', content_key, hash, id) == 1
  if not added then
    local owner = redis.call('HGET', content_key, hash)
    if owner and owner ~= id then return 'duplicate', owner end
  end
  local buckets = {}
  if needed > 0 and #bands > 0 then
    buckets = redis.call('HMGET', lsh_key, unpack(bands))
    local candidates, seen = {}, {}
    for b = 1, #bands do
      if buckets[b] then
        for cand in string.gmatch(buckets[b], '%S+') do
          if cand ~= id and not seen[cand] then
            seen[cand] = true
            candidates[#candidates + 1] = cand
          end
        end
      end
    end
    if #candidates > 0 then
      local signatures = redis.call('HMGET', minhash_key, unpack(candidates))
      local best, best_same = false, -1
      for c, cand in ipairs(candidates) do
        local other = signatures[c]
        if other then
          local same = 0
          for j = 1, 4 * n, 4 do
            if string.sub(sig, j, j + 3) == string.sub(other, j, j + 3) then same = same + 1 end
          end
          if same >= needed and same > best_same then best, best_same = cand, same end
        end
      end
      if best then
        if added then redis.call('HDEL', content_key, hash) end
        return 'near_duplicate', best
      end
    end
  end
  -- new to the index (not a redelivery of a record kept before): it joins the window
  -- RPUSH answers the window's length: only a record that joined it can push it past the window
  local kept = 0
  if added and window > 0 then
    kept = redis.call('RPUSH', kept_key, id .. ' ' .. hash)
  end
  if needed > 0 and redis.call('HSETNX', minhash_key, id, sig .. bands_arg) == 1 then
    local updates = {}
    for b, band in ipairs(bands) do
      local members = buckets[b]
      if not members then
        updates[#updates + 1] = band
        updates[#updates + 1] = id
      elseif select(2, string.gsub(members, ' ', '')) < BUCKET_CAP - 1 then
        updates[#updates + 1] = band
        updates[#updates + 1] = members .. ' ' .. id
      end
    end
    if #updates > 0 then redis.call('HSET', lsh_key, unpack(updates)) end
  end
  while kept > window do
    forget(redis.call('LPOP', kept_key))
    kept = kept - 1
  end
  return 'unique', ''
end
local out = {}
for i = 5, #ARGV, 4 do
  local kind, owner = judge(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  out[#out + 1] = kind
  out[#out + 1] = owner
end
return out
