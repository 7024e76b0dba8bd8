"""Dead letters: attempts the workers gave up on (``producer dlq RUN [--retry]``).

A worker pushes a letter (word, attempt, last error, worker, time) to the run's
dead-letter list when an attempt kept raising, hit its time limit, or killed
its worker ``max_deliveries`` times. The attempt itself is then over (counted as rejected
``generation_failed``), so a retry is a *new* attempt of the word: a fresh task id, a
fresh delivery counter, a fresh seed. It is granted outside the word's attempt budget —
the user asked for it — and only for words still short of their quota.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from convfarm.runstate import RunInfo, RunStore
from producer.enqueue import send


def letters(store: RunStore, run: str) -> list[dict[str, Any]]:
    return store.dead_letters.list(run)


@dataclass
class RetryResult:
    sent: list[tuple[str, int]] = field(default_factory=list)  # (word, new attempt)
    already_met: list[str] = field(default_factory=list)  # words that reached their quota meanwhile


def retry(store: RunStore, celery: Celery, info: RunInfo) -> RetryResult:
    """Re-enqueue the run's dead letters; they move to ``dlq:retried`` (kept for the record)."""
    receipt, taken = store.dead_letters.take(info.run)
    if not taken:
        return RetryResult()
    result = RetryResult()
    per_word = Counter(letter["word"] for letter in taken)
    target = store.target(info.run) or info.config.per_word
    accepted = store.accepted_of(info.run, list(per_word))
    for (word, failed), have in zip(per_word.items(), accepted, strict=True):
        wanted = min(failed, target - have)
        if wanted <= 0:
            result.already_met.append(word)
            continue
        result.sent.extend((word, attempt) for attempt in store.issue_retry_attempts(info.run, word, wanted))
    store.dead_letters.archive(info.run, receipt, taken)
    if result.sent and store.status(info.run) == "complete":
        store.keep_run(info.run)  # its retention no longer applies: it is running again
        store.set_status(info.run, "active")  # it finishes again when the retried words are done
    send(celery, info, result.sent)
    return result
