"""A forever run's Redis state stays bounded (docs/design.md, "Run state"): the real collector
and run-state scripts on the session's real Redis, round after round, with what tasks do
before a result (count the delivery, take the lease) — no worker process, no model.

* dedup keeps the last ``window`` kept records: duplicates and near-duplicates within it are
  rejected, a copy of a record that left it is kept (the documented trade-off);
* every attempt under its word's floor is counted, and its per-attempt entries are gone, so
  the run's entries and memory stop growing once the window is full;
* a late copy of a trimmed attempt changes nothing, and faults mid-batch still write each
  record exactly once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import redis

from convfarm.runstate import RunInfo, RunStore, run_key
from tests.inprocess import FarmState, Fault, make_config, make_record, push
from tests.test_collector import FAULTS
from workers.collector import Collector
from workers.collector.supervisor import MAX_OPEN_AGE_FACTOR

pytestmark = pytest.mark.fast

WORDS = ["bridge", "leaf", "pocket", "bear", "room", "village"]
WINDOW = 30  # kept records; 6 words a round fill it in 5 rounds
PER_ATTEMPT = ("outcomes", "retries", "deliveries", "running", "committed", "covered_records")


def text_of(word: str, attempt: int) -> str:
    """A teacher's answer of 40 tokens that no other attempt shares (no near-duplicate by chance)."""
    tokens = [hashlib.sha256(f"{word}\x1f{attempt}\x1f{i}".encode()).hexdigest()[:7] for i in range(40)]
    return f"A {word} is " + " ".join(tokens) + "."


@dataclass
class ForeverRun:
    """Plays a forever run through a collector: each task's calls, then its result on the stream."""

    state: FarmState
    collector: Collector
    info: RunInfo
    queue: list[tuple[str, int]]
    reject_every: int = 0
    texts: dict[str, str] = field(default_factory=dict)  # word -> the text its next result carries
    played: dict[tuple[str, int], str] = field(default_factory=dict)  # (word, attempt) -> its text
    carried: dict[str, int] = field(default_factory=dict)  # word -> the attempt that carried its ``texts`` entry
    results: int = 0

    @property
    def store(self) -> RunStore:
        return self.collector.store

    def round(self) -> int:
        info = self.store.get(self.info.run)
        assert info is not None
        return info.round

    def play_round(self, fault: Callable[[Collector], Fault] | None = None) -> None:
        """Results for every task until the collector starts the next round (retries included)."""
        start = self.round()
        while self.round() == start:
            assert self.queue, "the round is not over and nothing is issued"
            tasks, self.queue = self.queue, []
            records = []
            for word, attempt in tasks:
                assert self.store.count_delivery(self.info.run, word, attempt) == 1
                assert self.store.leases.extend(self.info.run, word, attempt, worker="w@test")
                self.results += 1
                text = self.texts.pop(word, None) or text_of(word, attempt)
                if text != text_of(word, attempt):
                    self.carried[word] = attempt
                self.played[(word, attempt)] = text
                rejected = self.reject_every and self.results % self.reject_every == 0
                records.append(make_record(self.info.run, word, attempt, text=text,
                                           **({"status": "rejected", "reason": "too_short"} if rejected else {})))
            push(self.state.client, records)
            installed = fault(self.collector) if fault else None
            try:
                self.collector.process(self.collector.read(">", None))
            except redis.ConnectionError:  # what run_forever does after a Redis error mid-batch
                self.collector.forget_runs()
                self.collector.process(self.collector.read("0", None))
            finally:
                if installed:
                    installed.remove()
            fault = None
            self.queue = [(word, attempt) for _, word, attempt in self.state.sent]
            self.state.sent.clear()

    def state_sizes(self) -> tuple[int, dict[str, int]]:
        """Bytes (exact MEMORY USAGE) and entries per key of the run, leaving out what grows with the
        output directory (one manifest entry per sealed shard) and the self-expiring rate buckets."""
        client = self.state.client
        total, entries = 0, {}
        for key in self.store.run_keys(self.info.run):
            part = key.removeprefix(run_key(self.info.run)).lstrip(":")
            if part == "shards" or part.startswith("rate:"):
                continue
            total += client.memory_usage(key, samples=0) or 0
            kind = client.type(key)
            entries[part] = {b"hash": client.hlen, b"set": client.scard, b"list": client.llen,
                             b"zset": client.zcard}.get(kind, lambda _k: 1)(key)
        return total, entries


