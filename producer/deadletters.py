"""Dead letters: attempts the workers gave up on (``producer dlq RUN [--retry]``).

A worker pushes a letter (word, attempt, last error, worker, time) to
``convfarm:run:<run>:dlq`` when an attempt kept raising, hit its time limit, or killed
its worker ``max_deliveries`` times. The attempt itself is then over (counted as rejected
``generation_failed``), so a retry is a *new* attempt of the word: a fresh task id, a
fresh delivery counter, a fresh seed. It is granted outside the word's attempt budget —
the user asked for it — and only for words still short of their quota.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery

from producer.enqueue import send
from producer.runstate import RunInfo, RunStore, run_key


def letters(store: RunStore, run: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in store.redis.lrange(run_key(run, "dlq"), 0, -1)]


@dataclass
class RetryResult:
    sent: list[tuple[str, int]] = field(default_factory=list)  # (word, new attempt)
    already_met: list[str] = field(default_factory=list)  # words that reached their quota meanwhile


def retry(store: RunStore, celery: Celery, info: RunInfo) -> RetryResult:
    """Re-enqueue the run's dead letters; they move to ``dlq:retried`` (kept for the record)."""
    pending = run_key(info.run, f"dlq:retrying:{time.time_ns()}")
    try:
        store.redis.rename(run_key(info.run, "dlq"), pending)  # atomic: two retries never take the same letter
    except redis.ResponseError as exc:  # "no such key": the list is empty
        if "no such key" in str(exc).lower():
            return RetryResult()
        raise
    taken = [json.loads(raw) for raw in store.redis.lrange(pending, 0, -1)]
    result = RetryResult()
    per_word = Counter(letter["word"] for letter in taken)
    target = store.target(info.run) or info.config.per_word
    pipe = store.redis.pipeline()
    for word in per_word:
        pipe.hget(run_key(info.run, "accepted"), word)
    accepted = [int(v or 0) for v in pipe.execute()]
    for (word, failed), have in zip(per_word.items(), accepted, strict=True):
        wanted = min(failed, target - have)
        if wanted <= 0:
            result.already_met.append(word)
            continue
        result.sent.extend((word, attempt) for attempt in store.issue(info.run, word, wanted))
    pipe = store.redis.pipeline()
    for letter in taken:  # the old attempts' delivery counters are of no further use
        pipe.hdel(run_key(info.run, "deliveries"), f"{letter['word']}\x1f{letter['attempt']}")
    pipe.rpush(run_key(info.run, "dlq:retried"), *[json.dumps({**letter, "retried_at": time.time()}) for letter in taken])
    pipe.delete(pending)
    pipe.execute()
    if result.sent and store.status(info.run) == "complete":
        store.set_status(info.run, "active")  # it finishes again when the retried words are done
    send(celery, info, result.sent)
    return result
