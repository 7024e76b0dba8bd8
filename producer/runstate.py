"""A run's state in Redis: what was asked for, what was issued, what came back.

Every key of a run starts with ``convfarm:run:<run>``. The counters are written by the
producer (``issue``) and the collector (``record_outcome``); ``producer status`` reads
them. ``record_outcome`` is one Lua script so that the per-word bookkeeping (count the
outcome once, decide whether to retry, mark the word done) is atomic even with several
collectors, and idempotent when a result is delivered twice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from producer.config import RunConfig
from producer.messages import queue_for_model

RUNS_INDEX = "convfarm:runs"


def run_key(run: str, part: str = "") -> str:
    return f"convfarm:run:{run}" + (f":{part}" if part else "")


def run_id_for(config: RunConfig) -> str:
    """Same config, same run: re-enqueueing a config continues its run instead of starting over."""
    return f"{config.name}-{config.config_hash()[:8]}"


# KEYS: outcomes retries reported accepted issued done short counts meta
# ARGV: word attempt status reason per_word budget
_RECORD_OUTCOME = """
local field = ARGV[1] .. '\\31' .. ARGV[2]
local word = ARGV[1]
local per_word = tonumber(ARGV[5])
local budget = tonumber(ARGV[6])
if redis.call('HSETNX', KEYS[1], field, ARGV[3]) == 0 then
  local again = tonumber(redis.call('HGET', KEYS[2], field) or '-1')
  return {0, again, redis.call('SCARD', KEYS[6])}
end
local reported = redis.call('HINCRBY', KEYS[3], word, 1)
local accepted = tonumber(redis.call('HGET', KEYS[4], word) or '0')
if ARGV[3] == 'accepted' then
  accepted = redis.call('HINCRBY', KEYS[4], word, 1)
  redis.call('HINCRBY', KEYS[8], 'accepted', 1)
else
  redis.call('HINCRBY', KEYS[8], 'rejected', 1)
  redis.call('HINCRBY', KEYS[8], 'reason:' .. ARGV[4], 1)
end
local issued = tonumber(redis.call('HGET', KEYS[5], word) or '0')
local retry = -1
if accepted + (issued - reported) < per_word and issued < budget then
  retry = issued
  issued = redis.call('HINCRBY', KEYS[5], word, 1)
  redis.call('HSET', KEYS[2], field, retry)
end
if accepted >= per_word or issued == reported then
  if redis.call('SADD', KEYS[6], word) == 1 and accepted < per_word then
    redis.call('SADD', KEYS[7], word)
  end
end
return {1, retry, redis.call('SCARD', KEYS[6])}
"""


@dataclass(frozen=True)
class Outcome:
    new: bool  # False when this result had been counted before (a redelivery)
    retry_attempt: int | None  # the attempt to enqueue next for this word, if any
    words_done: int


@dataclass(frozen=True)
class RunInfo:
    run: str
    config: RunConfig
    out_dir: str
    queue: str
    status: str
    created_at: float
    total_words: int

    @property
    def budget(self) -> int:
        return self.config.per_word * self.config.max_attempts


class RunStore:
    """Reads and writes the Redis keys of runs."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._record = client.register_script(_RECORD_OUTCOME)

    # --- creating and reading runs ---------------------------------------------------------
    def create(self, run: str, config: RunConfig, out_dir: str, queue: str | None = None) -> RunInfo:
        """Record the run once; a second call keeps the first record (idempotent enqueue)."""
        queue = queue or queue_for_model(config.model)
        meta = {
            "config": config.canonical_json(),
            "out_dir": out_dir,
            "queue": queue,
            "status": "active",
            "created_at": repr(time.time()),
            "total_words": str(len(config.words)),
        }
        key = run_key(run)
        if self.redis.hsetnx(key, "config", meta["config"]):
            self.redis.hset(key, mapping=meta)
            self.redis.zadd(RUNS_INDEX, {run: float(meta["created_at"])})
        info = self.get(run)
        assert info is not None
        return info

    def get(self, run: str) -> RunInfo | None:
        meta = self.redis.hgetall(run_key(run))
        if not meta or b"config" not in meta:
            return None
        text = {k.decode(): v.decode() for k, v in meta.items()}
        return RunInfo(
            run=run,
            config=RunConfig.model_validate_json(text["config"]),
            out_dir=text["out_dir"],
            queue=text["queue"],
            status=text.get("status", "active"),
            created_at=float(text.get("created_at", "0")),
            total_words=int(text.get("total_words", "0")),
        )

    def list_runs(self) -> list[str]:
        return [r.decode() for r in self.redis.zrange(RUNS_INDEX, 0, -1)]

    def set_status(self, run: str, status: str) -> None:
        self.redis.hset(run_key(run), mapping={"status": status, f"{status}_at": repr(time.time())})

    # --- issuing attempts ----------------------------------------------------------------------
    def shortfall(self, info: RunInfo) -> dict[str, int]:
        """Per word: how many more attempts to issue now so that accepted + in flight reaches the quota."""
        words = info.config.words
        pipe = self.redis.pipeline()
        for part in ("accepted", "issued", "reported"):
            pipe.hmget(run_key(info.run, part), words)
        accepted, issued, reported = (list(map(_int, values)) for values in pipe.execute())
        need: dict[str, int] = {}
        for word, acc, iss, rep in zip(words, accepted, issued, reported, strict=True):
            missing = info.config.per_word - acc - (iss - rep)
            missing = min(missing, info.budget - iss)
            if missing > 0:
                need[word] = missing
        return need

    def issue(self, run: str, word: str, count: int) -> list[int]:
        """Reserve ``count`` attempt numbers for ``word``."""
        last = self.redis.hincrby(run_key(run, "issued"), word, count)
        return list(range(last - count, last))

    # --- outcomes ------------------------------------------------------------------------------
    def record_outcome(self, info: RunInfo, word: str, attempt: int, status: str, reason: str | None) -> Outcome:
        parts = ("outcomes", "retries", "reported", "accepted", "issued", "done", "short", "counts")
        keys = [run_key(info.run, p) for p in parts]
        args: list[Any] = [word, attempt, status, reason or "", info.config.per_word, info.budget]
        new, retry, done = self._record(keys=keys, args=args)
        return Outcome(new=bool(new), retry_attempt=None if int(retry) < 0 else int(retry), words_done=int(done))

    def words_done(self, run: str) -> int:
        return int(self.redis.scard(run_key(run, "done")))

    def counts(self, run: str) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.redis.hgetall(run_key(run, "counts")).items()}

    def short_words(self, run: str) -> list[str]:
        return sorted(w.decode() for w in self.redis.smembers(run_key(run, "short")))

    # --- shards (written by collectors, read for the manifest) --------------------------------
    def next_shard_number(self, run: str, kind: str) -> int:
        return int(self.redis.incr(run_key(run, f"shard_seq:{kind}"))) - 1

    def add_shard(self, run: str, name: str, entry: dict[str, Any]) -> None:
        self.redis.hset(run_key(run, "shards"), name, json.dumps(entry, sort_keys=True))

    def shards(self, run: str) -> dict[str, dict[str, Any]]:
        raw = self.redis.hgetall(run_key(run, "shards"))
        return {k.decode(): json.loads(v) for k, v in sorted(raw.items())}


def _int(value: bytes | None) -> int:
    return int(value) if value is not None else 0
