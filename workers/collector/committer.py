"""The exactly-once commit of a batch, run by run, with the isolation of bad runs and records.

The commit itself is the ordered stage list of :func:`convfarm.commit.commit_stages` (shared
with ``producer filter``), with the collector's dedup stage and its books in Redis. Around it:
a run that cannot be opened fails (its records dead-lettered); a batch that raises is retried
record by record; a record that still raises is parked. Redis and broker errors propagate: the
batch stays pending and is processed again when the environment is back (docs/design.md,
"Delivery guarantees").
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import redis
from kombu.exceptions import OperationalError

from convfarm.commit import Batch, Checkpoints, Item, RedisLedger, Stage, commit_stages, run_stages
from convfarm.runstate import Fenced, RunStore, dead_letter
from convfarm.runstate.scripts import ScriptError
from convfarm.runstate.store import RunInfo
from workers.collector.door import Refused, refuse
from workers.collector.runs import OpenRuns, RunHandle
from workers.dedup import Deduplicator

log = logging.getLogger("workers.collector")

COLLECTOR_ERROR = "collector_error"  # the reason of a record parked because the collector could not process it
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(Exception):
    """The output disk is full: the run is paused, its results stay pending until there is room."""

    def __init__(self, run: str, exc: OSError) -> None:
        super().__init__(f"disk full writing run {run}: {exc.strerror or exc}")
        self.run = run


# Errors of the environment (Redis, the broker, our results taken over, a full disk), not of a
# run or a record: the batch stays pending and is processed again when the environment is back.
ENVIRONMENT_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OperationalError, Fenced, DiskFull)
SendTask = Callable[[RunInfo, str, int], None]
BatchDone = Callable[[RunHandle, Batch], None]


@dataclass(eq=False)
class Dedup(Stage):
    """Exact and near-duplicate detection of the fresh accepted records across the run (workers/dedup.py)."""

    name = "dedup"
    dedup: Deduplicator

    def run(self, batch: Batch) -> None:
        kept = [item for item in batch.fresh if item.record.status == "accepted"]
        verdicts = self.dedup.judge(batch.run, batch.info.config, [item.record for item in kept])
        for item, verdict in zip(kept, verdicts, strict=True):
            if verdict.reason is not None:
                batch.reject(item, verdict.reason, duplicate_of=verdict.duplicate_of)
                self.stats[verdict.reason] += 1


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


class Committer:
    def __init__(self, store: RunStore, runs: OpenRuns, name: str, send_task: SendTask, dedup: Deduplicator,
                 checkpoints: Checkpoints, batch_done: BatchDone) -> None:
        self.store = store
        self.runs = runs
        self.name = name
        self.batch_done = batch_done
        self.paused: set[str] = set()  # runs this collector paused for a full disk
        self.stages = commit_stages(RedisLedger(store, name), checkpoints, dedup=Dedup(dedup), send_task=send_task)

    @contextlib.contextmanager
    def disk_full_pauses(self, run: str) -> Iterator[None]:
        """ENOSPC (or a quota) while writing: the run is paused, not failed; nothing is acknowledged,
        the results are processed again when there is room (docs/design.md, "Delivery guarantees")."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            full = DiskFull(run, exc)
            self.store.set_paused(run, f"{full} (collector {self.name}); results kept, retrying")
            self.paused.add(run)
            raise full from exc

    def commit(self, handle: RunHandle, items: list[Item]) -> None:
        with self.disk_full_pauses(handle.info.run):
            batch = run_stages(self.stages, Batch(handle.info, handle.stamp, handle.shards, items))
            if handle.info.run in self.paused:  # room again: the run goes on
                self.paused.discard(handle.info.run)
                self.store.set_paused(handle.info.run, None)
        if elsewhere := sum(item.elsewhere for item in batch.items):
            log.info("convfarm collector: %d record(s) of run %s are being written by another collector", elsewhere,
                     handle.info.run)
        if batch.fresh:
            handle.wrote()
        if batch.sealed:
            handle.first_open_write = None
        with self.disk_full_pauses(handle.info.run):  # sealing and the manifest write too
            self.batch_done(handle, batch)

    def commit_run(self, run: str, items: list[Item]) -> None:
        """Commit one run's records, isolating what cannot be processed (see the module's doc)."""
        if self.store.status(run) == "failed":
            error = self.store.meta(run, "error")["error"] or "run failed"
            self.dead_letter(run, items, f"run failed: {error}")
            return
        try:
            with self.disk_full_pauses(run):
                handle = self.runs.handle(run)
        except ENVIRONMENT_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 (an out dir this host cannot create, a config that no longer loads)
            self.fail_run(run, items, f"cannot open the run on collector {self.name}: {describe(exc)}")
            return
        if handle is None:
            for item in items:
                self.refuse(refuse(item, "no such run (not in the runs index)"))
            return
        words = handle.words
        for item in [i for i in items if i.record.word not in words]:
            self.refuse(refuse(item, "word is not in the run's stored config"))
        items = [i for i in items if i.record.word in words]
        if not items:
            return
        try:
            self.commit(handle, items)
            return
        except ENVIRONMENT_ERRORS:
            raise
        except Exception:
            log.exception("convfarm collector: a batch of run %s failed; retrying its records one by one", run)
        # the failed batch may be on disk in part (appended, then its fsync or its commit mark
        # failed): re-open the run, whose recovery marks what the open file holds as committed,
        # so no record is appended twice when it is retried
        self.runs.drop(run)
        try:
            with self.disk_full_pauses(run):
                reopened = self.runs.handle(run)
        except ENVIRONMENT_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 (the run's directory went bad under us)
            self.fail_run(run, items, f"cannot re-open the run on collector {self.name}: {describe(exc)}")
            return
        if reopened is None:
            return
        for item in items:
            try:
                self.commit(reopened, [item])
            except ENVIRONMENT_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 (isolation: any error of one run or record)
                self.park(reopened, item, exc)

    def park(self, handle: RunHandle, item: Item, exc: Exception) -> None:
        """Dead-letter a record the collector cannot process and count it as rejected
        ``collector_error`` (written to a rejected shard, with the error as its detail)."""
        record = item.record
        error = f"collector: {describe(exc)}"
        log.error("convfarm collector: record %s of run %s parked: %s", record.id, record.run, error)
        self.dead_letter(record.run, [item], error)
        parked = record.model_copy(update={"status": "rejected", "reason": COLLECTOR_ERROR, "detail": error})
        try:
            self.commit(handle, [Item.arrived(parked)])
        except ENVIRONMENT_ERRORS:
            raise
        except ScriptError as again:  # the record's own values break the run's scripts: the dead letter is all
            log.error("convfarm collector: record %s of run %s kept as a dead letter only: %s", record.id,
                      record.run, describe(again))
        except Exception as again:  # noqa: BLE001 (isolation)  # even a rejected record cannot be written: the run's directory is unusable
            self.fail_run(record.run, [], f"cannot write the run's shards on collector {self.name}: {describe(again)}")

    def refuse(self, letter: Refused) -> None:
        """Park an entry refused at the door (workers/collector/door.py): a dead letter, nothing else."""
        log.error("convfarm collector: result refused (run %s, record %s): %s", letter.run, letter.record, letter.reason)
        error = f"refused by collector {self.name}: {letter.reason}"
        dead = dead_letter(letter.word, letter.attempt, error, self.name, record=letter.record)
        if letter.run is not None and self.store.is_listed(letter.run):
            self.store.dead_letters.add(letter.run, dead, of_a_word=False)
        else:
            self.store.dead_letters.add_unroutable({**dead, "run": letter.run})

    def fail_run(self, run: str, items: list[Item], reason: str) -> None:
        self.runs.fail(run, reason)
        self.dead_letter(run, items, reason)

    def dead_letter(self, run: str, items: list[Item], error: str) -> None:
        for item in items:
            record = item.record
            self.store.dead_letters.add(run, dead_letter(record.word, record.attempt, error, self.name, record=record.id))
