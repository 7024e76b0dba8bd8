"""What the farm's processes report about themselves, across runs.

Keys: ``convfarm:worker:<name>`` (a generation worker's figures; cleanup: expires a week after
its last task) and ``convfarm:collectors`` (collector name -> when its loop last turned; read for
``producer run``/``--wait``'s stall check; one entry per collector name ever seen).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import redis

from convfarm.runstate.keys import COLLECTORS, WORKER_PREFIX

WORKER_TTL = 7 * 86400


class WorkerFigures:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def report(self, worker: str, *, model: str, model_file: str, completion_tokens: int, seconds: float) -> None:
        key = WORKER_PREFIX + worker
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping={"model": model, "model_file": model_file, "last_seen": time.time()})
        pipe.hincrby(key, "tasks", 1)
        pipe.hincrby(key, "completion_tokens", completion_tokens)
        pipe.hincrbyfloat(key, "generation_seconds", seconds)
        pipe.expire(key, WORKER_TTL)
        pipe.execute()

    def all(self) -> dict[str, dict[str, str]]:
        """Per worker name: the fields :meth:`report` keeps."""
        return {key.decode().removeprefix(WORKER_PREFIX): {k.decode(): v.decode() for k, v in self.redis.hgetall(key).items()}
                for key in sorted(self.redis.scan_iter(match=WORKER_PREFIX + "*", count=500))}


@dataclass
class _Pending:
    model: str = ""
    model_file: str = ""
    tasks: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


class WorkerTally:
    """A worker process's figures, summed in memory and written every ``every`` seconds.

    Why not per task: writing a worker's figures took 7 Redis commands per attempt (a MULTI of
    HSET, 2 HINCRBY, HINCRBYFLOAT, EXPIRE), more than the attempt's own delivery bookkeeping.
    :meth:`write` puts the summed figures into a pipeline the caller sends anyway (the task's
    XADD of its record: the same round trip), at most once per ``every`` seconds; the first
    write is due at once, so a new worker shows up with its first record. What a SIGKILL loses
    is at most ``every`` seconds of these figures: they are for ``producer status``, not part
    of any delivery guarantee (docs/design.md, "Delivery guarantees").
    """

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self._pending: dict[str, _Pending] = {}
        self._written = 0.0  # monotonic time of the last write
        self._lock = threading.Lock()  # a batched worker's task threads share one tally

    def add(self, worker: str, *, model: str, model_file: str, completion_tokens: int, seconds: float) -> None:
        with self._lock:
            figures = self._pending.setdefault(worker, _Pending())
            figures.model, figures.model_file = model, model_file
            figures.tasks += 1
            figures.completion_tokens += completion_tokens
            figures.seconds += seconds

    def write(self, pipe: redis.client.Pipeline, *, force: bool = False) -> bool:
        """Queue the pending figures on ``pipe`` when due (or ``force``); True when any were queued."""
        with self._lock:
            if not self._pending or (not force and time.monotonic() - self._written < self.every):
                return False
            pending, self._pending = self._pending, {}
            self._written = time.monotonic()
        for worker, figures in pending.items():
            key = WORKER_PREFIX + worker
            pipe.hset(key, mapping={"model": figures.model, "model_file": figures.model_file,
                                    "last_seen": time.time()})
            pipe.hincrby(key, "tasks", figures.tasks)
            pipe.hincrby(key, "completion_tokens", figures.completion_tokens)
            pipe.hincrbyfloat(key, "generation_seconds", figures.seconds)
            pipe.expire(key, WORKER_TTL)
        return True


class CollectorHeartbeats:
    """When each collector last *turned its loop* (one zset, score = time): the stall check of
    ``enqueue --wait``, ``producer run`` and status reads the newest in one call. Not the same
    signal as the presence rows (convfarm/runstate/presence.py), which a collector's heartbeat
    thread writes while the process lives: a collector wedged in a batch is alive there and
    stalled here, and the stall check must see the latter without scanning every process's row."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def alive(self, name: str) -> None:
        self.redis.zadd(COLLECTORS, {name: time.time()})

    def last_seen(self) -> float | None:
        newest = self.redis.zrevrange(COLLECTORS, 0, 0, withscores=True)
        return float(newest[0][1]) if newest else None
