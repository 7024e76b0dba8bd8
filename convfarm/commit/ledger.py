"""Where the commit stages keep their books: Redis for collectors, memory for ``producer filter``."""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from convfarm.commit.batch import Item
from convfarm.runstate import Fenced, Outcome, RunCounts, RunInfo, RunStore
from convfarm.runstate.store import CLAIMED_ELSEWHERE


class Ledger(Protocol):
    def look_up(self, run: str, items: list[Item]) -> None:
        """Fill in each item's ``committed`` status, ``below_floor`` and ``elsewhere``; an id
        neither committed nor held elsewhere is claimed for this writer."""

    def mark_committed(self, run: str, statuses: dict[str, str], *, counters: dict[str, int],
                       model_identity: str | None, accepted: int) -> None: ...

    def cover(self, info: RunInfo, record_id: str, words: list[str]) -> int: ...

    def record_outcomes(self, info: RunInfo, outcomes: list[tuple[str, int, str, str | None]],
                        record_ids: list[str]) -> list[Outcome]: ...

    def words_done(self, run: str) -> int: ...


class RedisLedger:
    """The run's state in Redis (``committed``, counters, outcomes): shared by every collector.

    Exactly-once with several collectors (docs/design.md, "Delivery guarantees"): the committed
    check claims each id it finds free for ``owner`` (atomic per id), only claimed ids are
    written, and the mark confirms them only while ``owner``'s fencing token is current."""

    def __init__(self, store: RunStore, owner: str) -> None:
        self.store = store
        self.owner = owner
        self._token: str | None = None

    @property
    def token(self) -> str:
        if self._token is None:
            self._token = self.store.fences.token(self.owner)
        return self._token

    def look_up(self, run: str, items: list[Item]) -> None:
        records = [item.record for item in items]
        below = self.store.below_floor(run, [(r.word, r.attempt) for r in records])
        live = [r.id for r, under in zip(records, below, strict=True) if not under]
        try:
            claimed = iter(self.store.claim_records(run, live, self.owner, self.token))
        except Fenced:
            self._token = None  # the next batch starts under our current token
            raise
        for item, under in zip(items, below, strict=True):
            status = None if under else next(claimed)
            item.below_floor = under
            item.elsewhere = status == CLAIMED_ELSEWHERE
            item.committed = None if item.elsewhere else status

    def mark_committed(self, run: str, statuses: dict[str, str], *, counters: dict[str, int],
                       model_identity: str | None, accepted: int) -> None:
        try:
            self.store.confirm_records(run, statuses, self.owner, self.token, counters=counters,
                                       model_identity=model_identity)
        except Fenced:
            self._token = None
            raise
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
