"""Duplicate detection at the collector: exact and near-duplicate (MinHash LSH), across a run.

The state lives in Redis, beside the rest of the run, so it survives a collector restart
and is shared by every collector of the run:

* ``convfarm:run:<run>:content`` — normalised-text hash -> id of the first record with it;
* ``convfarm:run:<run>:minhash`` — record id -> its MinHash signature (``num_perm`` uint32);
* ``convfarm:run:<run>:lsh`` — ``<band>:<band hash>`` -> ids of the records in that bucket.

Why our own Lua and not datasketch's ``MinHashLSH`` with its Redis storage: there a query
and the insert that follows are separate round trips, so two collectors judging two copies
of a text at the same moment would both find nothing and both keep theirs. Here the whole
verdict (exact lookup, candidate lookup, Jaccard estimate, insert) is one script, atomic
in Redis. datasketch still does the hashing (``MinHash.bulk``) and picks the band layout.

Only conversations that pass the rules are indexed; a duplicate is not indexed either, so
``duplicate_of`` always names a kept record. Judging the same record twice (a result
redelivered after a collector crash) gives the same verdict: its own entries are ignored.
Memory: about ``num_perm * 4`` bytes plus ``bands`` short entries per kept conversation
(about 2 KB of Redis memory each with the defaults, measured).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

import redis
from datasketch import MinHash
from datasketch.lsh import _optimal_param

from convfarm.config import RunConfig
from convfarm.messages import ConversationRecord, Turn
from convfarm.runstate import run_key

DUPLICATE = "duplicate"
NEAR_DUPLICATE = "near_duplicate"
# a bucket that collects this many records is boilerplate: further members are not added
# (they are still compared with the ones already there), so one bucket cannot grow without bound
BUCKET_CAP = 64

# KEYS: content minhash lsh
# ARGV: id content_hash needed_equal num_perm signature band...   (needed_equal = 0: exact only)
_JUDGE = """
local id = ARGV[1]
local owner = redis.call('HGET', KEYS[1], ARGV[2])
if owner and owner ~= id then return {'duplicate', owner} end
local needed = tonumber(ARGV[3])
if needed > 0 then
  local sig = ARGV[5]
  local n = tonumber(ARGV[4])
  local best, best_same, seen = false, -1, {}
  for i = 6, #ARGV do
    local members = redis.call('HGET', KEYS[3], ARGV[i])
    if members then
      for cand in string.gmatch(members, '%S+') do
        if cand ~= id and not seen[cand] then
          seen[cand] = true
          local other = redis.call('HGET', KEYS[2], cand)
          if other then
            local same = 0
            for j = 1, 4 * n, 4 do
              if string.sub(sig, j, j + 3) == string.sub(other, j, j + 3) then same = same + 1 end
            end
            if same >= needed and same > best_same then best, best_same = cand, same end
          end
        end
      end
    end
  end
  if best then return {'near_duplicate', best} end
end
redis.call('HSETNX', KEYS[1], ARGV[2], id)
if needed > 0 and redis.call('HSETNX', KEYS[2], id, ARGV[5]) == 1 then
  for i = 6, #ARGV do
    local members = redis.call('HGET', KEYS[3], ARGV[i])
    if not members then
      redis.call('HSET', KEYS[3], ARGV[i], id)
    elseif select(2, string.gsub(members, ' ', '')) < BUCKET_CAP - 1 then
      redis.call('HSET', KEYS[3], ARGV[i], members .. ' ' .. id)
    end
  end
end
return {'unique', ''}
""".replace("BUCKET_CAP", str(BUCKET_CAP))

_WORD = re.compile(r"\w+")


def normalised_text(turns: list[Turn]) -> str:
    """Case and spacing do not make a conversation new."""
    return "\n".join(f"{t.speaker.casefold()}:{' '.join(t.text.casefold().split())}" for t in turns)


def content_hash(turns: list[Turn]) -> str:
    """The exact-duplicate key: a hash of the normalised turns."""
    return hashlib.sha256(normalised_text(turns).encode()).hexdigest()


def shingles(turns: list[Turn], size: int) -> list[bytes]:
    """Word n-grams of the conversation's text (speaker names left out: they are in every record)."""
    words = [w for t in turns for w in _WORD.findall(t.text.casefold())]
    if len(words) <= size:
        return [" ".join(words).encode()]
    return [" ".join(words[i:i + size]).encode() for i in range(len(words) - size + 1)]


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

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._judge = client.register_script(_JUDGE)

    def signatures(self, config: RunConfig, records: list[ConversationRecord]) -> list[bytes]:
        if config.near_dup_threshold is None or not records:
            return [b""] * len(records)
        hashed = MinHash.bulk([shingles(r.turns, config.near_dup_shingle) for r in records],
                              num_perm=config.near_dup_num_perm)
        return [m.hashvalues.astype("<u4").tobytes() for m in hashed]

    def judge(self, run: str, config: RunConfig, records: list[ConversationRecord]) -> list[DedupVerdict]:
        """One verdict per record, in order; earlier records of the batch count as seen."""
        keys = [run_key(run, "content"), run_key(run, "minhash"), run_key(run, "lsh")]
        needed = 0
        bands, rows = 0, 0
        if config.near_dup_threshold is not None:
            bands, rows = band_layout(config.near_dup_threshold, config.near_dup_num_perm)
            # signatures agreeing in at least this many positions estimate Jaccard >= threshold
            needed = max(1, round(config.near_dup_threshold * config.near_dup_num_perm))
        pipe = self.redis.pipeline(transaction=False)
        for record, signature in zip(records, self.signatures(config, records), strict=True):
            band_keys = [f"{b}:{hashlib.blake2b(signature[4 * b * rows:4 * (b + 1) * rows], digest_size=8).hexdigest()}"
                         for b in range(bands)]
            args = [record.id, content_hash(record.turns), needed, config.near_dup_num_perm, signature, *band_keys]
            self._judge(keys=keys, args=args, client=pipe)
        verdicts = []
        for kind, owner in pipe.execute():
            kind = kind.decode()
            verdicts.append(DedupVerdict(None) if kind == "unique" else DedupVerdict(kind, owner.decode()))
        return verdicts
