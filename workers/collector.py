"""The collector: results stream -> re-check -> dedup -> shards + manifest.

Why a Redis stream and not a Celery queue: a collector must make a batch durable
(write, fsync) *before* it acknowledges it. With one Celery message per result that means
one fsync and one ack round trip per conversation; a stream consumer group hands over
hundreds of results per ``XREADGROUP``, and we fsync and ``XACK`` them together. The
group also gives what a second collector needs: every entry goes to one consumer, and
the pending entries of a collector that died are taken over with ``XAUTOCLAIM``.

Exactly-once output on at-least-once delivery: a record id is written at most once per
run (``committed`` hash in Redis, rebuilt from our open shard file after a crash), and
the per-word bookkeeping (``RunStore.record_outcome``) is idempotent.

The collector also drives a run's lifecycle: it sends the retries ``record_outcome``
decides, counts mentions for ``skip_covered``, finishes a run when every word is done,
and in forever mode raises the target and tops the run up instead of finishing it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from convfarm.coverage import mentioned_words
from convfarm.judging import rule_context, rules_stamp
from convfarm.messages import (
    COLLECTOR_GROUP,
    GENERATE_TASK,
    RESULTS_STREAM,
    ConversationRecord,
    task_id,
)
from convfarm.rules import evaluate
from convfarm.rundir.manifest import build_manifest, write_manifest
from convfarm.rundir.shards import ShardSet
from convfarm.runstate import RunInfo, RunStore
from convfarm.settings import get_settings
from workers.dedup import DUPLICATE, NEAR_DUPLICATE, Deduplicator, content_hash

log = logging.getLogger(__name__)

__all__ = ["DUPLICATE", "NEAR_DUPLICATE", "Collector", "CollectorService", "content_hash"]

SendTask = Callable[[RunInfo, str, int], None]
# a forever run never goes idle, so its open shards are also sealed at this age: output
# keeps appearing while the run goes on (a multiple of the idle seal time)
MAX_OPEN_AGE_FACTOR = 10
TOP_UP_INTERVAL = 15.0  # seconds between checks that a forever run still has work queued


@dataclass
class RunHandle:
    info: RunInfo
    shards: ShardSet
    last_write: float = field(default_factory=time.monotonic)
    first_open_write: float | None = None
    sealed_idle: bool = True


class Collector:
    """Processes batches of results; :meth:`run_forever` is the consumer loop."""

    def __init__(self, client: redis.Redis, name: str, send_task: SendTask, *, batch: int = 500,
                 block_ms: int = 1000, claim_idle_ms: int | None = None, out_root: Path | None = None) -> None:
        self.redis = client
        self.store = RunStore(client)
        self.name = name
        self.send_task = send_task
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms if claim_idle_ms is not None else \
            int(get_settings().collector_claim_idle_seconds * 1000)
        self.out_root = out_root or get_settings().out_dir
        self.seal_idle_seconds = get_settings().seal_idle_seconds
        self.runs: dict[str, RunHandle] = {}
        self.dedup = Deduplicator(client)
        self._last_claim = 0.0
        self._last_top_up = time.monotonic()

    # --- runs -------------------------------------------------------------------------------
    def run_dir(self, info: RunInfo) -> Path:
        return Path(info.out_dir or self.out_root) / info.run

    def handle(self, run: str) -> RunHandle | None:
        if run in self.runs:
            return self.runs[run]
        info = self.store.get(run)
        if info is None:
            return None
        shards = ShardSet(self.store, run, self.run_dir(info), self.name,
                          shard_size=info.config.shard_size, compression=info.config.compression)
        recovered = shards.recover()
        if recovered:  # our open file survived a crash: those ids are written already
            self.store.mark_committed(run, {r["id"]: _status_of(r["status"], r.get("reason")) for r in recovered},
                                      only_new=True)
        # a recovered open file is sealed when idle like any other (forget_runs re-opens runs mid-way)
        self.runs[run] = handle = RunHandle(info, shards, sealed_idle=not recovered)
        return handle

    # --- one batch ------------------------------------------------------------------------------
    def process(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
        records: list[ConversationRecord] = []
        for _, fields in entries:
            try:
                records.append(ConversationRecord.model_validate_json(fields[b"record"]))
            except (KeyError, ValueError) as exc:
                log.error("convfarm collector: dropping malformed entry (%s)", exc)
        by_run: dict[str, list[ConversationRecord]] = {}
        for record in records:
            by_run.setdefault(record.run, []).append(record)
        for run, run_records in by_run.items():
            handle = self.handle(run)
            if handle is None:
                log.error("convfarm collector: %d result(s) for unknown run %s dropped", len(run_records), run)
                continue
            self._commit(handle, run_records)
        if entries:
            ids = [entry_id for entry_id, _ in entries]
            pipe = self.redis.pipeline()
            pipe.xack(RESULTS_STREAM, COLLECTOR_GROUP, *ids)
            pipe.xdel(RESULTS_STREAM, *ids)
            pipe.execute()
        return len(entries)

    def _commit(self, handle: RunHandle, records: list[ConversationRecord]) -> None:
        run = handle.info.run
        committed = self.store.committed_statuses(run, [r.id for r in records])
        fresh: list[ConversationRecord] = []
        statuses: dict[str, str] = {}
        seen_in_batch: set[str] = set()
        for record, previous in zip(records, committed, strict=True):
            if previous is not None:
                statuses[record.id] = previous  # a redelivery: written before
            elif record.id not in seen_in_batch:
                seen_in_batch.add(record.id)
                fresh.append(record)
        self._judge(handle.info, fresh)
        lines: dict[str, list[str]] = {"conversations": [], "rejected": []}
        for record in fresh:
            statuses[record.id] = _status_of(record.status, record.reason)
            lines["conversations" if record.status == "accepted" else "rejected"].append(record.to_json())
        for kind, kind_lines in lines.items():
            handle.shards.append(kind, kind_lines)  # fsync'd before anything is acknowledged
        if fresh:
            handle.last_write = time.monotonic()
            handle.first_open_write = handle.first_open_write or handle.last_write
            handle.sealed_idle = False
            first_model = next((r.model for r in fresh if r.model.sha256), None)
            tokens = sum(r.tokens.completion for r in fresh)
            counters = {  # depth and cost per accepted conversation (convfarm/depth.py), rejected attempts included
                "completion_tokens": tokens,
                "generation_ms": round(sum(r.generation_seconds for r in fresh) * 1000),
                "accepted_turns": sum(len(r.turns) for r in fresh if statuses[r.id] == "accepted"),
            }
            self.store.mark_committed(run, {r.id: statuses[r.id] for r in fresh}, counters=counters,
                                      model_identity=first_model.model_dump_json() if first_model else None)
            self.store.add_rate(run, results=len(fresh), accepted=sum(r.status == "accepted" for r in fresh), tokens=tokens)
        sealed = handle.shards.seal_full()
        if sealed:
            handle.first_open_write = None
        verdicts = [statuses[record.id].partition(":") for record in records]
        outcomes = self.store.record_outcomes(handle.info, [
            (r.word, r.attempt, status, reason or None) for r, (status, _, reason) in zip(records, verdicts, strict=True)])
        done = 0
        for record, (status, _, _), outcome in zip(records, verdicts, outcomes, strict=True):
            done = max(done, outcome.words_done)
            if outcome.retry_attempt is not None:
                self.send_task(handle.info, record.word, outcome.retry_attempt)
            if status == "accepted" and handle.info.config.skip_covered:
                if mentioned := mentioned_words(handle.info.config, record):
                    done = max(done, self.store.cover(handle.info, record.id, mentioned))
        if done >= handle.info.total_words:
            self.end_of_round(handle)
        elif sealed:
            self._write_manifest(handle)

    def _judge(self, info: RunInfo, records: list[ConversationRecord]) -> None:
        """The collector's re-check, then exact and near-duplicate dedup.

        A record judged by a worker with the same rules version and config as ours (equal
        :func:`rules_stamp`) would get the same verdict again: only the others are re-checked
        (a worker of an older or newer release, or a record without a stamp).
        """
        stamp = rules_stamp(info.config)
        kept: list[ConversationRecord] = []
        for record in records:
            if record.status != "accepted":
                continue
            if record.rules_version != stamp and (reason := evaluate(rule_context(info.config, record.word), record.turns)):
                record.status, record.reason = "rejected", reason
                continue
            kept.append(record)
        for record, verdict in zip(kept, self.dedup.judge(info.run, info.config, kept), strict=True):
            if verdict.reason is not None:
                record.status, record.reason, record.duplicate_of = "rejected", verdict.reason, verdict.duplicate_of

    # --- run end, forever rounds, idle sealing, manifest -----------------------------------------
    def end_of_round(self, handle: RunHandle) -> None:
        """Every word is done: finish the run, or in forever mode raise the target and top it up."""
        info = self.store.get(handle.info.run)
        if info is None:
            return
        handle.info = info
        if not info.forever or info.status != "active":
            self.finish_run(handle)
            return
        if self.store.advance_round(info, info.target):
            handle.info = self.store.get(info.run) or info
            sent = self.top_up(handle)
            log.info("convfarm collector: run %s round %d, target %d per word: %d task(s) sent",
                     info.run, handle.info.round, handle.info.target, sent)
            # the seed's output appeared once per pass; ours at least as often
            handle.shards.seal_all()
            handle.first_open_write = None
            self._write_manifest(handle)

    def top_up(self, handle: RunHandle) -> int:
        """Send every attempt the run is missing now (atomic per word: never twice)."""
        tasks = self.store.issue_shortfall(handle.info)
        for word, attempt in tasks:
            self.send_task(handle.info, word, attempt)
        return len(tasks)

    def check_forever_runs(self) -> None:
        """A collector that died between raising a round's target and sending its tasks leaves
        a forever run with nothing queued; any collector notices here and completes the job."""
        for handle in list(self.runs.values()):
            info = self.store.get(handle.info.run)
            if info is None or not info.forever or info.status != "active":
                continue
            handle.info = info
            if self.store.words_done(info.run) >= info.total_words:
                self.end_of_round(handle)
            elif sent := self.top_up(handle):
                log.warning("convfarm collector: forever run %s had %d missing task(s); sent", info.run, sent)

    def finish_run(self, handle: RunHandle) -> None:
        handle.shards.seal_all()
        handle.sealed_idle = True
        if self.store.status(handle.info.run) in (None, "active"):
            self.store.set_status(handle.info.run, "complete")
        self._write_manifest(handle)
        log.info("convfarm collector: run %s complete", handle.info.run)
        self.forget(handle)

    def forget(self, handle: RunHandle) -> None:
        """A finished run's state: out of this process's memory at once (a late result re-creates
        its handle), and out of Redis after the retention (resuming it keeps it, see RunStore.keep_run)."""
        run = handle.info.run
        self.runs.pop(run, None)
        retention = get_settings().run_retention_days
        if retention > 0 and self.store.status(run) == "complete":
            self.store.expire_run(run, int(retention * 86400))
            self.store.forget_expired_runs()

    def idle(self) -> None:
        now = time.monotonic()
        for handle in self.runs.values():
            if handle.sealed_idle:
                continue
            status = self.store.status(handle.info.run)
            too_old = handle.first_open_write is not None and \
                now - handle.first_open_write >= self.seal_idle_seconds * MAX_OPEN_AGE_FACTOR
            if status != "active" or now - handle.last_write >= self.seal_idle_seconds or too_old:
                handle.shards.seal_all()
                handle.sealed_idle = True
                handle.first_open_write = None
                self._write_manifest(handle)
        if now - self._last_top_up >= TOP_UP_INTERVAL:
            self._last_top_up = now
            self.check_forever_runs()

    def _write_manifest(self, handle: RunHandle) -> None:
        write_manifest(handle.shards.directory, build_manifest(self.store, handle.info))

    # --- the consumer loop ----------------------------------------------------------------------
    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(RESULTS_STREAM, COLLECTOR_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, start: str, block: int | None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply = self.redis.xreadgroup(COLLECTOR_GROUP, self.name, {RESULTS_STREAM: start},
                                      count=self.batch, block=block)
        return [(eid, f) for _, entries in (reply or []) for eid, f in entries if f]

    def claim_abandoned(self) -> int:
        """Take over results a dead collector read but never acknowledged."""
        _, entries, *_ = self.redis.xautoclaim(RESULTS_STREAM, COLLECTOR_GROUP, self.name,
                                               min_idle_time=self.claim_idle_ms, count=self.batch)
        return self.process([(eid, f) for eid, f in entries if f])

    def run_forever(self, stop: threading.Event) -> None:
        self.ensure_group()
        while not stop.is_set() and self.process(self.read("0", None)):
            pass  # our own pending entries from before a restart come first
        while not stop.is_set():
            try:
                if time.monotonic() - self._last_claim > self.claim_idle_ms / 1000:
                    self._last_claim = time.monotonic()
                    self.claim_abandoned()
                self.process(self.read(">", self.block_ms))
                self.idle()
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self.forget_runs()  # Redis came back empty: it may have lost what we committed too
                self.ensure_group()  # Redis came back without our group
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("convfarm collector: Redis unavailable (%s); retrying", exc)
                self.forget_runs()
                stop.wait(1.0)

    def forget_runs(self) -> None:
        """After a Redis error mid-batch the shard is the truth: records may be on disk (appended,
        fsync'd) without their ids in ``committed`` (the write failed, or a restarted Redis lost its
        last second). Re-opening a run re-reads our open file and marks its ids committed before
        any redelivered entry is judged, so none is appended twice (exactly-once output)."""
        self.runs.clear()


def _status_of(status: str, reason: str | None) -> str:
    """How a committed record is remembered: ``accepted`` or ``rejected:<reason>``."""
    return "accepted" if status == "accepted" else f"rejected:{reason or 'unknown'}"


class CollectorService:
    """The collector loop on a thread of a Celery worker (``--collector``)."""

    restart_delay = 5.0  # seconds after an unexpected error (a full disk, a corrupt shard) before retrying

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="convfarm-collector", daemon=True)

    @classmethod
    def from_worker(cls, worker: Any) -> CollectorService:
        from convfarm.broker import redis_client

        app = worker.app

        def send(info: RunInfo, word: str, attempt: int) -> None:
            app.send_task(GENERATE_TASK, args=[info.run, word, attempt],
                          task_id=task_id(info.run, word, attempt), queue=info.queue)

        return cls(Collector(redis_client(), worker.hostname, send))

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.collector.run_forever(self.stop_event)
            except Exception:
                log.exception("convfarm collector: error; restarting the loop in %g s", self.restart_delay)
                self.collector.forget_runs()  # re-open runs: recovery rereads the open files
                self.stop_event.wait(self.restart_delay)

    def start(self) -> None:
        log.info("convfarm collector %s started on stream %s", self.collector.name, RESULTS_STREAM)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)

