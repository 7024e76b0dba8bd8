"""Dead letters: attempts the farm gave up on (``producer dlq``), one JSON entry each.

Keys: the run's ``dlq`` list (at most :data:`DLQ_CAP` letters: the oldest are dropped and
counted in the meta's ``dead_letters_dropped``), ``dlq:words`` (the words with a letter),
``dlq:retrying:<nonce>`` while a retry holds the letters it took, ``dlq:retried`` (letters
already retried, kept for the record); ``convfarm:dlq:unroutable`` for results of no known run.
Cleanup: with the run's other keys (retention, purge); a retry drops the retried attempts'
delivery counters.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from convfarm.runstate.keys import UNROUTABLE_DLQ, RunKeys, attempt_field
from convfarm.runstate.scripts import Script, keys_of

DLQ_CAP = 10_000  # letters kept per run (and unroutable): enough to see what went wrong, bounded


def dead_letter(word: str, attempt: int, error: str, worker: str, *, record: str | None = None) -> dict[str, Any]:
    """The one shape of a dead letter: the attempt, its last error, who gave up, when (and the
    record id, when the collector parked a record it holds)."""
    letter: dict[str, Any] = {"word": word, "attempt": attempt, "error": error, "worker": worker, "at": time.time()}
    if record is not None:
        letter["record"] = record
    return letter


class DeadLetterRegistry:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._add = Script(client, "add_dead_letter")

    def add(self, run: str, letter: dict[str, Any], *, of_a_word: bool = True) -> None:
        """Append a letter built by :func:`dead_letter` (the oldest beyond :data:`DLQ_CAP` dropped);
        ``of_a_word=False``: its word is not one of the run's (not counted as a dead-lettered word)."""
        word = str(letter["word"]) if of_a_word else ""
        self._add(keys_of(RunKeys(run), self._add.key_names), [json.dumps(letter), word, DLQ_CAP])

    def add_unroutable(self, letter: dict[str, Any]) -> None:
        """A result no run can take (its run id is unknown or not a run name, or it is no record)."""
        pipe = self.redis.pipeline()
        pipe.rpush(UNROUTABLE_DLQ, json.dumps(letter))
        pipe.ltrim(UNROUTABLE_DLQ, -DLQ_CAP, -1)
        pipe.execute()

    def unroutable(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.redis.lrange(UNROUTABLE_DLQ, 0, -1)]

    def words(self, run: str) -> int:
        """How many words have a dead letter (without reading the letters)."""
        return int(self.redis.scard(RunKeys(run).dlq_words))

    def dropped(self, run: str) -> int:
        """Letters dropped, oldest first, to keep the list at :data:`DLQ_CAP`."""
        return int(self.redis.hget(RunKeys(run).meta, "dead_letters_dropped") or 0)

    def list(self, run: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.redis.lrange(RunKeys(run).dlq, 0, -1)]

    def count(self, run: str) -> int:
        return int(self.redis.llen(RunKeys(run).dlq))

    def take(self, run: str) -> tuple[str, list[dict[str, Any]]]:
        """Move the dead letters aside (atomic: two retries never take the same letter); (receipt, letters)."""
        receipt = RunKeys(run).dlq_receipt(time.time_ns())
        try:
            self.redis.rename(RunKeys(run).dlq, receipt)
            self.redis.delete(RunKeys(run).dlq_words)  # retried: the words have no letter now
        except redis.ResponseError as exc:  # "no such key": the list is empty
            if "no such key" in str(exc).lower():
                return receipt, []
            raise
        return receipt, [json.loads(raw) for raw in self.redis.lrange(receipt, 0, -1)]

    def archive(self, run: str, receipt: str, letters: list[dict[str, Any]]) -> None:
        """Retried letters go to ``dlq:retried`` (kept for the record); their old delivery counters are dropped."""
        keys = RunKeys(run)
        pipe = self.redis.pipeline()
        for letter in letters:
            pipe.hdel(keys.deliveries, attempt_field(letter["word"], letter["attempt"]))
        if letters:
            pipe.rpush(keys.dlq_retried, *[json.dumps({**letter, "retried_at": time.time()}) for letter in letters])
        pipe.delete(receipt)
        pipe.execute()
