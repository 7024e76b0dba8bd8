"""What a collector looks after between batches: leases, forever rounds and adoption of dead
collectors' files, each on its own timer; idle sealing, checked between every two batches; and a
finished run's retention, when it finishes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from convfarm.commit import Batch, Checkpoints
from convfarm.messages import RESULTS_STREAM
from convfarm.rundir.layout import OPEN
from convfarm.rundir.manifest import build_manifest, write_manifest
from convfarm.rundir.shards import ShardSet
from convfarm.runstate import LeaseVerdict, RunInfo, RunStore, dead_letter
from convfarm.settings import get_settings
from workers.collector.committer import ENVIRONMENT_ERRORS, SendTask, describe
from workers.collector.runs import OpenRuns, RunHandle
from workers.failures import failure_record

log = logging.getLogger("workers.collector")

# a forever run never goes idle, so its open shards are also sealed at this age: output
# keeps appearing while the run goes on (a multiple of the idle seal time)
MAX_OPEN_AGE_FACTOR = 10
TOP_UP_INTERVAL = 15.0  # seconds between checks that a forever run still has work queued
ADOPT_INTERVAL = 15.0  # seconds between looks for open files of collectors gone for good


@dataclass
class Timer:
    """Due every ``interval`` seconds (``first``: due at once, else one interval from now)."""

    interval: float
    first: bool = False
    last: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.last = 0.0 if self.first else time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.interval:
            return False
        self.last = now
        return True


class Supervisor:
    def __init__(self, client: redis.Redis, store: RunStore, runs: OpenRuns, name: str, send_task: SendTask,
                 checkpoints: Checkpoints, dead_collectors: Callable[[], set[str]]) -> None:
        self.redis = client
        self.store = store
        self.runs = runs
        self.name = name
        self.send_task = send_task
        self.checkpoints = checkpoints
        self.dead_collectors = dead_collectors
        self.seal_idle_seconds = get_settings().seal_idle_seconds
        # a lease is noticed within a tenth of its length of expiring (at most every 10 s)
        self.lease_timer = Timer(min(10.0, get_settings().lease / 10), first=True)
        self.forever_timer = Timer(TOP_UP_INTERVAL)
        self.adopt_timer = Timer(ADOPT_INTERVAL)

    def idle(self) -> None:
        """Between batches: the heartbeat, then whatever timer is due."""
        self.store.collectors.alive(self.name)
        if self.lease_timer.due():
            self.check_leases()
        self.seal_idle_runs()
        if self.forever_timer.due():
            self.check_forever_runs()
        if self.adopt_timer.due():
            # open files of collectors gone for good whose results were all acknowledged
            # (nothing left to claim): seal them so the run's output is whole
            if dead := self.dead_collectors():
                for handle in self.runs:
                    self.adopt_orphans(handle, dead)

    # --- after each batch ------------------------------------------------------------------------
    def batch_done(self, handle: RunHandle, batch: Batch) -> None:
        if batch.words_done >= handle.info.total_words:
            self.end_of_round(handle)
        elif batch.sealed:
            self.write_manifest(handle)

    # --- leases (docs/design.md, "Delivery guarantees") -------------------------------------------
    def check_leases(self) -> int:
        """Issue again every attempt whose lease expired with no outcome; dead-letter one whose
        delivery budget is spent. Safe with several collectors: each expiry is decided by one
        atomic script that moves the deadline before anyone acts on it."""
        settings = get_settings()
        infos: dict[str, RunInfo | None] = {}
        queued: dict[str, bool] = {}
        acted = 0
        for run, word, attempt in self.store.leases.expired():
            if run not in infos:
                try:
                    infos[run] = self.store.get(run)
                except ENVIRONMENT_ERRORS:
                    raise
                except Exception as exc:  # noqa: BLE001 (isolation)  # its config no longer loads: nothing can be sent for it
                    self.runs.fail(run, f"the stored config no longer loads: {describe(exc)}")
                    infos[run] = None
            info = infos[run]
            if info is None:
                self.store.leases.drop(run, word, attempt)
                continue
            if info.queue not in queued:
                queued[info.queue] = self.store.queue_length(info.queue) > 0
            verdict = self.store.leases.expire(run, word, attempt, max_deliveries=settings.max_deliveries,
                                               queued=queued[info.queue])
            if verdict is LeaseVerdict.REISSUE:
                log.warning("convfarm collector: lease of %s/%s#%d expired with no outcome; issued again",
                            run, word, attempt)
                self.send_task(info, word, attempt)
            elif verdict is LeaseVerdict.DEAD_LETTER:
                error = f"lease expired with no outcome after {settings.max_deliveries} deliveries"
                log.error("convfarm collector: %s/%s#%d: %s; dead-lettered", run, word, attempt, error)
                self.store.dead_letters.add(run, dead_letter(word, attempt, error, self.name))
                record = failure_record(info, word, attempt, self.name, error)
                self.redis.xadd(RESULTS_STREAM, {"record": record.to_json()})
            acted += verdict is not LeaseVerdict.NOTHING
        return acted

    # --- idle sealing ------------------------------------------------------------------------------
    def seal_idle_runs(self) -> None:
        now = time.monotonic()
        for handle in self.runs:
            if handle.sealed_idle:
                continue
            status = self.store.status(handle.info.run)
            too_old = handle.first_open_write is not None and \
                now - handle.first_open_write >= self.seal_idle_seconds * MAX_OPEN_AGE_FACTOR
            if status != "active" or now - handle.last_write >= self.seal_idle_seconds or too_old:
                self.seal_all(handle)
                handle.sealed_idle = True
                self.write_manifest(handle)

    def seal_all(self, handle: RunHandle) -> None:
        if handle.shards.seal_all():
            self.checkpoints.hit("after_rename")
        handle.first_open_write = None

    # --- run end and forever rounds ------------------------------------------------------------
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
            # no seal here: a forever run's shards roll by size (shard_size) and by age (the open
            # file's first record older than MAX_OPEN_AGE_FACTOR x the idle seal time), never by
            # round: a small word list makes a round every few seconds (docs/design.md, "Run directory")

    def top_up(self, handle: RunHandle) -> int:
        """Send every attempt the run is missing now (atomic per word: never twice)."""
        tasks = self.store.issue_shortfall(handle.info)
        for word, attempt in tasks:
            self.send_task(handle.info, word, attempt)
        return len(tasks)

    def check_forever_runs(self) -> None:
        """A collector that died between raising a round's target and sending its tasks leaves
        a forever run with nothing queued; any collector notices here and completes the job."""
        for handle in self.runs:
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
            self.checkpoints.hit("after_rename")
        handle.sealed_idle = True
        if self.store.status(handle.info.run) in (None, "active"):
            # the manifest says complete before the status does: whoever waits on the status
            # (`enqueue --wait`) then finds the final manifest
            manifest = build_manifest(self.store, handle.info)
            write_manifest(handle.shards.directory, {**manifest, "status": "complete"})
            self.store.set_status(handle.info.run, "complete")
        self.write_manifest(handle)
        log.info("convfarm collector: run %s complete", handle.info.run)
        self.retire(handle)

    # --- retention ---------------------------------------------------------------------------------
    def retire(self, handle: RunHandle) -> None:
        """A finished run's state: out of this process's memory at once (a late result re-creates
        its handle), and out of Redis after the retention (resuming it keeps it, see RunStore.keep_run)."""
        run = handle.info.run
        self.runs.drop(run)
        retention = get_settings().run_retention_days
        if retention > 0 and self.store.status(run) == "complete":
            self.store.expire_run(run, int(retention * 86400))
            self.store.forget_expired_runs()

    # --- adoption of a dead collector's open files --------------------------------------------------
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
                self.runs.mark_written(handle.info.run, records, match["owner"])
            if handle.shards.seal_file(path, kind) is None:
                continue  # another collector sealed it meanwhile
            adopted += 1
            log.warning("convfarm collector: sealed %s of collector %s in run %s", path.name, match["owner"],
                        handle.info.run)
        if adopted:
            self.write_manifest(handle)
        return adopted

    def write_manifest(self, handle: RunHandle) -> None:
        write_manifest(handle.shards.directory, build_manifest(self.store, handle.info))
