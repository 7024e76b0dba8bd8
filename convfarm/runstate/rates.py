"""Throughput buckets: the collector adds what it committed, ``producer status`` reads tok/s.

Keys: the run's ``rate:<bucket>`` hashes (results, accepted, tokens), one per
:data:`RATE_BUCKET` seconds. Cleanup: each expires 10 minutes after its last write.
"""

from __future__ import annotations

import time

import redis

from convfarm.runstate.keys import RunKeys

RATE_BUCKET = 5  # seconds
RATE_TTL = 600  # seconds a bucket is kept


class RateRegistry:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def add(self, run: str, *, results: int, accepted: int, tokens: int, now: float | None = None) -> None:
        key = RunKeys(run).rate(int((now or time.time()) // RATE_BUCKET))
        pipe = self.redis.pipeline()
        pipe.hincrby(key, "results", results)
        pipe.hincrby(key, "accepted", accepted)
        pipe.hincrby(key, "tokens", tokens)
        pipe.expire(key, RATE_TTL)
        pipe.execute()

    def window(self, run: str, seconds: float = 60.0, now: float | None = None) -> tuple[float, dict[str, int]]:
        """Sums of the buckets covering the last ``seconds``, and the seconds they span."""
        now = now or time.time()
        current = int(now // RATE_BUCKET)
        first = current - int(seconds // RATE_BUCKET)
        pipe = self.redis.pipeline()
        for bucket in range(first, current + 1):
            pipe.hgetall(RunKeys(run).rate(bucket))
        totals: dict[str, int] = {"results": 0, "accepted": 0, "tokens": 0}
        for reply in pipe.execute():
            for k, v in reply.items():
                totals[k.decode()] = totals.get(k.decode(), 0) + int(v)
        return now - first * RATE_BUCKET, totals
