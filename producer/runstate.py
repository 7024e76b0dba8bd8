"""A run's state in Redis: what was asked for, what was issued, what came back.

Every key of a run starts with ``convfarm:run:<run>``. The counters are written by the
producer (``issue_shortfall``), the workers (a dropped task) and the collector
(``record_outcome``); ``producer status`` reads them. Each decision that touches several
counters is one Lua script, so it is atomic with several producers and collectors, and
idempotent when a result is delivered twice.

Per word: ``issued`` attempts were handed out, ``reported`` came back (accepted, rejected or
dropped), ``issued - reported`` are in flight. The quota is the run's ``target`` (meta
field; ``per_word`` at first, raised by ``per_word`` each round in forever mode); the
attempt budget is ``target * max_attempts`` minus attempts dropped by a cancel, which
never ran. A word is *done* when it has its quota (accepted, plus mentions in other
words' conversations under ``skip_covered``) or nothing is in flight and the budget is
spent (then it is also *short*).
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
STATUSES = ("active", "complete", "cancelled")


def run_key(run: str, part: str = "") -> str:
    return f"convfarm:run:{run}" + (f":{part}" if part else "")


def run_id_for(config: RunConfig) -> str:
    """Same config, same run: re-enqueueing a config continues its run instead of starting over."""
    return f"{config.name}-{config.config_hash()[:8]}"


# KEYS: outcomes retries reported accepted issued done short counts meta dropped running covered
# ARGV: word attempt status reason per_word max_attempts
_RECORD_OUTCOME = """
local field = ARGV[1] .. '\\31' .. ARGV[2]
local word = ARGV[1]
redis.call('HDEL', KEYS[11], field)
if redis.call('HSETNX', KEYS[1], field, ARGV[3]) == 0 then
  local again = tonumber(redis.call('HGET', KEYS[2], field) or '-1')
  return {0, again, redis.call('SCARD', KEYS[6])}
end
local reported = redis.call('HINCRBY', KEYS[3], word, 1)
if ARGV[3] == 'dropped' then
  -- the attempt never ran (its run was cancelled, or its word covered): no longer in
  -- flight, and it does not spend the word's attempt budget
  redis.call('HINCRBY', KEYS[10], word, 1)
  redis.call('HINCRBY', KEYS[8], 'dropped', 1)
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
end
if have >= target or issued == reported then
  if redis.call('SADD', KEYS[6], word) == 1 and have < target then
    redis.call('SADD', KEYS[7], word)
  end
end
return {1, retry, redis.call('SCARD', KEYS[6])}
"""

# KEYS: accepted issued reported dropped covered meta done short
# ARGV: word per_word max_attempts
# Reserve the attempts a word still needs; atomic, so two producers (or a producer and a
# collector topping up a forever run) never both issue the same shortfall.
_ISSUE_SHORTFALL = """
local word = ARGV[1]
local function n(key) return tonumber(redis.call('HGET', key, word) or '0') end
local target = tonumber(redis.call('HGET', KEYS[6], 'target') or ARGV[2])
local issued = n(KEYS[2])
local missing = target - n(KEYS[1]) - n(KEYS[5]) - (issued - n(KEYS[3]))
local room = target * tonumber(ARGV[3]) - (issued - n(KEYS[4]))
if room < missing then missing = room end
if missing <= 0 then return {issued, 0} end
redis.call('HINCRBY', KEYS[2], word, missing)
redis.call('SREM', KEYS[7], word)
redis.call('SREM', KEYS[8], word)
return {issued, missing}
"""

# KEYS: meta done short
# ARGV: expected_target per_word
# Forever mode: when every word met the current target, raise it by per_word. The
# expected target makes it happen once however many collectors see the round end.
_ADVANCE_ROUND = """
if redis.call('HGET', KEYS[1], 'status') ~= 'active' or redis.call('HGET', KEYS[1], 'forever') ~= '1' then
  return 0
end
local target = tonumber(redis.call('HGET', KEYS[1], 'target') or ARGV[2])
if target ~= tonumber(ARGV[1]) then return 0 end
if redis.call('SCARD', KEYS[2]) < tonumber(redis.call('HGET', KEYS[1], 'total_words')) then return 0 end
redis.call('HSET', KEYS[1], 'target', target + tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[1], 'round', 1)
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""

