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
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from kombu.exceptions import OperationalError

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
from convfarm.rundir.layout import OPEN
from convfarm.rundir.manifest import build_manifest, claim_directory, write_manifest
from convfarm.rundir.shards import ShardSet
from convfarm.runstate import RunInfo, RunStore
from convfarm.settings import get_settings
from workers.dedup import DUPLICATE, NEAR_DUPLICATE, Deduplicator, content_hash
from workers.failures import failure_record

log = logging.getLogger(__name__)

__all__ = ["DUPLICATE", "NEAR_DUPLICATE", "Collector", "CollectorService", "content_hash"]

SendTask = Callable[[RunInfo, str, int], None]
# a forever run never goes idle, so its open shards are also sealed at this age: output
# keeps appearing while the run goes on (a multiple of the idle seal time)
MAX_OPEN_AGE_FACTOR = 10
TOP_UP_INTERVAL = 15.0  # seconds between checks that a forever run still has work queued
COLLECTOR_ERROR = "collector_error"  # the reason of a record parked because the collector could not process it
# Errors of the environment (Redis, the broker), not of a run or a record: the batch stays
# pending and is processed again when the environment is back.
ENVIRONMENT_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OperationalError)
# Fault injection for the chaos tests (tests/test_chaos.py): CONVFARM_FAULT names a commit
# point where the collector SIGKILLs itself (CONVFARM_FAULT_AFTER: the Nth time it gets there).
FAULT_ENV, FAULT_AFTER_ENV = "CONVFARM_FAULT", "CONVFARM_FAULT_AFTER"
FAULT_POINTS = ("before_write", "after_write", "after_rename", "before_ack")
_fault_hits: dict[str, int] = {}


