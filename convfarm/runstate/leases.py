"""Leases: every issued attempt with no outcome yet holds one (docs/design.md, "Delivery guarantees").

Keys: the shared sorted set :data:`~convfarm.runstate.keys.LEASES` (member ``run␟word␟attempt``,
score the deadline on Redis's clock). The issue and outcome scripts of :class:`RunStore` add and
remove leases in the same script that issues or counts an attempt; this registry extends one
(the task), decides an expired one (a collector), and cleans up a purged run's members.
"""

from __future__ import annotations

import json
import time
from enum import IntEnum

import redis

from convfarm.runstate.keys import LEASES, SEP, RunKeys, attempt_field
from convfarm.runstate.scripts import Script, keys_of


class LeaseVerdict(IntEnum):
    """What ``lease_expire.lua`` decided for one expired lease."""

    NOTHING = 0  # not expired (any more), counted, or its run is not active
    REISSUE = 1  # send the attempt again (same task id)
    DEAD_LETTER = 2  # its delivery budget is spent


def lease_member(run: str, word: str, attempt: int) -> str:
    return f"{run}{SEP}{attempt_field(word, attempt)}"


def lease_prefix(run: str) -> str:
    """What every lease member of ``run`` starts with (the scripts append word and attempt)."""
    return f"{run}{SEP}"


def parse_lease_member(member: str) -> tuple[str, str, int]:
    run, rest = member.split(SEP, 1)  # a run id holds no control character (config.name)
    word, attempt = rest.rsplit(SEP, 1)
    return run, word, int(attempt)


def lease_seconds() -> int:
    from convfarm.settings import get_settings

    return get_settings().lease


class LeaseRegistry:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._extend = Script(client, "lease_extend")
        self._expire = Script(client, "lease_expire")

    def extend(self, run: str, word: str, attempt: int, *, worker: str | None = None,
               seconds: int | None = None) -> bool:
        """The attempt runs (``worker`` given: it starts now, shown as running): its lease runs
        ``seconds`` from now. False when its outcome is counted already (a late duplicate)."""
        running = json.dumps({"worker": worker, "since": time.time()}) if worker else ""
        keys = keys_of(RunKeys(run), self._extend.key_names, leases=LEASES)
        args = [attempt_field(word, attempt), lease_member(run, word, attempt), seconds or lease_seconds(), running]
        return bool(self._extend(keys, args))

    def expire(self, run: str, word: str, attempt: int, *, max_deliveries: int, queued: bool,
               seconds: int | None = None) -> LeaseVerdict:
        """Decide one expired lease atomically (one collector acts, however many look)."""
        keys = keys_of(RunKeys(run), self._expire.key_names, leases=LEASES)
        args = [lease_member(run, word, attempt), attempt_field(word, attempt), seconds or lease_seconds(),
                max_deliveries, "1" if queued else "0"]
        return LeaseVerdict(int(self._expire(keys, args)))

    def server_time(self) -> float:
        seconds, micros = self.redis.time()
        return seconds + micros / 1e6

    def expired(self, limit: int = 500) -> list[tuple[str, str, int]]:
        """(run, word, attempt) of leases past their deadline, oldest first."""
        members = self.redis.zrangebyscore(LEASES, "-inf", self.server_time(), start=0, num=limit)
        return [parse_lease_member(m.decode()) for m in members]

    def drop(self, run: str, word: str, attempt: int) -> None:
        self.redis.zrem(LEASES, lease_member(run, word, attempt))

    def of_run(self, run: str) -> dict[tuple[str, int], float]:
        """The run's leases: (word, attempt) -> deadline (for status and tests; scans the whole set)."""
        found: dict[tuple[str, int], float] = {}
        for member, score in self.redis.zscan_iter(LEASES, match=glob_escape(lease_prefix(run)) + "*", count=1000):
            _, word, attempt = parse_lease_member(member.decode())
            found[(word, attempt)] = score
        return found

    def purge(self, run: str, pipe: redis.client.Pipeline) -> None:
        """Cleanup: a purged run's leases leave the shared set (its attempts must not be issued again)."""
        members = [lease_member(run, word, attempt) for word, attempt in self.of_run(run)]
        for start in range(0, len(members), 500):
            pipe.zrem(LEASES, *members[start:start + 500])


def glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