def forever_run(state: FarmState, *, window: int = WINDOW, **config: object) -> ForeverRun:
    info = state.create_run(make_config(words=WORDS, near_dup_threshold=0.8, **config), issue=False)
    state.store.set_forever(info.run, True)
    queue = state.store.issue_shortfall(info)
    collector = state.collector()
    collector.dedup.window = window
    collector.ensure_group()
    return ForeverRun(state, collector, info, queue)


def written(state: FarmState, info: RunInfo) -> dict[str, dict]:
    records = state.records(info)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), f"records written twice: {len(ids) - len(set(ids))}"
    return {r["id"]: r for r in records}


def test_a_forever_runs_state_stops_growing_once_the_dedup_window_is_full(farm_state: FarmState) -> None:
    run = forever_run(farm_state, max_attempts=3)
    run.reject_every = 7  # rejections make retries: their entries must go too
    for _ in range(8):  # 48+ kept records: the window (30) is full
        run.play_round()
    bytes_full, entries_full = run.state_sizes()
    for _ in range(32):
        run.play_round()
    bytes_end, entries_end = run.state_sizes()

    counts = run.store.counts(run.info.run)
    assert counts.accepted >= 40 * len(WORDS) and counts.rejected > 30  # 8× the window went through
    assert entries_end == entries_full, "some key of the run still grows"
    assert bytes_end <= bytes_full * 1.02, (bytes_full, bytes_end)
    # dedup remembers exactly the window; no finished attempt leaves an entry behind
    for part in ("content", "kept", "minhash:rensa2"):
        assert entries_end[part] == WINDOW
    assert not {part: entries_end.get(part) for part in PER_ATTEMPT if entries_end.get(part)}
    # and nothing was lost on the way: every result written once, counted once
    records = written(farm_state, run.info)
    assert len(records) == run.results == counts.accepted + counts.rejected
    assert sum(r["status"] == "accepted" for r in records.values()) == counts.accepted


def test_dedup_in_a_forever_run_covers_the_window(farm_state: FarmState) -> None:
    run = forever_run(farm_state)
    for _ in range(8):
        run.play_round()
    accepted = {(r["word"], r["attempt"]): r for r in written(farm_state, run.info).values() if r["status"] == "accepted"}
    recent = max(attempt for word, attempt in accepted if word == "bridge")  # in the window
    recent_leaf = max(attempt for word, attempt in accepted if word == "leaf")
    oldest = min(attempt for word, attempt in accepted if word == "pocket")  # left it rounds ago
    run.texts.update(bridge=run.played[("bridge", recent)].upper().replace(" ", "  "),  # case and spacing: exact
                     leaf=run.played[("leaf", recent_leaf)].rstrip(".") + " too.",  # one more word: near
                     pocket=run.played[("pocket", oldest)])
    run.play_round()

    by_task = {(r["word"], r["attempt"]): r for r in written(farm_state, run.info).values()}
    bridge, leaf, pocket = (by_task[(word, run.carried[word])] for word in ("bridge", "leaf", "pocket"))
    assert (bridge["status"], bridge["reason"], bridge["duplicate_of"]) == \
        ("rejected", "duplicate", accepted[("bridge", recent)]["id"])
    assert (leaf["status"], leaf["reason"], leaf["duplicate_of"]) == \
        ("rejected", "near_duplicate", accepted[("leaf", recent_leaf)]["id"])
    assert pocket["status"] == "accepted"  # its twin left the window: a forever run dedups within it
    assert run.state.client.llen(run_key(run.info.run, "kept")) == WINDOW


def test_a_late_copy_of_a_trimmed_attempt_changes_nothing(farm_state: FarmState) -> None:
    """A result, a task or a lease of an attempt counted rounds ago (a redelivery, a late original)."""
    run = forever_run(farm_state)
    for _ in range(4):
        run.play_round()
    store, client, name = run.store, farm_state.client, run.info.run
    counts, records = store.counts(name), written(farm_state, run.info)
    assert store.below_floor(name, [("bridge", 0)]) == [True]

    push(client, [make_record(name, "bridge", 0, text=run.played[("bridge", 0)])])  # delivered again
    run.collector.process(run.collector.read(">", None))
    assert store.has_outcome(name, "bridge", 0)
    assert store.count_delivery(name, "bridge", 0) == 0  # the task returns; nothing written
    assert not store.leases.extend(name, "bridge", 0, worker="w@late")  # no lease revived
    assert ("bridge", 0) not in store.leases.of_run(name)
    assert store.counts(name) == counts and written(farm_state, run.info).keys() == records.keys()
    for part in PER_ATTEMPT:
        assert not client.exists(run_key(name, part)), part


@pytest.mark.parametrize("where", ["after the append (fsync'd)", "after the committed write", "before the outcomes",
                                   "after the outcomes"])
