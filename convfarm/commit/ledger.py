"""Where the commit stages keep their books: Redis for collectors, memory for ``producer filter``."""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from convfarm.commit.batch import Item
from convfarm.runstate import Outcome, RunCounts, RunInfo, RunStore


class Ledger(Protocol):
    def look_up(self, run: str, items: list[Item]) -> None:
        """Fill in each item's ``committed`` status and ``below_floor``."""

    def mark_committed(self, run: str, statuses: dict[str, str], *, counters: dict[str, int],
                       model_identity: str | None, accepted: int) -> None: ...

    def cover(self, info: RunInfo, record_id: str, words: list[str]) -> int: ...

    def record_outcomes(self, info: RunInfo, outcomes: list[tuple[str, int, str, str | None]],
                        record_ids: list[str]) -> list[Outcome]: ...

    def words_done(self, run: str) -> int: ...


class RedisLedger:
    """The run's state in Redis (``committed``, counters, outcomes): shared by every collector."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def look_up(self, run: str, items: list[Item]) -> None:
        records = [item.record for item in items]
        committed = self.store.committed_statuses(run, [r.id for r in records])
        below = self.store.below_floor(run, [(r.word, r.attempt) for r in records])
        for item, status, under in zip(items, committed, below, strict=True):
            item.committed, item.below_floor = status, under

    def mark_committed(self, run: str, statuses: dict[str, str], *, counters: dict[str, int],
                       model_identity: str | None, accepted: int) -> None:
        self.store.mark_committed(run, statuses, counters=counters, model_identity=model_identity)
        self.store.rates.add(run, results=len(statuses), accepted=accepted, tokens=counters["completion_tokens"])

    def cover(self, info: RunInfo, record_id: str, words: list[str]) -> int:
        return self.store.cover(info, record_id, words)

    def record_outcomes(self, info: RunInfo, outcomes: list[tuple[str, int, str, str | None]],
                        record_ids: list[str]) -> list[Outcome]:
        return self.store.record_outcomes(info, outcomes, record_ids=record_ids)

    def words_done(self, run: str) -> int:
        return self.store.words_done(run)


class LocalLedger:
    """One process writing a whole run directory alone (``producer filter``): nothing was
    committed before, nothing is retried, and the counts are kept here for the manifest."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.kept_words: set[str] = set()

    def look_up(self, run: str, items: list[Item]) -> None:
        return None

    def mark_committed(self, run: str, statuses: dict[str, str], *, counters: dict[str, int],
                       model_identity: str | None, accepted: int) -> None:
        for status in statuses.values():
            kind, _, reason = status.partition(":")
            self.counters[kind] += 1
            if reason:
                self.counters[f"reason:{reason}"] += 1
        self.counters.update(counters)

    def cover(self, info: RunInfo, record_id: str, words: list[str]) -> int:
        return 0

    def record_outcomes(self, info: RunInfo, outcomes: list[tuple[str, int, str, str | None]],
                        record_ids: list[str]) -> list[Outcome]:
        self.kept_words.update(word for word, _, status, _ in outcomes if status == "accepted")
        return [Outcome(new=True, retry_attempt=None, words_done=0) for _ in outcomes]

    def words_done(self, run: str) -> int:
        return len(self.kept_words)

    def run_counts(self) -> RunCounts:
        return RunCounts.from_hash(dict(self.counters))
