"""A run's tasks still waiting in its Celery queue: count them, or take them out (cancel, purge).

Kombu's Redis transport keeps a queue as Redis lists (the queue's name, and one list per
priority step, ``<queue>\\x06\\x16<priority>``), each message a JSON object whose
``headers.id`` is the task id ``run:word:attempt`` (docs/design.md, "Messages and the
record"). Messages a worker has reserved (prefetched or running) are not removed: the worker
drops them when it runs them, as it drops every task of a cancelled run. Those are counted
where kombu's ``unacked`` hash holds them (workers with ack emulation: judge workers); a
generation worker holds its reserved messages in memory only (docs/design.md, "Delivery
guarantees"), so they are not counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import redis

PRIORITY_SEP = "\x06\x16"  # kombu.transport.redis.Channel.sep
PRIORITY_STEPS = (0, 3, 6, 9)  # kombu.transport.redis.PRIORITY_STEPS
UNACKED = "unacked"  # kombu.transport.redis.Channel.unacked_key


@dataclass
class Removed:
    attempts: list[tuple[str, int]] = field(default_factory=list)  # (word, attempt) taken out of the queue
    reserved: int = 0  # held by workers: they drop them


def _lists(queue: str) -> list[str]:
    return [queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def _attempt(raw: bytes, prefix: str) -> tuple[str, int] | None:
    try:
        task_id = json.loads(raw)["headers"]["id"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(task_id, str) or not task_id.startswith(prefix):
        return None
    word, _, attempt = task_id[len(prefix):].rpartition(":")
    return (word, int(attempt)) if attempt.isdigit() else None


def remove_queued(client: redis.Redis, queue: str, run: str, *, dry_run: bool = False) -> Removed:
    """Take ``run``'s waiting messages out of ``queue`` (each removed exactly once: LREM of its
    bytes, so a message a worker took meanwhile is not counted); count the reserved ones."""
    prefix, removed = f"{run}:", Removed()
    for name in _lists(queue):
        for raw in client.lrange(name, 0, -1):
            if (attempt := _attempt(raw, prefix)) is None:
                continue
            if dry_run or client.lrem(name, 1, raw):
                removed.attempts.append(attempt)
    for value in client.hvals(UNACKED):
        try:
            message = json.dumps(json.loads(value)[0]).encode()
        except (ValueError, IndexError, TypeError):
            continue
        if _attempt(message, prefix) is not None:
            removed.reserved += 1
    return removed
