"""A throwaway ``redis-server`` for the benchmarks that measure Redis itself.

No AOF and no snapshots: ``producer run``'s embedded Redis (``producer.local.EmbeddedRedis``)
keeps an append-only file, whose writes these figures (memory per run, dedup throughput) must
not include.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from producer.local import free_port


@contextmanager
def private_redis(directory: Path) -> Iterator[redis.Redis]:
    """A client of a fresh redis-server on a free port, stopped when the block ends."""
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                               "--dir", str(directory)], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield client
    finally:
        server.terminate()
        server.wait(10)
