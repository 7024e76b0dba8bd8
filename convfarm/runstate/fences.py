"""Collectors' fencing tokens: who may still commit the record ids it claimed.

Key: ``convfarm:collector_fences`` (collector name -> token). A collector reads its token when it
starts and keeps it across restarts under its name (its claims stay its own); a collector that
takes over another's pending results raises that one's token first, which voids every claim the
other holds and refuses its next commit (docs/design.md, "Delivery guarantees"). Cleanup: one
small field per collector name ever fenced or started.
"""

from __future__ import annotations

import redis

from convfarm.runstate.keys import COLLECTOR_FENCES


class Fenced(Exception):
    """Our token is no longer current: another collector took over our pending results."""


class CollectorFences:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def token(self, collector: str) -> str:
        """The collector's current token (created as 1 on its first start)."""
        self.redis.hsetnx(COLLECTOR_FENCES, collector, 1)
        return (self.redis.hget(COLLECTOR_FENCES, collector) or b"1").decode()

    def fence(self, collector: str) -> None:
        """Void ``collector``'s claims: it must not write what it read before now."""
        self.redis.hincrby(COLLECTOR_FENCES, collector, 1)