def test_a_fault_after_the_window_filled_writes_each_record_once(farm_state: FarmState, where: str) -> None:
    run = forever_run(farm_state)
    for _ in range(6):
        run.play_round()
    run.play_round(fault=FAULTS[where])
    for _ in range(2):
        run.play_round()
    records = written(farm_state, run.info)
    counts = run.store.counts(run.info.run)
    assert len(records) == run.results == counts.accepted + counts.rejected
    assert farm_state.client.llen(run_key(run.info.run, "kept")) == WINDOW  # the replay joined it once
    _, entries = run.state_sizes()
    assert not {part: entries.get(part) for part in PER_ATTEMPT if entries.get(part)}


def test_the_floor_passes_only_counted_attempts_and_only_in_forever_mode(farm_state: FarmState) -> None:
    store = farm_state.store
    finite = farm_state.create_run(make_config(name="finite", words=["leaf"], per_word=3))
    for attempt in range(3):
        store.record_outcome(finite, "leaf", attempt, "accepted", None)
    assert store.redis.hlen(run_key(finite.run, "outcomes")) == 3  # a finite run keeps its entries

    info = farm_state.create_run(make_config(name="forever", words=["leaf", "room"], per_word=3, skip_covered=True))
    store.set_forever(info.run, True)
    store.mark_committed(info.run, {"r1": "accepted", "r0": "accepted"})
    store.cover(info, "r1", ["room"])
    store.record_outcomes(info, [("leaf", 1, "accepted", None)], record_ids=["r1"])  # out of order: 0 is in flight
    assert store.below_floor(info.run, [("leaf", 0), ("leaf", 1)]) == [False, False]
    assert store.committed_statuses(info.run, ["r1"]) == ["accepted"]
    store.record_outcomes(info, [("leaf", 0, "accepted", None)], record_ids=["r0"])
    assert store.below_floor(info.run, [("leaf", 1), ("leaf", 2)]) == [True, False]  # 2 is in flight
    # both under the floor: their committed entries are trimmed, the floor answers for them
    assert store.below_floor(info.run, [("leaf", 0), ("leaf", 1)]) == [True, True]
    assert store.committed_statuses(info.run, ["r0", "r1"]) == [None, None]
    for part in ("outcomes", "committed", "covered_records"):
        assert not store.redis.exists(run_key(info.run, part)), part
    # counting a trimmed attempt again is a no-op
    again = store.record_outcomes(info, [("leaf", 0, "accepted", None)], record_ids=["r0"])[0]
    assert (again.new, again.retry_attempt) == (False, None)
    assert store.accepted_of(info.run, ["leaf"]) == [2]


def test_a_forever_run_rolls_shards_by_size_not_by_round(farm_state: FarmState) -> None:
    """Twenty rounds of a six-word run: 120 records, shard_size 50: two shards, not twenty (one
    per round, each with a manifest rewrite, was the old behaviour)."""
    run = forever_run(farm_state, shard_size=50)
    manifests = []
    directory = farm_state.run_dir(run.info)
    for _ in range(20):
        run.play_round()
        manifest = directory / "manifest.json"
        manifests.append(manifest.stat().st_mtime_ns if manifest.exists() else None)
    shards = sorted(p.name for p in directory.glob("conversations-*"))
    assert run.results >= 120
    assert len(shards) == run.results // 50, shards
    assert len(set(manifests)) <= len(shards) + 1  # rewritten when a shard is sealed, not each round


def test_a_forever_runs_open_shard_is_sealed_by_age_while_results_keep_coming(farm_state: FarmState) -> None:
    """A slow forever run never fills its shard and never goes idle: the open file is sealed once
    its first record is older than MAX_OPEN_AGE_FACTOR x the idle seal time, so output becomes
    readable shards within a bounded time."""
    run = forever_run(farm_state, shard_size=1000)
    supervisor = run.collector.supervisor
    supervisor.seal_idle_seconds = 60.0  # results keep coming: never idle in this test
    directory = farm_state.run_dir(run.info)
    for _ in range(3):
        run.play_round()
    supervisor.seal_idle_runs()
    assert not list(directory.glob("conversations-*.jsonl")), "sealed before its age with results still coming"
    (handle,) = list(run.collector.runs)
    handle.first_open_write -= 60.0 * MAX_OPEN_AGE_FACTOR  # the open file's first record is that old now
    supervisor.seal_idle_runs()
    sealed = list(directory.glob("conversations-*.jsonl"))
    assert len(sealed) == 1 and sum(1 for _ in sealed[0].open()) == run.results
    run.play_round()  # the run goes on into a new open file
    assert handle.first_open_write is not None
