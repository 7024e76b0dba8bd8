"""Duplicate detection at the collector: exact and near-duplicate (MinHash LSH), across a run.

The state lives in Redis, beside the rest of the run, so it survives a collector restart
and is shared by every collector of the run:

* the run's ``content`` — normalised-text hash -> id of the first record with it;
* ``minhash:<scheme>`` — record id -> its MinHash signature (``num_perm`` uint32);
* ``lsh:<scheme>`` — ``<band>:<band hash>`` -> ids of the records in that bucket;
* ``kept`` — ``<id> <content hash>`` of each kept record, oldest first: the window
(names: :class:`convfarm.runstate.RunKeys`).

The window (``CONVFARM_DEDUP_WINDOW``, default 100,000): a record is compared with the last
``window`` records the run kept. When one more is kept, the oldest leaves: its exact entry, its
signature and its bucket memberships are deleted in the same script, so a forever run's dedup
state stops growing (docs/design.md, "Run state"). A run that keeps at most ``window`` records
is judged exactly as without a window.

The signatures come from rensa's ``RMinHash`` (Rust; ~30× datasketch's ``MinHash.bulk`` on
our records, measured in BENCHMARKS.md) with a fixed seed. ``<scheme>`` (:data:`SCHEME`, e.g.
``rensa2``) stamps the keys with rensa's algorithm version: signatures of two schemes are not
comparable, so they never share an index.

Why our own Lua and not datasketch's ``MinHashLSH`` with its Redis storage: there a query
and the insert that follows are separate round trips, so two collectors judging two copies
of a text at the same moment would both find nothing and both keep theirs. Here the whole
verdict (exact lookup, candidate lookup, Jaccard estimate, insert) is one script, atomic
in Redis (``dedup_judge.lua`` beside this module). datasketch still picks the band layout.

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
from pathlib import Path

import numpy as np
import redis
from datasketch.lsh import _optimal_param
from rensa import RMinHash

from convfarm.config import RunConfig
from convfarm.messages import ConversationRecord, Turn
from convfarm.runstate import RunKeys
from convfarm.runstate.scripts import keys_prelude, lua_source
from convfarm.settings import get_settings

DUPLICATE = "duplicate"
NEAR_DUPLICATE = "near_duplicate"
# a bucket that collects this many records is boilerplate: further members are not added
# (they are still compared with the ones already there), so one bucket cannot grow without bound
BUCKET_CAP = 64

# Every collector must hash with the same seed and algorithm: both are part of the scheme.
MINHASH_SEED = 1
SCHEME = f"rensa{RMinHash.ALGORITHM_VERSION}"
BAND_HASH_BYTES = 8  # one little-endian uint64 per band
DEDUP_KEYS = ("content", "minhash", "lsh", "kept")  # the judging script's keys, in order
_JUDGE = f"local BUCKET_CAP = {BUCKET_CAP}\n" + keys_prelude(DEDUP_KEYS) + lua_source("dedup_judge", Path(__file__).parent)



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


def signatures(records: list[ConversationRecord], num_perm: int, size: int) -> np.ndarray:
    """The MinHash signatures of the records: one row of ``num_perm`` little-endian uint32 each."""
    token_sets = [shingles(r.turns, size) for r in records]
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

    @staticmethod
    def index_keys(run: str) -> list[str]:
        keys = RunKeys(run)
        return [keys.content, keys.minhash(SCHEME), keys.lsh(SCHEME), keys.kept]

    @staticmethod
    def band_args(config: RunConfig, records: list[ConversationRecord]) -> tuple[int, list[tuple[bytes, bytes]]]:
        """The script's band_width, and per record its signature and its bands argument."""
        if config.near_dup_threshold is None:
            return 0, [(b"", b"")] * len(records)
        bands, rows = band_layout(config.near_dup_threshold, config.near_dup_num_perm)
        matrix = signatures(records, config.near_dup_num_perm, config.near_dup_shingle)
        sigs = [row.tobytes() for row in matrix]
        return BAND_HASH_BYTES, list(zip(sigs, (row.tobytes() for row in band_hashes(matrix, bands, rows)), strict=True))

    def judge(self, run: str, config: RunConfig, records: list[ConversationRecord]) -> list[DedupVerdict]:
        """One verdict per record, in order; earlier records of the batch count as seen."""
        if not records:
            return []
        keys = self.index_keys(run)
        needed = 0
        if config.near_dup_threshold is not None:
            # signatures agreeing in at least this many positions estimate Jaccard >= threshold
            needed = max(1, round(config.near_dup_threshold * config.near_dup_num_perm))
        width, per_record = self.band_args(config, records)
        args: list[str | bytes | int] = [needed, config.near_dup_num_perm, width, self.window]
        for record, (signature, bands_arg) in zip(records, per_record, strict=True):
            args += [record.id, content_hash(record.turns), signature, bands_arg]
        reply = self._judge(keys=keys, args=args)
        verdicts = []
        for kind, owner in zip(reply[::2], reply[1::2], strict=True):
            kind = kind.decode()
            verdicts.append(DedupVerdict(None) if kind == "unique" else DedupVerdict(kind, owner.decode()))
        return verdicts
