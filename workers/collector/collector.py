"""The collector: results stream -> commit stages -> shards + manifest (docs/design.md, "Layers").

Its rooms: the :class:`Consumer` reads and acknowledges the stream, the :class:`Committer`
runs the commit's stages for each run of a batch, the :class:`Supervisor` looks after leases,
forever rounds, idle sealing, adoption and retention between batches. This class wires them
together and is what the service, the tests and the benchmarks hold.

Exactly-once output on at-least-once delivery: a record id is written at most once per run
(``committed`` hash in Redis, rebuilt from our open shard file after a crash), also with several
collectors (each id claimed before it is written, confirmed under this collector's fencing
token; taking over a collector's results fences it), and the per-word bookkeeping
(``RunStore.record_outcomes``) is idempotent (docs/design.md, "Delivery guarantees").
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import redis

from convfarm.commit import Checkpoints, Item
from convfarm.runstate import RunStore
from convfarm.settings import get_settings
from workers.collector.committer import ENVIRONMENT_ERRORS, Committer, SendTask
from workers.collector.consumer import Consumer, Entry, parse_entries
from workers.collector.runs import OpenRuns, RunHandle
from workers.collector.supervisor import Supervisor
from workers.dedup import Deduplicator

log = logging.getLogger("workers.collector")

class Collector:
    """Processes batches of results; :meth:`run_forever` is the consumer loop."""

    def __init__(self, client: redis.Redis, name: str, send_task: SendTask, *, batch: int = 500,
                 block_ms: int = 1000, claim_idle_ms: int | None = None, out_root: Path | None = None,
                 broker: redis.Redis | None = None) -> None:
        """``client``: the run state's Redis; ``broker``: the Celery broker's, when it is another one."""
        settings = get_settings()
        self.redis = client
        self.store = RunStore(client, broker)
        self.name = name
        self.checkpoints = Checkpoints()
        self.runs = OpenRuns(self.store, name, out_root or settings.out_dir, self.checkpoints.hit)
        self.dedup = Deduplicator(client)
        self.consumer = Consumer(client, name, batch=batch, block_ms=block_ms, claim_idle_ms=claim_idle_ms
                                 if claim_idle_ms is not None else int(settings.claim_idle_seconds * 1000),
                                 linger_ms=settings.collector_linger_ms)
        self.supervisor = Supervisor(client, self.store, self.runs, name, send_task, self.checkpoints,
                                     self.consumer.dead_collectors)
        self.committer = Committer(self.store, self.runs, name, send_task, self.dedup, self.checkpoints,
                                   self.supervisor.batch_done)

    # --- one batch ---------------------------------------------------------------------------------
    def process(self, entries: list[Entry]) -> int:
        by_run: dict[str, list[Item]] = {}
        items, refused = parse_entries(entries)
        for item in items:
            by_run.setdefault(item.record.run, []).append(item)
        for letter in refused:
            self.committer.refuse(letter)
        for run, items in by_run.items():
            self.committer.commit_run(run, items)
        if entries:
            self.checkpoints.hit("before_ack")
            self.consumer.ack(entries)
        return len(entries)

    def claim_abandoned(self) -> int:
        """Take over results a dead collector read but never acknowledged. Its open files in
        those runs are adopted first: records it wrote but had not yet marked committed are
        marked then, so the claimed copies are not written a second time."""
        done = 0
        for consumer in sorted(self.consumer.dead_collectors()):
            # its claims on record ids go void before we take its results: a collector that only
            # stalled must not write them too (docs/design.md, "Delivery guarantees")
            entries = self.consumer.claim(consumer, before=self.store.fences.fence)
            if not entries:
                continue
            for run in {item.record.run for item in parse_entries(entries)[0]}:
                try:
                    handle = self.runs.handle(run)
                except ENVIRONMENT_ERRORS:
                    raise
                except Exception:  # noqa: BLE001 (process() below fails the run with the reason)
                    continue
                if handle is not None:
                    self.supervisor.adopt_orphans(handle, {consumer})
            log.warning("convfarm collector: took over %d result(s) of collector %s", len(entries), consumer)
            done += self.process(entries)
        return done

    def idle(self) -> None:
        self.supervisor.idle()

    def forget_runs(self) -> None:
        self.runs.forget_all()

    def heartbeat(self) -> None:
        self.store.collectors.alive(self.name)

    def run_forever(self, stop: threading.Event) -> None:
        self.consumer.run_forever(stop, self)

    # --- what tests and benchmarks drive directly ---------------------------------------------------
    def ensure_group(self) -> None:
        self.consumer.ensure_group()

    def read(self, start: str, block: int | None) -> list[Entry]:
        return self.consumer.read(start, block)

    def handle(self, run: str) -> RunHandle | None:
        return self.runs.handle(run)

    def end_of_round(self, handle: RunHandle) -> None:
        self.supervisor.end_of_round(handle)

    def finish_run(self, handle: RunHandle) -> None:
        self.supervisor.finish_run(handle)

    def check_leases(self) -> int:
        return self.supervisor.check_leases()

