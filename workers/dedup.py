"""Duplicate detection at the collector: exact and near-duplicate (MinHash LSH), across a run.

The state lives in Redis, beside the rest of the run, so it survives a collector restart
and is shared by every collector of the run:

* ``convfarm:run:<run>:content`` — normalised-text hash -> id of the first record with it;
* ``convfarm:run:<run>:minhash:<scheme>`` — record id -> its MinHash signature (``num_perm`` uint32);
* ``convfarm:run:<run>:lsh:<scheme>`` — ``<band>:<band hash>`` -> ids of the records in that bucket;
* ``convfarm:run:<run>:kept`` — ``<id> <content hash>`` of each kept record, oldest first: the window.

The window (``CONVFARM_DEDUP_WINDOW``, default 100,000): a record is compared with the last
``window`` records the run kept. When one more is kept, the oldest leaves: its exact entry, its
signature and its bucket memberships are deleted in the same script, so a forever run's dedup
state stops growing (docs/design.md, "Run state"). A run that keeps at most ``window`` records
is judged exactly as without a window.

The signatures come from rensa's ``RMinHash`` (Rust; ~30× datasketch's ``MinHash.bulk`` on
our records, measured in BENCHMARKS.md) with a fixed seed. ``<scheme>`` (:data:`SCHEME`, e.g.
``rensa2``) stamps the keys with rensa's algorithm version: signatures of two schemes are not
comparable, so they never share an index. A run whose near-duplicate index was started by a
collector of before this change (datasketch signatures, unstamped ``minhash``/``lsh`` keys)
keeps datasketch for the rest of the run, so its verdicts stay the same across the upgrade.

Why our own Lua and not datasketch's ``MinHashLSH`` with its Redis storage: there a query
and the insert that follows are separate round trips, so two collectors judging two copies
of a text at the same moment would both find nothing and both keep theirs. Here the whole
verdict (exact lookup, candidate lookup, Jaccard estimate, insert) is one script, atomic
in Redis. datasketch still picks the band layout.

Only conversations that pass the rules are indexed; a duplicate is not indexed either, so
``duplicate_of`` always names a kept record. Judging the same record twice (a result
redelivered after a collector crash) gives the same verdict: its own entries are ignored, and
it does not join the window a second time. Only a verdict that was never committed can be
judged again (the collector's ``committed`` check comes first); it can differ only if the
record it duplicated left the window meanwhile, and then no output ever held the first one.
Memory: about ``num_perm * 4`` bytes plus ``bands`` short entries per kept conversation in the
window (about 1.7 KB of Redis memory each with the defaults, measured in BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import redis
from datasketch import MinHash
from datasketch.lsh import _optimal_param
from rensa import RMinHash

from convfarm.config import RunConfig
from convfarm.messages import ConversationRecord, Turn
from convfarm.runstate import run_key
from convfarm.settings import get_settings

DUPLICATE = "duplicate"
NEAR_DUPLICATE = "near_duplicate"
# a bucket that collects this many records is boilerplate: further members are not added
# (they are still compared with the ones already there), so one bucket cannot grow without bound
BUCKET_CAP = 64

# Every collector must hash with the same seed and algorithm: both are part of the scheme.
MINHASH_SEED = 1
SCHEME = f"rensa{RMinHash.ALGORITHM_VERSION}"
LEGACY_SCHEME = "datasketch"  # runs whose index was started before rensa (unstamped keys)

# KEYS: content minhash lsh kept
# ARGV: needed_equal num_perm band_width window, then per record: id content_hash signature bands
# (needed_equal = 0: exact only; window = 0: no window). bands: with band_width 0 the record's
# band keys joined by spaces (datasketch runs); else one band_width-byte hash per band,
# concatenated, and the key of band b is "b:<its hash>". A kept record's minhash entry is its
# signature followed by its bands argument, so forgetting it needs nothing else.
# Returns kind, owner per record.
# A batch in one script: one round trip and one script call instead of one per record.
_JUDGE = """
local needed, n, width, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function band_keys(bands)
  local keys = {}
  if width == 0 then
    for band in string.gmatch(bands, '%S+') do keys[#keys + 1] = band end
  else
    for b = 0, #bands / width - 1 do keys[#keys + 1] = b .. ':' .. string.sub(bands, b * width + 1, (b + 1) * width) end
  end
  return keys
end
-- the oldest kept record leaves the window: its exact entry, signature and bucket memberships go
local function forget(entry)
  local id, hash = string.match(entry, '^(%S+) (%S+)$')
  if not id then return end
  if redis.call('HGET', KEYS[1], hash) == id then redis.call('HDEL', KEYS[1], hash) end
  local stored = redis.call('HGET', KEYS[2], id)
  if not stored then return end
  redis.call('HDEL', KEYS[2], id)
  for _, band in ipairs(band_keys(string.sub(stored, 4 * n + 1))) do
    local members = redis.call('HGET', KEYS[3], band)
    if members then
      local others, found = {}, false
      for member in string.gmatch(members, '%S+') do
        if member == id then found = true else others[#others + 1] = member end
      end
      if found and #others == 0 then
        redis.call('HDEL', KEYS[3], band)
      elseif found then
        redis.call('HSET', KEYS[3], band, table.concat(others, ' '))
      end
    end
  end
end
-- a bucket's members are read once (one HMGET for all bands) and its new members written in one
-- HSET: a few calls per record instead of three per band (each call from Lua has a fixed cost)
local function judge(id, hash, sig, bands_arg)
  local bands = band_keys(bands_arg)
  local owner = redis.call('HGET', KEYS[1], hash)
  if owner and owner ~= id then return 'duplicate', owner end
  local buckets = {}
  if needed > 0 and #bands > 0 then
    buckets = redis.call('HMGET', KEYS[3], unpack(bands))
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
      local signatures = redis.call('HMGET', KEYS[2], unpack(candidates))
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
      if best then return 'near_duplicate', best end
    end
  end
  -- new to the index (not a redelivery of a record kept before): it joins the window
  if redis.call('HSETNX', KEYS[1], hash, id) == 1 and window > 0 then
    redis.call('RPUSH', KEYS[4], id .. ' ' .. hash)
  end
  if needed > 0 and redis.call('HSETNX', KEYS[2], id, sig .. bands_arg) == 1 then
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
    if #updates > 0 then redis.call('HSET', KEYS[3], unpack(updates)) end
  end
  if window > 0 then
    while redis.call('LLEN', KEYS[4]) > window do forget(redis.call('LPOP', KEYS[4])) end
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
""".replace("BUCKET_CAP", str(BUCKET_CAP))

_WORD = re.compile(r"\w+")


def normalised_text(turns: list[Turn]) -> str:
    """Case and spacing do not make a conversation new."""
    return "\n".join(f"{t.speaker.casefold()}:{' '.join(t.text.casefold().split())}" for t in turns)


def content_hash(turns: list[Turn]) -> str:
    """The exact-duplicate key: a hash of the normalised turns."""
    return hashlib.sha256(normalised_text(turns).encode()).hexdigest()


def shingles(turns: list[Turn], size: int) -> list[str]:
    """Word n-grams of the conversation's text (speaker names left out: they are in every record)."""
    # one findall over the turns joined by newlines: \w+ never spans a newline, so the words are
    # those of each turn in order
    words = _WORD.findall("\n".join(t.text for t in turns).casefold())
    if len(words) <= size:
        return [" ".join(words)]
    return list(map(" ".join, zip(*(words[i:] for i in range(size)), strict=False)))


def signatures(scheme: str, records: list[ConversationRecord], num_perm: int, size: int) -> np.ndarray:
    """The MinHash signatures of the records: one row of ``num_perm`` little-endian uint32 each."""
    token_sets = [shingles(r.turns, size) for r in records]
    if scheme == LEGACY_SCHEME:
        hashed = MinHash.bulk([[t.encode() for t in tokens] for tokens in token_sets], num_perm=num_perm)
        return np.array([m.hashvalues for m in hashed], dtype="<u4")
    return np.asarray(RMinHash.digest_matrix_from_token_sets(token_sets, num_perm, MINHASH_SEED).to_rows(), dtype="<u4")


def band_hashes(matrix: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit hash per band of each signature (a polynomial over the band's values, mod 2**64),
    for the whole batch at once: (records, bands) little-endian uint64."""
    values = matrix[:, :bands * rows].reshape(len(matrix), bands, rows).astype(np.uint64)
    hashed = np.zeros((len(matrix), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrapping is the mod 2**64
        for r in range(rows):
            hashed = hashed * np.uint64(0x9E3779B97F4A7C15) + values[:, :, r] + np.uint64(1)
    return hashed.astype("<u8")


@lru_cache(maxsize=32)
def band_layout(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) that best separate pairs above and below ``threshold`` (datasketch's optimiser)."""
    bands, rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
    return int(bands), int(rows)


@dataclass(frozen=True)
class DedupVerdict:
    reason: str | None  # None: keep it
    duplicate_of: str | None = None


class Deduplicator:
    """Judges a batch of one run's kept conversations against everything the run kept so far."""

    def __init__(self, client: redis.Redis, *, window: int | None = None) -> None:
        self.redis = client
        # None: CONVFARM_DEDUP_WINDOW (a collector's setting; 0 = no window)
        self.window = get_settings().dedup_window if window is None else window
        self._judge = client.register_script(_JUDGE)
        self._schemes: dict[str, str] = {}

    def scheme(self, run: str) -> str:
        """The run's signature scheme: datasketch if its index was started with it, else :data:`SCHEME`."""
        if run not in self._schemes:
            legacy = self.redis.exists(run_key(run, "minhash"))
            self._schemes[run] = LEGACY_SCHEME if legacy else SCHEME
        return self._schemes[run]

    def index_keys(self, run: str) -> list[str]:
        scheme = self.scheme(run)
        if scheme == LEGACY_SCHEME:
            return [run_key(run, "content"), run_key(run, "minhash"), run_key(run, "lsh"), run_key(run, "kept")]
        return [run_key(run, "content"), run_key(run, f"minhash:{scheme}"), run_key(run, f"lsh:{scheme}"),
                run_key(run, "kept")]

    def band_args(self, run: str, config: RunConfig, records: list[ConversationRecord]) -> tuple[int, list[tuple[bytes, bytes]]]:
        """The script's band_width, and per record its signature and its bands argument."""
        if config.near_dup_threshold is None:
            return 0, [(b"", b"")] * len(records)
        bands, rows = band_layout(config.near_dup_threshold, config.near_dup_num_perm)
        matrix = signatures(self.scheme(run), records, config.near_dup_num_perm, config.near_dup_shingle)
        sigs = [row.tobytes() for row in matrix]
        if self.scheme(run) == LEGACY_SCHEME:  # the keys those runs' index was built with
            return 0, [(sig, " ".join(f"{b}:{hashlib.blake2b(sig[4 * b * rows:4 * (b + 1) * rows], digest_size=8).hexdigest()}"
                                      for b in range(bands)).encode()) for sig in sigs]
        return 8, list(zip(sigs, (row.tobytes() for row in band_hashes(matrix, bands, rows)), strict=True))

    def judge(self, run: str, config: RunConfig, records: list[ConversationRecord]) -> list[DedupVerdict]:
        """One verdict per record, in order; earlier records of the batch count as seen."""
        if not records:
            return []
        keys = self.index_keys(run)
        needed = 0
        if config.near_dup_threshold is not None:
            # signatures agreeing in at least this many positions estimate Jaccard >= threshold
            needed = max(1, round(config.near_dup_threshold * config.near_dup_num_perm))
        width, per_record = self.band_args(run, config, records)
        args: list[str | bytes | int] = [needed, config.near_dup_num_perm, width, self.window]
        for record, (signature, bands_arg) in zip(records, per_record, strict=True):
            args += [record.id, content_hash(record.turns), signature, bands_arg]
        reply = self._judge(keys=keys, args=args)
        verdicts = []
        for kind, owner in zip(reply[::2], reply[1::2], strict=True):
            kind = kind.decode()
            verdicts.append(DedupVerdict(None) if kind == "unique" else DedupVerdict(kind, owner.decode()))
        return verdicts
