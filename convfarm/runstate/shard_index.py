"""The shard index: shard numbers and sealed shards of a run (the Redis ``ShardRegistry``).

Keys: the run's ``shard_seq:<kind>`` counters (``INCR``: unique across collectors) and its
``shards`` hash (file name -> manifest entry). Cleanup: with the run's other keys.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from convfarm.runstate.keys import RunKeys


class ShardIndex:
    """Implements :class:`convfarm.rundir.shards.ShardRegistry` on Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def next_shard_number(self, run: str, kind: str) -> int:
        return int(self.redis.incr(RunKeys(run).shard_seq(kind))) - 1

    def add_shard(self, run: str, name: str, entry: dict[str, Any]) -> None:
        self.redis.hset(RunKeys(run).shards, name, json.dumps(entry, sort_keys=True))

    def shards(self, run: str) -> dict[str, dict[str, Any]]:
        raw = self.redis.hgetall(RunKeys(run).shards)
        return {k.decode(): json.loads(v) for k, v in sorted(raw.items())}
