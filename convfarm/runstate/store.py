"""A run's state in Redis: what was asked for, what was issued, what came back.

Every key of a run starts with its meta key (convfarm/runstate/keys.py). The counters are written by the
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
from enum import StrEnum
from typing import Any

import redis

from convfarm.config import RunConfig, stored_config
from convfarm.messages import queue_for_model
from convfarm.runstate.deadletters import DeadLetterRegistry
from convfarm.runstate.fences import CollectorFences, Fenced
from convfarm.runstate.keys import COLLECTOR_FENCES, LEASES, RUNS_INDEX, SEP, RunKeys, attempt_field
from convfarm.runstate.leases import LeaseRegistry, glob_escape, lease_member, lease_prefix, lease_seconds
from convfarm.runstate.processes import CollectorHeartbeats, WorkerFigures
from convfarm.runstate.rates import RateRegistry
from convfarm.runstate.scripts import Script, batch_args, keys_of
from convfarm.runstate.shard_index import ShardIndex

STATUSES = ("active", "complete", "cancelled", "failed")
ISSUE_CHUNK = 1_000  # attempts of one word issued by one script call
ISSUE_PER_CALL = 2_000  # attempts issued by one script call (its words together)


def run_id_for(config: RunConfig) -> str:
    """Same config, same run: re-enqueueing a config continues its run instead of starting over."""
    return f"{config.name}-{config.config_hash()[:8]}"


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
    scores: dict[str, int] = field(default_factory=dict)  # the relevance counters (convfarm/judge/distribution.py)

    @classmethod
    def from_hash(cls, raw: dict[str, int]) -> RunCounts:
        return cls(accepted=raw.get("accepted", 0), rejected=raw.get("rejected", 0), dropped=raw.get("dropped", 0),
                   completion_tokens=raw.get("completion_tokens", 0), generation_ms=raw.get("generation_ms", 0),
                   machine_ms=raw.get("machine_ms", 0),
                   accepted_turns=raw.get("accepted_turns", 0),
                   by_reason={k.removeprefix("reason:"): v for k, v in sorted(raw.items()) if k.startswith("reason:")},
                   scores={k.removeprefix("score:"): v for k, v in raw.items() if k.startswith("score:")})


@dataclass(frozen=True)
class Outcome:
    new: bool  # False when this result had been counted before (a redelivery)
    retry_attempt: int | None  # the attempt to enqueue next for this word, if any
    words_done: int


# claim_records.lua's reply for an id that another live collector holds (it writes it)
CLAIMED_ELSEWHERE = "busy"


class StartVerdict(StrEnum):
    """``task_start.lua``'s first reply, spelled as the script spells it."""

    RUN = "run"
    DROP = "drop"  # the run is cancelled or failed, or the word is covered (``TaskStart.why``)
    DUPLICATE = "duplicate"  # this attempt's outcome is counted already (a redelivered or re-issued copy)
    GIVE_UP = "give_up"  # its delivery budget is spent


