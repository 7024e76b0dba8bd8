"""Which farm processes are alive, and what they serve: one row per worker and per collector.

Every ``celery -A workers worker`` process (generation worker or collector) writes its row
every :data:`BEAT_SECONDS` from a small thread (``workers/heartbeat.py``): its kind, the
queues it consumes, its pid and the time. A row not refreshed for :data:`GONE_AFTER` seconds is
*gone* (the process died, was SIGKILLed or lost Redis); gone rows are shown as gone for
:data:`DROP_AFTER` seconds, then dropped (the key expires). A worker stopped cleanly removes its
row at once. ``producer status``, ``enqueue`` and ``--wait`` read these rows to say when nobody
serves a queue (docs/design.md, "Run state").
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from convfarm.runstate.keys import PRESENCE_PREFIX

BEAT_SECONDS = 5.0
GONE_AFTER = 30.0  # six beats missed
DROP_AFTER = 600.0  # a gone row stays visible this long, then its key expires


@dataclass(frozen=True)
class Member:
    name: str
    kind: str  # "worker" | "collector"
    queues: tuple[str, ...]
    last_seen: float
    started: float
    pid: int = 0

    def age(self, now: float | None = None) -> float:
        return (now if now is not None else time.time()) - self.last_seen

    def alive(self, now: float | None = None) -> bool:
        return self.age(now) <= GONE_AFTER


class Presence:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def beat(self, name: str, *, kind: str, queues: list[str], pid: int, started: float) -> None:
        key = PRESENCE_PREFIX + name
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping={"kind": kind, "queues": json.dumps(sorted(queues)), "pid": pid,
                                "started": repr(started), "last_seen": repr(time.time())})
        pipe.expire(key, int(GONE_AFTER + DROP_AFTER))
        pipe.execute()

    def leave(self, name: str) -> None:
        self.redis.delete(PRESENCE_PREFIX + name)

    def members(self) -> list[Member]:
        found = []
        for key in sorted(self.redis.scan_iter(match=PRESENCE_PREFIX + "*", count=500)):
            raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(key).items()}
            if not raw:
                continue
            found.append(Member(name=key.decode().removeprefix(PRESENCE_PREFIX), kind=raw.get("kind", "worker"),
                                queues=tuple(json.loads(raw.get("queues", "[]"))),
                                last_seen=float(raw.get("last_seen", 0)), started=float(raw.get("started", 0)),
                                pid=int(raw.get("pid", 0))))
        return found

    def serving(self, queue: str, now: float | None = None) -> list[Member]:
        """Live generation workers that consume ``queue``."""
        return [m for m in self.members() if m.kind == "worker" and queue in m.queues and m.alive(now)]

    def last_served(self, queue: str) -> float | None:
        """When a worker of ``queue`` was last seen (alive or gone), None when none is known."""
        seen = [m.last_seen for m in self.members() if m.kind == "worker" and queue in m.queues]
        return max(seen) if seen else None

    def collectors_alive(self, now: float | None = None) -> list[Member]:
        return [m for m in self.members() if m.kind == "collector" and m.alive(now)]

    def known_queues(self) -> set[str]:
        return {q for m in self.members() if m.kind == "worker" for q in m.queues}
