"""What the farm's processes report about themselves, across runs.

Keys: ``convfarm:worker:<name>`` (a generation worker's figures; cleanup: expires a week after
its last task) and ``convfarm:collectors`` (collector name -> when its loop last turned; read for
``producer run``/``--wait``'s stall check; one entry per collector name ever seen).
"""

from __future__ import annotations

import time

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


class CollectorHeartbeats:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def alive(self, name: str) -> None:
        self.redis.zadd(COLLECTORS, {name: time.time()})

    def last_seen(self) -> float | None:
        newest = self.redis.zrevrange(COLLECTORS, 0, 0, withscores=True)
        return float(newest[0][1]) if newest else None