def fault_point(point: str) -> None:
    if os.environ.get(FAULT_ENV) != point:
        return
    _fault_hits[point] = _fault_hits.get(point, 0) + 1
    if _fault_hits[point] >= int(os.environ.get(FAULT_AFTER_ENV, "1")):
        log.error("convfarm collector: fault injection: SIGKILL at %s", point)
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class RunHandle:
    info: RunInfo
    shards: ShardSet
    stamp: str = ""  # rules_stamp of the run's config: hashing a big config per batch cost ~1 ms
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
            int(get_settings().claim_idle_seconds * 1000)
        self.out_root = out_root or get_settings().out_dir
        self.seal_idle_seconds = get_settings().seal_idle_seconds
        self.runs: dict[str, RunHandle] = {}
        # the batch's records as their workers sent them (by object: a redelivered copy is another
        # record), with the status they arrived with: see _line
        self._wire: dict[int, tuple[bytes, str]] = {}
        self.dedup = Deduplicator(client)
        self._last_claim = 0.0
        self._last_top_up = time.monotonic()
        self._last_lease_check = 0.0
        # a lease is noticed within a tenth of its length of expiring (at most every 10 s)
        self.lease_check_interval = min(10.0, get_settings().lease / 10)

    # --- runs -------------------------------------------------------------------------------
    def run_dir(self, info: RunInfo) -> Path:
        """``OUT/<run>`` on this collector's host: a relative ``--out`` is under CONVFARM_OUT_DIR
        (docs/design.md, "Run directory"), an absolute one is taken as it is."""
        return Path(self.out_root) / (info.out_dir or "") / info.run

    def handle(self, run: str) -> RunHandle | None:
        if run in self.runs:
            return self.runs[run]
        info = self.store.get(run)
        if info is None:
            return None
        claim_directory(self.store, info, self.run_dir(info))  # never another incarnation's directory
        self.store.record_output(run, host=socket.gethostname(), path=str(self.run_dir(info).resolve()))
        shards = ShardSet(self.store, run, self.run_dir(info), self.name,
                          shard_size=info.config.shard_size, compression=info.config.compression)
        recovered = shards.recover()
        if recovered:  # our open file survived a crash: those ids are written already
            self._mark_written(run, recovered)
        # a recovered open file is sealed when idle like any other (forget_runs re-opens runs mid-way)
        self.runs[run] = handle = RunHandle(info, shards, rules_stamp(info.config), sealed_idle=not recovered)
        return handle

    def _mark_written(self, run: str, records: list[dict[str, Any]]) -> None:
        """Records found in an open file are committed (where nobody marked them yet), except those
        under their word's floor: counted long ago in a forever run, their entries trimmed for good."""
        finished = self.store.below_floor(run, [(r["word"], r["attempt"]) for r in records])
        self.store.mark_committed(run, {r["id"]: _status_of(r["status"], r.get("reason"))
                                        for r, below in zip(records, finished, strict=True) if not below},
                                  only_new=True)

    # --- one batch ------------------------------------------------------------------------------
    def process(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
        records: list[ConversationRecord] = []
        self._wire.clear()
        for _, fields in entries:
            try:
                record = ConversationRecord.model_validate_json(fields[b"record"])
            except (KeyError, ValueError) as exc:
                log.error("convfarm collector: dropping malformed entry (%s)", exc)
                continue
            records.append(record)
            self._wire[id(record)] = (fields[b"record"], record.status)
        by_run: dict[str, list[ConversationRecord]] = {}
        for record in records:
            by_run.setdefault(record.run, []).append(record)
        try:
            for run, run_records in by_run.items():
                self._process_run(run, run_records)
        finally:
            self._wire.clear()
        if entries:
            fault_point("before_ack")
            ids = [entry_id for entry_id, _ in entries]
            pipe = self.redis.pipeline()
            pipe.xack(RESULTS_STREAM, COLLECTOR_GROUP, *ids)
            pipe.xdel(RESULTS_STREAM, *ids)
            pipe.execute()
        return len(entries)

    # --- isolation: one run or record that cannot be processed stops nothing else -------------
    def _process_run(self, run: str, records: list[ConversationRecord]) -> None:
        """Commit one run's records. A run that cannot be opened fails (its records are
        dead-lettered); a batch that raises is retried record by record, and a record that
        still raises is parked. Redis and broker errors propagate: the batch stays pending."""
        if self.store.status(run) == "failed":
            error = self.store.meta(run, "error")["error"] or "run failed"
            self._dead_letter(run, records, f"run failed: {error}")
            return
        try:
            handle = self.handle(run)
        except ENVIRONMENT_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 (an out dir this host cannot create, a config that no longer loads)
            self._fail_run(run, records, f"cannot open the run on collector {self.name}: {_describe(exc)}")
            return
        if handle is None:
            log.error("convfarm collector: %d result(s) for unknown run %s dropped", len(records), run)
            return
        try:
            self._commit(handle, records)
            return
        except ENVIRONMENT_ERRORS:
            raise
        except Exception:
            log.exception("convfarm collector: a batch of run %s failed; retrying its records one by one", run)
        # the failed batch may be on disk in part (appended, then its fsync or its commit mark
        # failed): re-open the run, whose recovery marks what the open file holds as committed,
        # so no record is appended twice when it is retried
        self.runs.pop(run, None)
        try:
            reopened = self.handle(run)
        except ENVIRONMENT_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 (the run's directory went bad under us)
            self._fail_run(run, records, f"cannot re-open the run on collector {self.name}: {_describe(exc)}")
            return
        if reopened is None:
            return
        handle = reopened
        for record in records:
            try:
                self._commit(handle, [record])
            except ENVIRONMENT_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 (isolation: any error of one run or record)
                self._park(handle, record, exc)

    def _park(self, handle: RunHandle, record: ConversationRecord, exc: Exception) -> None:
        """Dead-letter a record the collector cannot process and count it as rejected
        ``collector_error`` (written to a rejected shard, with the error as its detail)."""
        error = f"collector: {_describe(exc)}"
        log.error("convfarm collector: record %s of run %s parked: %s", record.id, record.run, error)
        self._dead_letter(record.run, [record], error)
        parked = record.model_copy(update={"status": "rejected", "reason": COLLECTOR_ERROR, "detail": error})
        try:
            self._commit(handle, [parked])
        except ENVIRONMENT_ERRORS:
            raise
        except Exception as again:  # noqa: BLE001 (isolation: any error of one run or record)  # even a rejected record cannot be written: the run's directory is unusable
            self._fail_run(record.run, [], f"cannot write the run's shards on collector {self.name}: {_describe(again)}")

    def _fail_run(self, run: str, records: list[ConversationRecord], reason: str) -> None:
        log.error("convfarm collector: run %s failed: %s", run, reason)
        self.store.fail_run(run, reason)
        self.runs.pop(run, None)
        self._dead_letter(run, records, reason)

    def _dead_letter(self, run: str, records: list[ConversationRecord], error: str) -> None:
        for record in records:
            self.store.add_dead_letter(run, {"word": record.word, "attempt": record.attempt, "error": error,
                                             "worker": self.name, "record": record.id, "at": time.time()})

    def _commit(self, handle: RunHandle, records: list[ConversationRecord]) -> None:
        run = handle.info.run
        # FINISHED: under its word's floor in a forever run (counted long ago, entries trimmed)
        committed = self.store.committed_statuses(run, [r.id for r in records], [(r.word, r.attempt) for r in records])
        fresh: list[ConversationRecord] = []
        statuses: dict[str, str] = {}
        seen_in_batch: set[str] = set()
        for record, previous in zip(records, committed, strict=True):
            if previous is not None:
                statuses[record.id] = previous  # a redelivery: written before
            elif record.id not in seen_in_batch:
                seen_in_batch.add(record.id)
                fresh.append(record)
        self._judge(handle, fresh)
        lines: dict[str, list[str]] = {"conversations": [], "rejected": []}
        for record in fresh:
            statuses[record.id] = _status_of(record.status, record.reason)
            lines["conversations" if record.status == "accepted" else "rejected"].append(self._line(record, handle.stamp))
        fault_point("before_write")
        handle.shards.append_kinds(lines)  # fsync'd before anything is acknowledged
        if fresh:
            fault_point("after_write")
            handle.last_write = time.monotonic()
            handle.first_open_write = handle.first_open_write or handle.last_write
            handle.sealed_idle = False
            first_model = next((r.model for r in fresh if r.model.sha256), None)
            tokens = sum(r.tokens.completion for r in fresh)
            counters = {  # depth and cost per accepted conversation (convfarm/depth.py), rejected attempts included
                "completion_tokens": tokens,
                "generation_ms": round(sum(r.generation_seconds for r in fresh) * 1000),
                # machine time, not latency: what the run cost under batching (docs/design.md)
                "machine_ms": round(sum(r.machine_time() for r in fresh) * 1000),
                "accepted_turns": sum(len(r.turns) for r in fresh if statuses[r.id] == "accepted"),
            }
            self.store.mark_committed(run, {r.id: statuses[r.id] for r in fresh}, counters=counters,
                                      model_identity=first_model.model_dump_json() if first_model else None)
            self.store.add_rate(run, results=len(fresh), accepted=sum(r.status == "accepted" for r in fresh), tokens=tokens)
        sealed = handle.shards.seal_full()
        if sealed:
            fault_point("after_rename")
            handle.first_open_write = None
        verdicts = [statuses[record.id].partition(":") for record in records]
        done = 0
        if handle.info.config.skip_covered:
            # mentions before outcomes: an attempt's outcome is the last thing recorded for it, so
            # a forever run may trim all of an attempt's entries once it is counted (RunStore.record_outcomes)
            for record, (status, _, _) in zip(records, verdicts, strict=True):
                if status == "accepted" and (mentioned := mentioned_words(handle.info.config, record)):
                    done = max(done, self.store.cover(handle.info, record.id, mentioned))
        outcomes = self.store.record_outcomes(handle.info, [
            (r.word, r.attempt, status, reason or None) for r, (status, _, reason) in zip(records, verdicts, strict=True)],
            record_ids=[r.id for r in records])
        for record, outcome in zip(records, outcomes, strict=True):
            done = max(done, outcome.words_done)
            if outcome.retry_attempt is not None:
                self.send_task(handle.info, record.word, outcome.retry_attempt)
        if done >= handle.info.total_words:
            self.end_of_round(handle)
        elif sealed:
            self._write_manifest(handle)

    def _line(self, record: ConversationRecord, stamp: str) -> str:
        """The record's shard line: the JSON its worker sent when the collector changed nothing in
        it and the worker runs our rules (the same release: the same JSON ``to_json`` would write
        again, without serialising it a second time); else the collector's own serialisation."""
        wire, arrived_as = self._wire.get(id(record), (None, None))
        if wire is not None and record.status == arrived_as and record.rules_version == stamp and b"\n" not in wire:
            try:
                return wire.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return record.to_json()

    def _judge(self, handle: RunHandle, records: list[ConversationRecord]) -> None:
        """The collector's re-check, then exact and near-duplicate dedup.

        A record judged by a worker with the same rules version and config as ours (equal
        :func:`rules_stamp`) would get the same verdict again: only the others are re-checked
        (a worker of an older or newer release, or a record without a stamp).
        """
        info, stamp = handle.info, handle.stamp
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
        if dead := self.dead_collectors():  # their open files hold records of this run too
            self.adopt_orphans(handle, dead)
        if handle.shards.seal_all():
            fault_point("after_rename")
        handle.sealed_idle = True
        if self.store.status(handle.info.run) in (None, "active"):
            # the manifest says complete before the status does: whoever waits on the status
            # (`enqueue --wait`) then finds the final manifest
            manifest = build_manifest(self.store, handle.info)
            write_manifest(handle.shards.directory, {**manifest, "status": "complete"})
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

    # --- leases (docs/design.md, "Delivery guarantees") -------------------------------------------
    def check_leases(self) -> int:
        """Issue again every attempt whose lease expired with no outcome; dead-letter one whose
        delivery budget is spent. Safe with several collectors: each expiry is decided by one
        atomic script that moves the deadline before anyone acts on it."""
        settings = get_settings()
        infos: dict[str, RunInfo | None] = {}
        queued: dict[str, bool] = {}
        acted = 0
        for run, word, attempt in self.store.expired_leases():
            if run not in infos:
                try:
                    infos[run] = self.store.get(run)
                except ENVIRONMENT_ERRORS:
                    raise
                except Exception as exc:  # noqa: BLE001 (isolation: any error of one run or record)  # its config no longer loads: nothing can be sent for it
                    self._fail_run(run, [], f"the stored config no longer loads: {_describe(exc)}")
                    infos[run] = None
            info = infos[run]
            if info is None:
                self.store.drop_lease(run, word, attempt)
                continue
            if info.queue not in queued:
                queued[info.queue] = self.store.queue_length(info.queue) > 0
            verdict = self.store.expire_lease(run, word, attempt, max_deliveries=settings.max_deliveries,
                                              queued=queued[info.queue])
            if verdict == 1:
                log.warning("convfarm collector: lease of %s/%s#%d expired with no outcome; issued again",
                            run, word, attempt)
                self.send_task(info, word, attempt)
            elif verdict == 2:
                error = f"lease expired with no outcome after {settings.max_deliveries} deliveries"
                log.error("convfarm collector: %s/%s#%d: %s; dead-lettered", run, word, attempt, error)
                self.store.add_dead_letter(run, {"word": word, "attempt": attempt, "error": error,
                                                 "worker": self.name, "at": time.time()})
                record = failure_record(info, word, attempt, self.name, error)
                self.redis.xadd(RESULTS_STREAM, {"record": record.to_json()})
            acted += verdict > 0
        return acted

    def idle(self) -> None:
        now = time.monotonic()
        self.store.collector_alive(self.name)
        if now - self._last_lease_check >= self.lease_check_interval:
            self._last_lease_check = now
            self.check_leases()
        for handle in list(self.runs.values()):
            if handle.sealed_idle:
                continue
            status = self.store.status(handle.info.run)
            too_old = handle.first_open_write is not None and \
                now - handle.first_open_write >= self.seal_idle_seconds * MAX_OPEN_AGE_FACTOR
            if status != "active" or now - handle.last_write >= self.seal_idle_seconds or too_old:
                if handle.shards.seal_all():
                    fault_point("after_rename")
                handle.sealed_idle = True
                handle.first_open_write = None
                self._write_manifest(handle)
        if now - self._last_top_up >= TOP_UP_INTERVAL:
            self._last_top_up = now
            self.check_forever_runs()
            # open files of collectors gone for good whose results were all acknowledged
            # (nothing left to claim): seal them so the run's output is whole
            if dead := self.dead_collectors():
                for handle in list(self.runs.values()):
                    self.adopt_orphans(handle, dead)

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

    def dead_collectors(self) -> set[str]:
        """Consumers of the results stream (other than us) silent for ``claim_idle_ms``: a live
        collector reads the stream at least every ``block_ms``."""
        try:
            consumers = self.redis.xinfo_consumers(RESULTS_STREAM, COLLECTOR_GROUP)
        except redis.ResponseError as exc:  # no stream or no group yet (a fresh or restarted Redis): nobody died
            if "no such key" in str(exc).lower() or "NOGROUP" in str(exc):
                return set()
            raise
        return {c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                for c in consumers if c["idle"] >= self.claim_idle_ms} - {self.name}

    def claim_abandoned(self) -> int:
        """Take over results a dead collector read but never acknowledged. Its open files in
        those runs are adopted first: records it wrote but had not yet marked committed are
        marked then, so the claimed copies are not written a second time."""
        done = 0
        for consumer in sorted(self.dead_collectors()):
            pending = self.redis.xpending_range(RESULTS_STREAM, COLLECTOR_GROUP, min="-", max="+",
                                                count=self.batch, consumername=consumer)
            ids = [p["message_id"] for p in pending]
            if not ids:
                continue
            entries = [(eid, f) for eid, f in self.redis.xclaim(RESULTS_STREAM, COLLECTOR_GROUP, self.name,
                                                                min_idle_time=self.claim_idle_ms, message_ids=ids) if f]
            runs = set()
            for _, fields in entries:
                try:
                    runs.add(ConversationRecord.model_validate_json(fields[b"record"]).run)
                except (KeyError, ValueError):
                    continue
            for run in runs:
                try:
                    handle = self.handle(run)
                except ENVIRONMENT_ERRORS:
                    raise
                except Exception:  # noqa: BLE001 (process() below fails the run with the reason)
                    continue
                if handle is not None:
                    self.adopt_orphans(handle, {consumer})
            log.warning("convfarm collector: took over %d result(s) of collector %s", len(entries), consumer)
            done += self.process(entries)
        return done

    def adopt_orphans(self, handle: RunHandle, dead: set[str]) -> int:
        """Seal the open files that collectors in ``dead`` left in this run's directory (a
        collector that never comes back under its name). Cut a torn tail, mark the records
        committed (only where nobody did), rename to a sealing name (atomic: of two adopters
        one wins), finish the seal. A crash midway is completed like any interrupted seal."""
        adopted = 0
        directory = handle.shards.directory
        for path in sorted(directory.glob(".open-*.jsonl")):
            match = OPEN.match(path.name)
            if not match or match["owner"] not in dead:
                continue
            kind = match["kind"]
            try:
                records = ShardSet.cut_torn_tail(path)
            except FileNotFoundError:
                continue  # another collector adopted it meanwhile
            if records:
                self._mark_written(handle.info.run, records)
            if handle.shards.seal_file(path, kind) is None:
                continue  # another collector sealed it meanwhile
            adopted += 1
            log.warning("convfarm collector: sealed %s of collector %s in run %s", path.name, match["owner"],
                        handle.info.run)
        if adopted:
            self._write_manifest(handle)
        return adopted

    def run_forever(self, stop: threading.Event) -> None:
        self.ensure_group()
        while not stop.is_set() and self.process(self.read("0", None)):
            pass  # our own pending entries from before a restart come first
        replay = False
        while not stop.is_set():
            try:
                if replay:  # the batch a Redis error interrupted is still pending for us: it comes first
                    while not stop.is_set() and self.process(self.read("0", None)):
                        pass
                    replay = False
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
                replay = True
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("convfarm collector: Redis unavailable (%s); retrying", exc)
                self.forget_runs()
                replay = True  # other collectors see us alive: nobody else takes our pending entries
                stop.wait(1.0)

    def forget_runs(self) -> None:
        """After a Redis error mid-batch the shard is the truth: records may be on disk (appended,
        fsync'd) without their ids in ``committed`` (the write failed, or a restarted Redis lost its
        last second). Re-opening a run re-reads our open file and marks its ids committed before
        any redelivered entry is judged, so none is appended twice (exactly-once output)."""
        self.runs.clear()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


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