@dataclass(frozen=True)
class TaskStart:
    """What :meth:`RunStore.start_task` decided for a delivered task (``task_start.lua``)."""

    verdict: StartVerdict
    deliveries: int = 0  # this delivery's number ("run", "give_up")
    why: str = ""  # "drop": "run cancelled", "run failed" or "word covered"


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
    """A run's meta, counters and the issue/outcome scripts; the registries beside them.

    The registries (one small class per Redis structure, each naming its own keys and cleanup):
    ``leases`` (:class:`LeaseRegistry`), ``dead_letters`` (:class:`DeadLetterRegistry`),
    ``rates`` (:class:`RateRegistry`), ``workers`` (:class:`WorkerFigures`), ``collectors``
    (:class:`CollectorHeartbeats`) and ``shard_index`` (:class:`ShardIndex`, the collectors'
    ``ShardRegistry``).
    """

    def __init__(self, client: redis.Redis, broker: redis.Redis | None = None) -> None:
        self.redis = client
        # the Celery broker's Redis, for its queues' lengths: another server than the run
        # state's when CONVFARM_STATE_URL is set (docs/scaling.md)
        self.broker = broker if broker is not None else client
        self.leases = LeaseRegistry(client)
        self.dead_letters = DeadLetterRegistry(client)
        self.rates = RateRegistry(client)
        self.workers = WorkerFigures(client)
        self.collectors = CollectorHeartbeats(client)
        self.shard_index = ShardIndex(client)
        self.fences = CollectorFences(client)
        self._create = Script(client, "create_run")
        self._claim = Script(client, "claim_records")
        self._confirm = Script(client, "confirm_records")
        self._settle = Script(client, "settle_records")
        self._record = Script(client, "record_outcome", batch=True)
        self._issue = Script(client, "issue_shortfall", batch=True)
        self._advance = Script(client, "advance_round")
        self._cover = Script(client, "cover")
        self._issue_extra = Script(client, "issue_extra")
        self._count_delivery = Script(client, "count_delivery")
        self._task_start = Script(client, "task_start")

    # --- creating and reading runs ---------------------------------------------------------
    def create(self, run: str, config: RunConfig, out_dir: str, queue: str | None = None) -> RunInfo:
        """Record the run once, in one atomic step (meta and runs index together); a second call
        keeps the first record (idempotent enqueue, also when several enqueue at once)."""
        queue = queue or queue_for_model(config.model)
        meta = {
            "config": config.canonical_json(),
            "out_dir": out_dir,
            "queue": queue,
            "status": "active",
            "total_words": str(len(config.words)),
            "target": str(config.per_word),
            "round": "1",
            "forever": "0",
            # this incarnation of the run: a purge forgets it, the next create draws a new one; the
            # collector writes it into manifest.json and never appends to another's (docs/design.md)
            "incarnation": secrets.token_hex(8),
        }
        args: list[str] = [run, repr(time.time())]
        for name, value in meta.items():
            args += [name, value]
        self._create(keys_of(RunKeys(run), self._create.key_names, runs_index=RUNS_INDEX), args)
        info = self.get(run)
        assert info is not None
        return info

    def get(self, run: str) -> RunInfo | None:
        meta = self.redis.hgetall(RunKeys(run).meta)
        if not meta or b"config" not in meta:
            return None
        text = {k.decode(): v.decode() for k, v in meta.items()}
        config = stored_config(text["config"])
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

    def is_listed(self, run: str) -> bool:
        """In the runs index: created by an enqueue (and not purged)."""
        return self.redis.zscore(RUNS_INDEX, run) is not None

    def list_runs(self) -> list[str]:
        return [r.decode() for r in self.redis.zrange(RUNS_INDEX, 0, -1)]

    def status(self, run: str) -> str | None:
        value = self.redis.hget(RunKeys(run).meta, "status")
        return value.decode() if value else None

    def set_status(self, run: str, status: str) -> None:
        self.redis.hset(RunKeys(run).meta, mapping={"status": status, f"{status}_at": repr(time.time())})

    def set_forever(self, run: str, forever: bool) -> None:
        self.redis.hset(RunKeys(run).meta, "forever", "1" if forever else "0")

    def fail_run(self, run: str, reason: str) -> None:
        """The run can no longer progress (its directory cannot be written, its config no longer
        loads): ``failed`` with the reason, shown by status and ending ``--wait``."""
        self.redis.hset(RunKeys(run).meta, mapping={"status": "failed", "failed_at": repr(time.time()), "error": reason})

    def set_paused(self, run: str, reason: str | None) -> None:
        """A collector cannot write the run now (a full disk): why, shown by status; None: resumed."""
        if reason is None:
            self.redis.hdel(RunKeys(run).meta, "paused")
        else:
            self.redis.hset(RunKeys(run).meta, "paused", reason)

    def meta(self, run: str, *fields: str) -> dict[str, str | None]:
        """Fields of the run's meta hash (status, target, forever, round, ...), decoded; None when absent."""
        values = self.redis.hmget(RunKeys(run).meta, list(fields))
        return {name: v.decode() if v is not None else None for name, v in zip(fields, values, strict=True)}

    def model_identity(self, run: str) -> dict[str, Any] | None:
        """The model the run's first accepted record was generated with (set once by a collector)."""
        raw = self.redis.hget(RunKeys(run).meta, "model_identity")
        return json.loads(raw) if raw else None

    def target(self, run: str) -> int:
        return _int(self.redis.hget(RunKeys(run).meta, "target"))

    # --- issuing attempts ----------------------------------------------------------------------
    def issue_shortfall(self, info: RunInfo, words: list[str] | None = None) -> list[tuple[str, int]]:
        """Reserve the missing attempts of every word (or of ``words``); returns (word, attempt) pairs."""
        keys = keys_of(RunKeys(info.run), self._issue.key_names, leases=LEASES)
        lease, prefix = lease_seconds(), lease_prefix(info.run)
        words = info.config.words if words is None else words
        tasks: list[tuple[str, int]] = []
        # a script call holds Redis: at most ISSUE_PER_CALL attempts each (~1,000 words of one
        # attempt take a few ms), a word's attempts ISSUE_CHUNK at a time; a word that got a
        # whole chunk is asked again until it needs no more
        per_word = min(max(info.target, info.config.per_word), ISSUE_CHUNK)
        step = max(1, ISSUE_PER_CALL // per_word)
        todo = list(words)
        while todo:
            again: list[str] = []
            for start in range(0, len(todo), step):
                chunk = todo[start:start + step]
                reply = self._issue(keys, batch_args(
                    [[word, info.config.per_word, info.config.max_attempts, lease, prefix, ISSUE_CHUNK]
                     for word in chunk]))
                for word, first, count in zip(chunk, reply[::2], reply[1::2], strict=True):
                    tasks.extend((word, attempt) for attempt in range(int(first), int(first) + int(count)))
                    if int(count) == ISSUE_CHUNK:
                        again.append(word)
            todo = again
        return tasks

    def issue_retry_attempts(self, run: str, word: str, count: int) -> list[int]:
        """Reserve ``count`` new attempts of ``word`` outside its budget for a dead-letter retry
        (``dlq --retry``); the word is pending again and each attempt holds a lease."""
        keys = keys_of(RunKeys(run), self._issue_extra.key_names, leases=LEASES)
        last = int(self._issue_extra(keys, [word, count, lease_seconds(), lease_prefix(run)]))
        return list(range(last - count, last))

    def advance_round(self, info: RunInfo, expected_target: int) -> bool:
        keys = keys_of(RunKeys(info.run), self._advance.key_names)
        return bool(self._advance(keys, [expected_target, info.config.per_word]))

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
        keys = keys_of(RunKeys(info.run), self._record.key_names, leases=LEASES)
        lease, prefix = lease_seconds(), lease_prefix(info.run)
        ids = record_ids or [""] * len(outcomes)
        reply = self._record(keys, batch_args(
            [[word, attempt, status, reason or "", info.config.per_word, info.config.max_attempts, lease, prefix, record]
             for (word, attempt, status, reason), record in zip(outcomes, ids, strict=True)]))
        return [Outcome(new=bool(new), retry_attempt=None if int(retry) < 0 else int(retry), words_done=int(done))
                for new, retry, done in zip(reply[::3], reply[1::3], reply[2::3], strict=True)]

    def cover(self, info: RunInfo, record_id: str, words: list[str]) -> int:
        """skip_covered: ``words`` were mentioned in accepted record ``record_id``; returns words done."""
        keys = keys_of(RunKeys(info.run), self._cover.key_names)
        return int(self._cover(keys, [record_id, info.config.per_word, *words]))

    def has_outcome(self, run: str, word: str, attempt: int) -> bool:
        """Its outcome is counted: recorded, or under the word's floor (counted, fields trimmed)."""
        keys = RunKeys(run)
        pipe = self.redis.pipeline()  # MULTI: the floor and the field are read at one moment
        pipe.hexists(keys.outcomes, attempt_field(word, attempt))
        pipe.hget(keys.floor, word)
        recorded, floor = pipe.execute()
        return bool(recorded) or attempt < _int(floor)

    def below_floor(self, run: str, attempts: list[tuple[str, int]]) -> list[bool]:
        """Per (word, attempt): under its word's floor (forever mode: its outcome was counted and every
        per-attempt field of it trimmed, its record's ``committed`` entry included)."""
        if not attempts:
            return []
        words = sorted({word for word, _ in attempts})
        floors = dict(zip(words, map(_int, self.redis.hmget(RunKeys(run).floor, words)), strict=True))
        return [attempt < floors[word] for word, attempt in attempts]

    def start_task(self, info: RunInfo, word: str, attempt: int, *, worker: str, max_deliveries: int) -> TaskStart:
        """A generation task's checks and writes before it generates, in one script call: the run's
        status, the word covered (skip_covered), the outcome counted, one more delivery, and the
        attempt's lease extended and shown as running (docs/design.md, "Delivery guarantees")."""
        keys = keys_of(RunKeys(info.run), self._task_start.key_names, leases=LEASES)
        running = json.dumps({"worker": worker, "since": time.time()})
        verdict, value = self._task_start(keys, [
            attempt_field(word, attempt), lease_member(info.run, word, attempt), lease_seconds(), running,
            "1" if info.config.skip_covered else "0", word, max_deliveries])
        verdict = StartVerdict(verdict.decode() if isinstance(verdict, bytes) else verdict)
        if verdict is StartVerdict.DROP:
            return TaskStart(verdict, why=value.decode() if isinstance(value, bytes) else str(value))
        return TaskStart(verdict, deliveries=int(value))

    def count_delivery(self, run: str, word: str, attempt: int) -> int:
        """One more delivery of this attempt; returns how many there have been (kept outside the message),
        0 when the attempt is under its word's floor (counted long ago; nothing is written)."""
        keys = keys_of(RunKeys(run), self._count_delivery.key_names)
        return int(self._count_delivery(keys, [attempt_field(word, attempt)]))

    def queue_length(self, queue: str) -> int:
        """Messages waiting in a Celery queue (kombu's Redis transport keeps a queue as a list of that name)."""
        return int(self.broker.llen(queue))

    def record_output(self, run: str, *, host: str, path: str) -> None:
        """Where a collector writes the run (its host and directory): the producer asks this, not
        its own disk, which is not the collector's (docs/design.md, "Run directory")."""
        self.redis.hset(RunKeys(run).meta, mapping={"output_host": host, "output_path": path})

    def output_location(self, run: str) -> tuple[str, str] | None:
        """(host, directory) a collector recorded for the run, or None before any wrote."""
        meta = self.meta(run, "output_host", "output_path")
        return (meta["output_host"] or "", meta["output_path"]) if meta["output_path"] else None

    # --- counters --------------------------------------------------------------------------------
    def shortfall(self, info: RunInfo) -> dict[str, int]:
        """Per word: how many attempts an enqueue would issue now (read only: ``enqueue --dry-run``).

        The same arithmetic as ``issue_shortfall.lua``, which issues them atomically; this twin
        only reads, so a dry run changes nothing."""
        keys, words = RunKeys(info.run), info.config.words
        pipe = self.redis.pipeline(transaction=False)
        for family in (keys.accepted, keys.issued, keys.reported, keys.dropped, keys.covered):
            pipe.hmget(family, words)
        pipe.hget(keys.meta, "target")
        *columns, target = pipe.execute()
        quota = _int(target) or info.config.per_word
        need: dict[str, int] = {}
        for word, acc, iss, rep, drp, cov in zip(words, *(map(_int, c) for c in columns), strict=True):
            missing = min(quota - acc - cov - (iss - rep), quota * info.config.max_attempts - (iss - drp))
            if missing > 0:
                need[word] = missing
        return need

    def words_done(self, run: str) -> int:
        return int(self.redis.scard(RunKeys(run).done))

    def is_done(self, run: str, word: str) -> bool:
        return bool(self.redis.sismember(RunKeys(run).done, word))

    def short_words(self, run: str) -> list[str]:
        return sorted(w.decode() for w in self.redis.smembers(RunKeys(run).short))

    def counts(self, run: str) -> RunCounts:
        return RunCounts.from_hash({k.decode(): int(v) for k, v in self.redis.hgetall(RunKeys(run).counts).items()})

    def word_sets(self, run: str) -> tuple[set[str], set[str], set[str]]:
        """Words done, words short, and words with an attempt running now (and not done)."""
        keys = RunKeys(run)
        pipe = self.redis.pipeline()
        pipe.smembers(keys.done)
        pipe.smembers(keys.short)
        pipe.hkeys(keys.running)
        done, short, running = pipe.execute()
        done_words = {w.decode() for w in done}
        running_words = {key.decode().split(SEP, 1)[0] for key in running} - done_words
        return done_words, {w.decode() for w in short}, running_words

    def still_needed(self, info: RunInfo, target: int) -> int:
        """Accepted conversations still missing for words not done (the ETA's numerator)."""
        keys = RunKeys(info.run)
        pipe = self.redis.pipeline()
        pipe.hgetall(keys.accepted)
        pipe.hgetall(keys.covered)
        pipe.smembers(keys.done)
        accepted, covered, done = pipe.execute()
        return sum(max(0, target - int(accepted.get(w.encode(), 0)) - int(covered.get(w.encode(), 0)))
                   for w in info.config.words if w.encode() not in done)

    def accepted_of(self, run: str, words: list[str]) -> list[int]:
        return [_int(v) for v in self.redis.hmget(RunKeys(run).accepted, words)] if words else []

    # --- what the collector wrote (exactly-once output) -------------------------------------------
    def committed_statuses(self, run: str, ids: list[str]) -> list[str | None]:
        """Per record id: the status it was written with (``accepted`` / ``rejected:<reason>``), or None."""
        if not ids:
            return []
        return [v.decode() if v is not None else None for v in self.redis.hmget(RunKeys(run).committed, ids)]

    def claim_records(self, run: str, ids: list[str], collector: str, token: str) -> list[str | None]:
        """Claim record ids to write (atomic per id across collectors); per id: None (ours to
        write), :data:`CLAIMED_ELSEWHERE` (a live collector holds it and writes it) or its committed status.
        Raises :class:`Fenced` when ``token`` is no longer ``collector``'s (nothing claimed)."""
        if not ids:
            return []
        keys = keys_of(RunKeys(run), self._claim.key_names, fences=COLLECTOR_FENCES)
        reply = self._claim(keys, [collector, token, *ids])
        if reply[0] == b"fenced":
            raise Fenced(f"collector {collector}: its results were taken over (token {token} is void)")
        return [v.decode() or None for v in reply[1:]]

    def confirm_records(self, run: str, statuses: dict[str, str], collector: str, token: str, *,
                        counters: dict[str, int], model_identity: str | None) -> None:
        """The claimed ids are on disk: committed with their statuses, their counters added, in
        one step, only while ``token`` is current (else :class:`Fenced`, nothing changed)."""
        keys = keys_of(RunKeys(run), self._confirm.key_names, fences=COLLECTOR_FENCES)
        args: list[object] = [collector, token, model_identity or "", len(counters)]
        for counter, amount in counters.items():
            args += [counter, amount]
        for record, status in statuses.items():
            args += [record, status]
        if not int(self._confirm(keys, args)):
            raise Fenced(f"collector {collector}: its results were taken over (token {token} is void)")

    def settle_records(self, run: str, statuses: dict[str, str], writer: str) -> set[str]:
        """Records found on disk in ``writer``'s open file are committed, unless a live collector
        other than ``writer`` claimed the id (it writes it); returns the ids set."""
        if not statuses:
            return set()
        keys = keys_of(RunKeys(run), self._settle.key_names, fences=COLLECTOR_FENCES)
        args: list[object] = [writer]
        for record, status in statuses.items():
            args += [record, status]
        return {raw.decode() for raw in self._settle(keys, args)}

    def add_counters(self, run: str, counters: dict[str, int], model_identity: str | None = None) -> None:
        """What records committed outside a confirm (found on disk after a crash) add to the counters."""
        keys = RunKeys(run)
        pipe = self.redis.pipeline()
        if model_identity is not None:
            pipe.hsetnx(keys.meta, "model_identity", model_identity)
        for counter, amount in counters.items():
            if amount:
                pipe.hincrby(keys.counts, counter, amount)
        pipe.execute()

    def mark_committed(self, run: str, statuses: dict[str, str], *, model_identity: str | None = None,
                       counters: dict[str, int] | None = None, only_new: bool = False) -> None:
        """Record ids now on disk, and what they add to the run's counters (see :class:`RunCounts`).

        ``only_new``: keep an existing status, as after recovering a shard.
        """
        if not statuses:
            return
        keys = RunKeys(run)
        pipe = self.redis.pipeline()
        if only_new:
            for record, status in statuses.items():
                pipe.hsetnx(keys.committed, record, status)
        else:
            pipe.hset(keys.committed, mapping=statuses)
        if model_identity is not None:
            pipe.hsetnx(keys.meta, "model_identity", model_identity)
        for counter, amount in (counters or {}).items():
            if amount:
                pipe.hincrby(keys.counts, counter, amount)
        pipe.execute()

    # --- retention and purge: every key of a run, dedup's included, starts with RunKeys(run).meta ------
    def run_keys(self, run: str) -> list[str]:
        """Every Redis key of ``run`` (SCAN, never KEYS: a big farm's Redis is not blocked)."""
        base = RunKeys(run).meta
        pattern = glob_escape(base) + "*"
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
            self.leases.purge(run, pipe)  # the shared lease set: a purged run must not be re-issued
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
        gone = [run for run in self.list_runs() if not self.redis.exists(RunKeys(run).meta)]
        if gone:
            self.redis.zrem(RUNS_INDEX, *gone)
        return gone


def _int(value: bytes | None) -> int:
    return int(value) if value is not None else 0
