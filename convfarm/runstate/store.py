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
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from convfarm.config import RunConfig
from convfarm.messages import queue_for_model

RUNS_INDEX = "convfarm:runs"
# Every issued attempt with no outcome yet, scored by its lease deadline (Redis clock, epoch
# seconds); one set for all runs, so one sweep finds the expired ones (docs/design.md,
# "Delivery guarantees"). Members: run, word, attempt joined by U+001F.
LEASES = "convfarm:leases"
COLLECTORS = "convfarm:collectors"  # collector name -> last time its loop turned (epoch seconds)
WORKER_KEY = "convfarm:worker:"  # per-worker figures (model, tasks, tokens), written by the tasks
_HERE = Path(__file__).resolve().parent
STATUSES = ("active", "complete", "cancelled", "failed")
# The committed status of a record under its word's floor: written and counted long ago, its
# entries trimmed. Not ``accepted``, so nothing (coverage, the outcome) is counted for it again.
FINISHED = "finished"


def run_key(run: str, part: str = "") -> str:
    return f"convfarm:run:{run}" + (f":{part}" if part else "")


def run_id_for(config: RunConfig) -> str:
    """Same config, same run: re-enqueueing a config continues its run instead of starting over."""
    return f"{config.name}-{config.config_hash()[:8]}"


def attempt_field(word: str, attempt: int) -> str:
    """The hash field of one attempt (``running``, ``deliveries``, ``outcomes``): word, unit separator, attempt."""
    return f"{word}\x1f{attempt}"


def lease_member(run: str, word: str, attempt: int) -> str:
    return f"{run}\x1f{attempt_field(word, attempt)}"


def parse_lease_member(member: str) -> tuple[str, str, int]:
    run, rest = member.split("\x1f", 1)  # a run id holds no control character (config.name)
    word, attempt = rest.rsplit("\x1f", 1)
    return run, word, int(attempt)


def _lease_seconds() -> int:
    from convfarm.settings import get_settings

    return get_settings().lease


def _source(name: str) -> str:
    return (_HERE / f"{name}.lua").read_text(encoding="utf-8")


# the helpers every script may call (Redis scripts cannot load one another)
_PRELUDE = _source("_floor")


def _script(client: redis.Redis, name: str) -> Any:
    """A Lua script of this package (``<name>.lua`` beside this module), registered once per store."""
    return client.register_script(_PRELUDE + _source(name))


# A per-item script (``<name>.lua``) run for a whole batch in one script call: its text becomes
# the body of a Lua function called once per item, in order, with the item's ARGV. One EVALSHA
# per batch instead of one per item (Redis's fixed cost per script call and redis-py's packing
# were most of the bookkeeping's time); each item is decided by the same code as alone, and the
# batch is atomic as a whole. ARGV: how many values an item has, then the items' values; the
# reply is the items' replies, concatenated.
_BATCH = """
%s
local function one(ARGV)
%s
end
local per = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV, per do
  local item = {}
  for j = i, i + per - 1 do item[#item + 1] = ARGV[j] end
  for _, value in ipairs(one(item)) do out[#out + 1] = value end
end
return out
"""


def _batch_script(client: redis.Redis, name: str) -> Any:
    return client.register_script(_BATCH % (_PRELUDE, _source(name)))


def _batch_args(items: list[list[Any]]) -> list[Any]:
    args: list[Any] = [len(items[0])]
    for item in items:
        args += item
    return args


@dataclass(frozen=True)
class RunCounts:
    """A run's outcome counters (the ``counts`` hash), unpacked once for status, manifest and summary."""

    accepted: int = 0
    rejected: int = 0
    dropped: int = 0  # never ran: the run was cancelled or the word covered
    completion_tokens: int = 0  # of every committed record, rejected ones included
    generation_ms: int = 0  # likewise: latency (a batch's time counted once per conversation in it)
    machine_ms: int = 0  # likewise: each record's share of its worker's busy time (adds up to it)
    accepted_turns: int = 0  # turns of the accepted conversations (their mean is the run's depth)
    by_reason: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_hash(cls, raw: dict[str, int]) -> RunCounts:
        return cls(accepted=raw.get("accepted", 0), rejected=raw.get("rejected", 0), dropped=raw.get("dropped", 0),
                   completion_tokens=raw.get("completion_tokens", 0), generation_ms=raw.get("generation_ms", 0),
                   machine_ms=raw.get("machine_ms", 0),
                   accepted_turns=raw.get("accepted_turns", 0),
                   by_reason={k.removeprefix("reason:"): v for k, v in sorted(raw.items()) if k.startswith("reason:")})


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
    incarnation: str = ""  # drawn when the run is created; "" for a run created before incarnations

    @property
    def budget(self) -> int:
        return (self.target or self.config.per_word) * self.config.max_attempts