# KEYS: covered_records covered accepted meta done short
# ARGV: record_id per_word word...
# skip_covered: each word mentioned in an accepted conversation of another word gains one
# "coverage"; once per record (a redelivered record does not count twice).
_COVER = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return redis.call('SCARD', KEYS[5]) end
local target = tonumber(redis.call('HGET', KEYS[4], 'target') or ARGV[2])
for i = 3, #ARGV do
  local word = ARGV[i]
  local have = redis.call('HINCRBY', KEYS[2], word, 1) + tonumber(redis.call('HGET', KEYS[3], word) or '0')
  if have >= target then
    redis.call('SADD', KEYS[5], word)
    redis.call('SREM', KEYS[6], word)
  end
end
return redis.call('SCARD', KEYS[5])
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
    forever: bool = False
    target: int = 0  # accepted conversations wanted per word now (grows in forever mode)
    round: int = 1

    @property
    def budget(self) -> int:
        return (self.target or self.config.per_word) * self.config.max_attempts


class RunStore:
    """Reads and writes the Redis keys of runs."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._record = client.register_script(_RECORD_OUTCOME)
        self._issue = client.register_script(_ISSUE_SHORTFALL)
        self._advance = client.register_script(_ADVANCE_ROUND)
        self._cover = client.register_script(_COVER)

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
            "target": str(config.per_word),
            "round": "1",
            "forever": "0",
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
        config = RunConfig.model_validate_json(text["config"])
        return RunInfo(
            run=run,
            config=config,
            out_dir=text["out_dir"],
            queue=text["queue"],
            status=text.get("status", "active"),
            created_at=float(text.get("created_at", "0")),
            total_words=int(text.get("total_words", "0")),
            forever=text.get("forever") == "1",
            target=int(text.get("target", config.per_word)),
            round=int(text.get("round", "1")),
        )

    def list_runs(self) -> list[str]:
        return [r.decode() for r in self.redis.zrange(RUNS_INDEX, 0, -1)]

    def status(self, run: str) -> str | None:
        value = self.redis.hget(run_key(run), "status")
        return value.decode() if value else None

    def set_status(self, run: str, status: str) -> None:
        self.redis.hset(run_key(run), mapping={"status": status, f"{status}_at": repr(time.time())})

    def set_forever(self, run: str, forever: bool) -> None:
        self.redis.hset(run_key(run), "forever", "1" if forever else "0")

    # --- issuing attempts ----------------------------------------------------------------------
    def shortfall(self, info: RunInfo) -> dict[str, int]:
        """Per word: how many more attempts to issue now so that accepted + in flight reaches the quota (read only)."""
        words = info.config.words
        pipe = self.redis.pipeline()
        for part in ("accepted", "issued", "reported", "dropped", "covered"):
            pipe.hmget(run_key(info.run, part), words)
        pipe.hget(run_key(info.run), "target")
        *columns, target = pipe.execute()
        target = _int(target) or info.config.per_word
        need: dict[str, int] = {}
        for word, acc, iss, rep, drp, cov in zip(words, *(map(_int, c) for c in columns), strict=True):
            missing = min(target - acc - cov - (iss - rep), target * info.config.max_attempts - (iss - drp))
            if missing > 0:
                need[word] = missing
        return need

    def issue_shortfall(self, info: RunInfo, words: list[str] | None = None) -> list[tuple[str, int]]:
        """Reserve the missing attempts of every word (or of ``words``); returns (word, attempt) pairs."""
        keys = [run_key(info.run, p) for p in ("accepted", "issued", "reported", "dropped", "covered")]
        keys += [run_key(info.run), run_key(info.run, "done"), run_key(info.run, "short")]
        words = info.config.words if words is None else words
        tasks: list[tuple[str, int]] = []
        for start in range(0, len(words), 1000):
            chunk = words[start:start + 1000]
            pipe = self.redis.pipeline(transaction=False)
            for word in chunk:
                self._issue(keys=keys, args=[word, info.config.per_word, info.config.max_attempts], client=pipe)
            for word, (first, count) in zip(chunk, pipe.execute(), strict=True):
                tasks.extend((word, attempt) for attempt in range(int(first), int(first) + int(count)))
        return tasks

    def issue(self, run: str, word: str, count: int) -> list[int]:
        """Reserve ``count`` attempt numbers for ``word`` outside the budget (``dlq --retry``); it is pending again."""
        pipe = self.redis.pipeline()
        pipe.hincrby(run_key(run, "issued"), word, count)
        pipe.srem(run_key(run, "done"), word)
        pipe.srem(run_key(run, "short"), word)
        last = pipe.execute()[0]
        return list(range(last - count, last))

    def advance_round(self, info: RunInfo, expected_target: int) -> bool:
        keys = [run_key(info.run), run_key(info.run, "done"), run_key(info.run, "short")]
        return bool(self._advance(keys=keys, args=[expected_target, info.config.per_word]))

    def target(self, run: str) -> int:
        return _int(self.redis.hget(run_key(run), "target"))

    # --- outcomes ------------------------------------------------------------------------------
    def record_outcome(self, info: RunInfo, word: str, attempt: int, status: str, reason: str | None) -> Outcome:
        """Count one attempt's outcome: ``accepted``, ``rejected`` (with a reason) or ``dropped`` (never ran)."""
        return self.record_outcomes(info, [(word, attempt, status, reason)])[0]

    def record_outcomes(self, info: RunInfo, outcomes: list[tuple[str, int, str, str | None]]) -> list[Outcome]:
        """:meth:`record_outcome` for a batch, in one round trip (the scripts still run one by one, atomically)."""
        parts = ("outcomes", "retries", "reported", "accepted", "issued", "done", "short", "counts")
        keys = [run_key(info.run, p) for p in parts]
        keys += [run_key(info.run), run_key(info.run, "dropped"), run_key(info.run, "running"), run_key(info.run, "covered")]
        pipe = self.redis.pipeline(transaction=False)
        for word, attempt, status, reason in outcomes:
            args: list[Any] = [word, attempt, status, reason or "", info.config.per_word, info.config.max_attempts]
            self._record(keys=keys, args=args, client=pipe)
        return [Outcome(new=bool(new), retry_attempt=None if int(retry) < 0 else int(retry), words_done=int(done))
                for new, retry, done in pipe.execute()]

    def cover(self, info: RunInfo, record_id: str, words: list[str]) -> int:
        """skip_covered: ``words`` were mentioned in accepted record ``record_id``; returns words done."""
        keys = [run_key(info.run, p) for p in ("covered_records", "covered", "accepted")]
        keys += [run_key(info.run), run_key(info.run, "done"), run_key(info.run, "short")]
        return int(self._cover(keys=keys, args=[record_id, info.config.per_word, *words]))

    def mark_running(self, run: str, word: str, attempt: int, worker: str) -> None:
        self.redis.hset(run_key(run, "running"), f"{word}\x1f{attempt}", json.dumps({"worker": worker, "since": time.time()}))

    def words_done(self, run: str) -> int:
        return int(self.redis.scard(run_key(run, "done")))

    def is_done(self, run: str, word: str) -> bool:
        return bool(self.redis.sismember(run_key(run, "done"), word))

    def counts(self, run: str) -> dict[str, int]:
        """accepted, rejected, ``reason:<code>``, dropped, completion_tokens (the first two always present)."""
        return {"accepted": 0, "rejected": 0,
                **{k.decode(): int(v) for k, v in self.redis.hgetall(run_key(run, "counts")).items()}}

    def short_words(self, run: str) -> list[str]:
        return sorted(w.decode() for w in self.redis.smembers(run_key(run, "short")))

    # --- throughput (collector writes, status reads) ----------------------------------------
    RATE_BUCKET = 5  # seconds

    def add_rate(self, run: str, *, results: int, accepted: int, tokens: int, now: float | None = None) -> None:
        bucket = int((now or time.time()) // self.RATE_BUCKET)
        key = run_key(run, f"rate:{bucket}")
        pipe = self.redis.pipeline()
        pipe.hincrby(key, "results", results)
        pipe.hincrby(key, "accepted", accepted)
        pipe.hincrby(key, "tokens", tokens)
        pipe.expire(key, 600)
        pipe.execute()

    def rates(self, run: str, window: float = 60.0, now: float | None = None) -> tuple[float, dict[str, int]]:
        """Sums of the rate buckets covering the last ``window`` seconds, and the seconds they span."""
        now = now or time.time()
        current = int(now // self.RATE_BUCKET)
        first = current - int(window // self.RATE_BUCKET)
        pipe = self.redis.pipeline()
        for bucket in range(first, current + 1):
            pipe.hgetall(run_key(run, f"rate:{bucket}"))
        totals: dict[str, int] = {"results": 0, "accepted": 0, "tokens": 0}
        for reply in pipe.execute():
            for k, v in reply.items():
                totals[k.decode()] = totals.get(k.decode(), 0) + int(v)
        return now - first * self.RATE_BUCKET, totals

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
