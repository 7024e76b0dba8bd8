"""Reading the results stream: read, claim a dead collector's entries, acknowledge, and replay
what a Redis error interrupted.

Why a Redis stream and not a Celery queue: a collector must make a batch durable (write,
fsync) *before* it acknowledges it. With one Celery message per result that means one fsync
and one ack round trip per conversation; a stream consumer group hands over hundreds of
results per ``XREADGROUP``, and we fsync and ``XACK`` them together. The group also gives
what a second collector needs: every entry goes to one consumer, and the pending entries of
a collector that died are taken over (``XINFO``/``XCLAIM``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis

from convfarm.commit import Item
from convfarm.messages import COLLECTOR_GROUP, RESULTS_STREAM, ConversationRecord
from convfarm.runstate import Fenced
from workers.collector.committer import DiskFull
from workers.collector.door import Refused, record_problem, refuse

log = logging.getLogger("workers.collector")

DISK_FULL_BACKOFF = (1.0, 30.0)  # seconds: the first wait after a full disk, and the longest

Entry = tuple[bytes, dict[bytes, bytes]]


class EntryHandler(Protocol):
    """What the consumer loop drives (the collector)."""

    def process(self, entries: list[Entry]) -> int: ...
    def claim_abandoned(self) -> int: ...
    def idle(self) -> None: ...
    def forget_runs(self) -> None: ...
    def heartbeat(self) -> None: ...


def parse_entries(entries: list[Entry]) -> tuple[list[Item], list[Refused]]:
    """The records of stream entries, as their workers sent them, and the entries refused at the
    door (malformed, or a field no script, key or path may take: workers/collector/door.py)."""
    items: list[Item] = []
    refused: list[Refused] = []
    for entry_id, fields in entries:
        try:
            wire = fields[b"record"]
            item = Item.arrived(ConversationRecord.model_validate_json(wire), wire)
        except (KeyError, ValueError) as exc:
            refused.append(Refused(f"malformed entry {entry_id!r}: {str(exc)[:300]}"))
            continue
        if problem := record_problem(item.record):
            refused.append(refuse(item, problem))
        else:
            items.append(item)
    return items, refused


class Consumer:
    """One consumer of the collectors' group on the results stream."""

    def __init__(self, client: redis.Redis, name: str, *, batch: int, block_ms: int, claim_idle_ms: int,
                 linger_ms: int = 0) -> None:
        self.redis = client
        # After a batch smaller than ``batch``, wait this long before reading again, so results
        # gather into fewer, larger batches: a batch's bookkeeping costs ~20 Redis commands
        # whatever its size, and XREADGROUP answers as soon as one entry is there (docs/scaling.md).
        self.linger = linger_ms / 1000
        self.name = name
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self._last_claim = 0.0

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(RESULTS_STREAM, COLLECTOR_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, start: str, block: int | None) -> list[Entry]:
        reply = self.redis.xreadgroup(COLLECTOR_GROUP, self.name, {RESULTS_STREAM: start},
                                      count=self.batch, block=block)
        return [(eid, f) for _, entries in (reply or []) for eid, f in entries if f]

    def ack(self, entries: list[Entry]) -> None:
        ids = [entry_id for entry_id, _ in entries]
        pipe = self.redis.pipeline()
        pipe.xack(RESULTS_STREAM, COLLECTOR_GROUP, *ids)
        pipe.xdel(RESULTS_STREAM, *ids)
        pipe.execute()

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

    def claim_due(self) -> bool:
        if time.monotonic() - self._last_claim <= self.claim_idle_ms / 1000:
            return False
        self._last_claim = time.monotonic()
        return True

    def claim(self, consumer: str, before: Callable[[str], None] | None = None) -> list[Entry]:
        """Take over the entries ``consumer`` read but never acknowledged (``before(consumer)``
        runs first when it has any: the fence)."""
        pending = self.redis.xpending_range(RESULTS_STREAM, COLLECTOR_GROUP, min="-", max="+",
                                            count=self.batch, consumername=consumer)
        ids = [p["message_id"] for p in pending]
        if not ids:
            return []
        if before is not None:
            before(consumer)
        return [(eid, f) for eid, f in self.redis.xclaim(RESULTS_STREAM, COLLECTOR_GROUP, self.name,
                                                         min_idle_time=self.claim_idle_ms, message_ids=ids) if f]

    def run_forever(self, stop: threading.Event, handler: EntryHandler) -> None:
        process = handler.process
        self.ensure_group()
        while not stop.is_set() and process(self.read("0", None)):
            pass  # our own pending entries from before a restart come first
        replay = False
        backoff = DISK_FULL_BACKOFF[0]
        while not stop.is_set():
            try:
                if replay:  # the batch a Redis error interrupted is still pending for us: it comes first
                    while not stop.is_set() and process(self.read("0", None)):
                        pass
                    replay = False
                if self.claim_due():
                    handler.claim_abandoned()
                read = process(self.read(">", self.block_ms))
                handler.idle()
                backoff = DISK_FULL_BACKOFF[0]
                if 0 < read < self.batch and self.linger:
                    stop.wait(self.linger)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                handler.forget_runs()  # Redis came back empty: it may have lost what we committed too
                self.ensure_group()  # Redis came back without our group
                replay = True
            except DiskFull as exc:  # paused: nothing acknowledged, the batch comes again when there is room
                log.warning("convfarm collector: %s; results stay pending, retrying in %g s", exc, backoff)
                handler.forget_runs()
                replay = True
                handler.heartbeat()  # paused, not stalled: `--wait` and `producer run` keep waiting
                stop.wait(backoff)
                backoff = min(backoff * 2, DISK_FULL_BACKOFF[1])
            except Fenced as exc:  # we stalled and our results were taken over: what is still ours comes again
                log.warning("convfarm collector: %s; re-reading what is still ours", exc)
                handler.forget_runs()
                replay = True
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("convfarm collector: Redis unavailable (%s); retrying", exc)
                handler.forget_runs()
                replay = True  # other collectors see us alive: nobody else takes our pending entries
                stop.wait(1.0)