class RunStore:
    """Reads and writes the Redis keys of runs."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._record = _batch_script(client, "record_outcome")
        self._issue = _batch_script(client, "issue_shortfall")
        self._advance = _script(client, "advance_round")
        self._cover = _script(client, "cover")
        self._issue_extra = _script(client, "issue_extra")
        self._lease_extend = _script(client, "lease_extend")
        self._lease_expire = _script(client, "lease_expire")
        self._count_delivery = _script(client, "count_delivery")

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
            # this incarnation of the run: a purge forgets it, the next create draws a new one; the
            # collector writes it into manifest.json and never appends to another's (docs/design.md)
            "incarnation": secrets.token_hex(8),
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
            incarnation=text.get("incarnation", ""),
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
        keys += [run_key(info.run), run_key(info.run, "done"), run_key(info.run, "short"), LEASES]
        lease, prefix = _lease_seconds(), f"{info.run}\x1f"
        words = info.config.words if words is None else words
        tasks: list[tuple[str, int]] = []
        for start in range(0, len(words), 1000):  # a script call holds Redis: ~1,000 words take a few ms
            chunk = words[start:start + 1000]
            reply = self._issue(keys=keys, args=_batch_args(
                [[word, info.config.per_word, info.config.max_attempts, lease, prefix] for word in chunk]))
            for word, first, count in zip(chunk, reply[::2], reply[1::2], strict=True):
                tasks.extend((word, attempt) for attempt in range(int(first), int(first) + int(count)))
        return tasks

    def issue(self, run: str, word: str, count: int) -> list[int]:
        """Reserve ``count`` attempt numbers for ``word`` outside the budget (``dlq --retry``); it is pending again."""
        keys = [run_key(run, "issued"), run_key(run, "done"), run_key(run, "short"), LEASES]
        last = int(self._issue_extra(keys=keys, args=[word, count, _lease_seconds(), f"{run}\x1f"]))
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

    def record_outcomes(self, info: RunInfo, outcomes: list[tuple[str, int, str, str | None]],
                        record_ids: list[str] | None = None) -> list[Outcome]:
        """:meth:`record_outcome` for a batch: one script call, each outcome decided as alone, in order.

        ``record_ids``: the record each outcome comes from (none for a dropped attempt), so that
        in forever mode its ``committed`` and ``covered_records`` entries are trimmed with the
        attempt's fields once the word's floor passes it (docs/design.md, "Run state").
        """
        if not outcomes:
            return []
        parts = ("outcomes", "retries", "reported", "accepted", "issued", "done", "short", "counts")
        keys = [run_key(info.run, p) for p in parts]
        keys += [run_key(info.run), run_key(info.run, "dropped"), run_key(info.run, "running"), run_key(info.run, "covered")]
        keys.append(LEASES)
        keys += [run_key(info.run, p) for p in ("floor", "deliveries", "committed", "covered_records")]
        lease, prefix = _lease_seconds(), f"{info.run}\x1f"
        ids = record_ids or [""] * len(outcomes)
        reply = self._record(keys=keys, args=_batch_args(
            [[word, attempt, status, reason or "", info.config.per_word, info.config.max_attempts, lease, prefix, record]
             for (word, attempt, status, reason), record in zip(outcomes, ids, strict=True)]))
        return [Outcome(new=bool(new), retry_attempt=None if int(retry) < 0 else int(retry), words_done=int(done))
                for new, retry, done in zip(reply[::3], reply[1::3], reply[2::3], strict=True)]

    def cover(self, info: RunInfo, record_id: str, words: list[str]) -> int:
        """skip_covered: ``words`` were mentioned in accepted record ``record_id``; returns words done."""
        keys = [run_key(info.run, p) for p in ("covered_records", "covered", "accepted")]
        keys += [run_key(info.run), run_key(info.run, "done"), run_key(info.run, "short")]
        return int(self._cover(keys=keys, args=[record_id, info.config.per_word, *words]))

    # --- leases (docs/design.md, "Delivery guarantees") ------------------------------------------
    def extend_lease(self, run: str, word: str, attempt: int, *, worker: str | None = None,
                     lease_seconds: int | None = None) -> bool:
        """The attempt runs (``worker`` given: it starts now, shown as running): its lease runs
        ``lease_seconds`` from now. False when its outcome is counted already (a late duplicate)."""
        field_ = attempt_field(word, attempt)
        running = json.dumps({"worker": worker, "since": time.time()}) if worker else ""
        keys = [run_key(run, "outcomes"), LEASES, run_key(run, "running"), run_key(run, "floor")]
        args = [field_, lease_member(run, word, attempt), lease_seconds or _lease_seconds(), running]
        return bool(self._lease_extend(keys=keys, args=args))

    def has_outcome(self, run: str, word: str, attempt: int) -> bool:
        """Its outcome is counted: recorded, or under the word's floor (counted, fields trimmed)."""
        pipe = self.redis.pipeline()  # MULTI: the floor and the field are read at one moment
        pipe.hexists(run_key(run, "outcomes"), attempt_field(word, attempt))
        pipe.hget(run_key(run, "floor"), word)
        recorded, floor = pipe.execute()
        return bool(recorded) or attempt < _int(floor)

    def below_floor(self, run: str, attempts: list[tuple[str, int]]) -> list[bool]:
        """Per (word, attempt): under its word's floor (forever mode: its outcome was counted and every
        per-attempt field of it trimmed, its record's ``committed`` entry included)."""
        if not attempts:
            return []
        words = sorted({word for word, _ in attempts})
        floors = dict(zip(words, map(_int, self.redis.hmget(run_key(run, "floor"), words)), strict=True))
        return [attempt < floors[word] for word, attempt in attempts]

    def server_time(self) -> float:
        seconds, micros = self.redis.time()
        return seconds + micros / 1e6

    def expired_leases(self, limit: int = 500) -> list[tuple[str, str, int]]:
        """(run, word, attempt) of leases past their deadline, oldest first."""
        members = self.redis.zrangebyscore(LEASES, "-inf", self.server_time(), start=0, num=limit)
        return [parse_lease_member(m.decode()) for m in members]

    def expire_lease(self, run: str, word: str, attempt: int, *, max_deliveries: int, queued: bool,
                     lease_seconds: int | None = None) -> int:
        """Decide one expired lease atomically: 0 nothing to do, 1 issue it again, 2 dead-letter it."""
        keys = [LEASES, run_key(run, "outcomes"), run_key(run, "running"), run_key(run, "deliveries"), run_key(run),
                run_key(run, "floor")]
        args = [lease_member(run, word, attempt), attempt_field(word, attempt), lease_seconds or _lease_seconds(),
                max_deliveries, "1" if queued else "0"]
        return int(self._lease_expire(keys=keys, args=args))

    def drop_lease(self, run: str, word: str, attempt: int) -> None:
        self.redis.zrem(LEASES, lease_member(run, word, attempt))

    def leases(self, run: str) -> dict[tuple[str, int], float]:
        """The run's leases: (word, attempt) -> deadline (for status and tests; scans the whole set)."""
        prefix = f"{run}\x1f"
        found: dict[tuple[str, int], float] = {}
        for member, score in self.redis.zscan_iter(LEASES, match=_glob_escape(prefix) + "*", count=1000):
            _, word, attempt = parse_lease_member(member.decode())
            found[(word, attempt)] = score
        return found

    def queue_length(self, queue: str) -> int:
        """Messages waiting in a Celery queue (kombu's Redis transport keeps a queue as a list of that name)."""
        return int(self.redis.llen(queue))

    def fail_run(self, run: str, reason: str) -> None:
        """The run can no longer progress (its directory cannot be written, its config no longer
        loads): ``failed`` with the reason, shown by status and ending ``--wait``."""
        self.redis.hset(run_key(run), mapping={"status": "failed", "failed_at": repr(time.time()), "error": reason})

    def record_output(self, run: str, *, host: str, path: str) -> None:
        """Where a collector writes the run (its host and directory): the producer asks this, not
        its own disk, which is not the collector's (docs/design.md, "Run directory")."""
        self.redis.hset(run_key(run), mapping={"output_host": host, "output_path": path})

    def output_location(self, run: str) -> tuple[str, str] | None:
        """(host, directory) a collector recorded for the run, or None before any wrote."""
        meta = self.meta(run, "output_host", "output_path")
        return (meta["output_host"] or "", meta["output_path"]) if meta["output_path"] else None

    def collector_alive(self, name: str) -> None:
        self.redis.zadd(COLLECTORS, {name: time.time()})

    def last_collector_seen(self) -> float | None:
        newest = self.redis.zrevrange(COLLECTORS, 0, 0, withscores=True)
        return float(newest[0][1]) if newest else None

    def count_delivery(self, run: str, word: str, attempt: int) -> int:
        """One more delivery of this attempt; returns how many there have been (kept outside the message),
        0 when the attempt is under its word's floor (counted long ago; nothing is written)."""
        keys = [run_key(run, "deliveries"), run_key(run, "floor")]
        return int(self._count_delivery(keys=keys, args=[attempt_field(word, attempt)]))

    def words_done(self, run: str) -> int:
        return int(self.redis.scard(run_key(run, "done")))

    def is_done(self, run: str, word: str) -> bool:
        return bool(self.redis.sismember(run_key(run, "done"), word))

    def counts(self, run: str) -> RunCounts:
        return RunCounts.from_hash({k.decode(): int(v) for k, v in self.redis.hgetall(run_key(run, "counts")).items()})

    def meta(self, run: str, *fields: str) -> dict[str, str | None]:
        """Fields of the run's meta hash (status, target, forever, round, ...), decoded; None when absent."""
        values = self.redis.hmget(run_key(run), list(fields))
        return {name: v.decode() if v is not None else None for name, v in zip(fields, values, strict=True)}

    def model_identity(self, run: str) -> dict[str, Any] | None:
        """The model the run's first accepted record was generated with (set once by a collector)."""
        raw = self.redis.hget(run_key(run), "model_identity")
        return json.loads(raw) if raw else None

    def word_sets(self, run: str) -> tuple[set[str], set[str], set[str]]:
        """Words done, words short, and words with an attempt running now (and not done)."""
        pipe = self.redis.pipeline()
        pipe.smembers(run_key(run, "done"))
        pipe.smembers(run_key(run, "short"))
        pipe.hkeys(run_key(run, "running"))
        done, short, running = pipe.execute()
        done_words = {w.decode() for w in done}
        running_words = {key.decode().split("\x1f", 1)[0] for key in running} - done_words
        return done_words, {w.decode() for w in short}, running_words

    def still_needed(self, info: RunInfo, target: int) -> int:
        """Accepted conversations still missing for words not done (the ETA's numerator)."""
        pipe = self.redis.pipeline()
        pipe.hgetall(run_key(info.run, "accepted"))
        pipe.hgetall(run_key(info.run, "covered"))
        pipe.smembers(run_key(info.run, "done"))
        accepted, covered, done = pipe.execute()
        return sum(max(0, target - int(accepted.get(w.encode(), 0)) - int(covered.get(w.encode(), 0)))
                   for w in info.config.words if w.encode() not in done)

    def accepted_of(self, run: str, words: list[str]) -> list[int]:
        return [_int(v) for v in self.redis.hmget(run_key(run, "accepted"), words)] if words else []

    # --- what the collector wrote (exactly-once output) -------------------------------------------
    def committed_statuses(self, run: str, ids: list[str],
                           attempts: list[tuple[str, int]] | None = None) -> list[str | None]:
        """Per record id: the status it was written with (``accepted`` / ``rejected:<reason>``), or None.

        With the records' (word, attempt): :data:`FINISHED` for one under its word's floor (forever
        mode: written, counted, and its ``committed`` entry trimmed).
        """
        if not ids:
            return []
        words = sorted({word for word, _ in attempts or []})
        pipe = self.redis.pipeline(transaction=False)  # one round trip
        pipe.hmget(run_key(run, "committed"), ids)
        if words:
            pipe.hmget(run_key(run, "floor"), words)
        committed, *floors = pipe.execute()
        statuses = [v.decode() if v is not None else None for v in committed]
        if attempts is not None and floors:
            floor = dict(zip(words, map(_int, floors[0]), strict=True))
            statuses = [FINISHED if attempt < floor[word] else status
                        for status, (word, attempt) in zip(statuses, attempts, strict=True)]
        return statuses

    def mark_committed(self, run: str, statuses: dict[str, str], *, model_identity: str | None = None,
                       counters: dict[str, int] | None = None, only_new: bool = False) -> None:
        """Record ids now on disk, and what they add to the run's counters (see :class:`RunCounts`).

        ``only_new``: keep an existing status, as after recovering a shard.
        """
        if not statuses:
            return
        key = run_key(run, "committed")
        pipe = self.redis.pipeline()
        if only_new:
            for record, status in statuses.items():
                pipe.hsetnx(key, record, status)
        else:
            pipe.hset(key, mapping=statuses)
        if model_identity is not None:
            pipe.hsetnx(run_key(run), "model_identity", model_identity)
        for counter, amount in (counters or {}).items():
            if amount:
                pipe.hincrby(run_key(run, "counts"), counter, amount)
        pipe.execute()

    # --- dead letters ------------------------------------------------------------------------------
    def add_dead_letter(self, run: str, letter: dict[str, Any]) -> None:
        self.redis.rpush(run_key(run, "dlq"), json.dumps(letter))

    def dead_letters(self, run: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.redis.lrange(run_key(run, "dlq"), 0, -1)]

    def dead_letter_count(self, run: str) -> int:
        return int(self.redis.llen(run_key(run, "dlq")))

    def take_dead_letters(self, run: str) -> tuple[str, list[dict[str, Any]]]:
        """Move the dead letters aside (atomic: two retries never take the same letter); (receipt, letters)."""
        receipt = run_key(run, f"dlq:retrying:{time.time_ns()}")
        try:
            self.redis.rename(run_key(run, "dlq"), receipt)
        except redis.ResponseError as exc:  # "no such key": the list is empty
            if "no such key" in str(exc).lower():
                return receipt, []
            raise
        return receipt, [json.loads(raw) for raw in self.redis.lrange(receipt, 0, -1)]

    def archive_dead_letters(self, run: str, receipt: str, letters: list[dict[str, Any]]) -> None:
        """Retried letters go to ``dlq:retried`` (kept for the record); their old delivery counters are dropped."""
        pipe = self.redis.pipeline()
        for letter in letters:
            pipe.hdel(run_key(run, "deliveries"), attempt_field(letter["word"], letter["attempt"]))
        if letters:
            pipe.rpush(run_key(run, "dlq:retried"), *[json.dumps({**letter, "retried_at": time.time()}) for letter in letters])
        pipe.delete(receipt)
        pipe.execute()

    # --- workers (every run: a worker serves whatever its queue holds) ------------------------------
    def report_worker(self, worker: str, *, model: str, model_file: str, completion_tokens: int, seconds: float) -> None:
        key = WORKER_KEY + worker
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping={"model": model, "model_file": model_file, "last_seen": time.time()})
        pipe.hincrby(key, "tasks", 1)
        pipe.hincrby(key, "completion_tokens", completion_tokens)
        pipe.hincrbyfloat(key, "generation_seconds", seconds)
        pipe.expire(key, 7 * 86400)
        pipe.execute()

    def worker_figures(self) -> dict[str, dict[str, str]]:
        """Per worker name: the fields :meth:`report_worker` keeps."""
        return {key.decode().removeprefix(WORKER_KEY): {k.decode(): v.decode() for k, v in self.redis.hgetall(key).items()}
                for key in sorted(self.redis.scan_iter(match=WORKER_KEY + "*", count=500))}

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

    # --- retention and purge: every key of a run, dedup's included, starts with run_key(run) ----------
    def run_keys(self, run: str) -> list[str]:
        """Every Redis key of ``run`` (SCAN, never KEYS: a big farm's Redis is not blocked)."""
        base = run_key(run)
        pattern = _glob_escape(base) + "*"
        found = set()
        for raw in self.redis.scan_iter(match=pattern, count=1000):
            key = raw.decode()
            if key == base or key.startswith(base + ":"):  # not a run whose id merely starts like this one
                found.add(key)
        return sorted(found)

    def purge(self, run: str, *, dry_run: bool = False) -> list[str]:
        """Delete every key of ``run`` and its entry in the runs index; the keys (that would be) deleted."""
        keys = self.run_keys(run)
        if not dry_run:
            pipe = self.redis.pipeline(transaction=False)
            for start in range(0, len(keys), 500):
                pipe.unlink(*keys[start:start + 500])
            pipe.zrem(RUNS_INDEX, run)
            # its attempts' leases live in the shared lease set: a purged run must not be re-issued
            leases = [lease_member(run, word, attempt) for word, attempt in self.leases(run)]
            for start in range(0, len(leases), 500):
                pipe.zrem(LEASES, *leases[start:start + 500])
            pipe.execute()
        return keys

    def expire_run(self, run: str, seconds: int) -> int:
        """Retention of a finished run: every key of it expires in ``seconds``; the keys touched."""
        keys = self.run_keys(run)
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.expire(key, seconds)
        pipe.execute()
        return len(keys)

    def keep_run(self, run: str) -> None:
        """Undo :meth:`expire_run`: a finished run that is resumed must not expire under its workers."""
        pipe = self.redis.pipeline(transaction=False)
        for key in self.run_keys(run):
            pipe.persist(key)
        pipe.execute()

    def forget_expired_runs(self) -> list[str]:
        """Drop runs whose keys expired from the runs index (``producer runs`` lists only live runs)."""
        gone = [run for run in self.list_runs() if not self.redis.exists(run_key(run))]
        if gone:
            self.redis.zrem(RUNS_INDEX, *gone)
        return gone


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _int(value: bytes | None) -> int:
    return int(value) if value is not None else 0
