"""Leases in the run state (docs/design.md, "Run state"): every attempt in flight holds one, an
outcome ends it, an expired one is decided once (issued again, or dead-lettered)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from convfarm.config import load_config
from convfarm.runstate import RunStore, run_id_for
from convfarm.runstate.keys import LEASES
from convfarm.runstate.leases import LeaseVerdict, lease_member
from tests.conftest import write_config

pytestmark = pytest.mark.fast


def in_flight(store: RunStore, run: str) -> set[tuple[str, int]]:
    """Attempts issued with no outcome, from the counters and the outcomes hash."""
    issued = {k.decode(): int(v) for k, v in store.redis.hgetall(f"convfarm:run:{run}:issued").items()}
    outcomes = {k.decode() for k in store.redis.hkeys(f"convfarm:run:{run}:outcomes")}
    return {(w, a) for w, n in issued.items() for a in range(n) if f"{w}\x1f{a}" not in outcomes}


def expire(client: redis.Redis, run: str, word: str, attempt: int) -> None:
    client.zadd(LEASES, {lease_member(run, word, attempt): 0})


def test_every_attempt_in_flight_holds_a_lease(rclient: redis.Redis, tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "leases.json", name="leases", words=["apple", "pear"],
                                      max_attempts=2))[0]
    store = RunStore(rclient)
    info = store.create(run_id_for(config), config, "")
    run = info.run
    tasks = store.issue_shortfall(info)
    assert set(store.leases.of_run(run)) == set(tasks) == in_flight(store, run) == {("apple", 0), ("pear", 0)}

    # a rejection issues a retry: it holds a lease, the counted attempt no longer does
    outcome = store.record_outcome(info, "apple", 0, "rejected", "too_few_turns")
    assert outcome.retry_attempt == 1
    assert set(store.leases.of_run(run)) == in_flight(store, run) == {("apple", 1), ("pear", 0)}

    # a running task extends its lease; a duplicate of a counted attempt cannot revive one
    before = store.leases.of_run(run)[("pear", 0)]
    assert store.leases.extend(run, "pear", 0, worker="w@h", seconds=10_000)
    assert store.leases.of_run(run)[("pear", 0)] > before
    assert not store.leases.extend(run, "apple", 0)
    assert ("apple", 0) not in store.leases.of_run(run)

    # expired, never started, its queue still holds messages: presumed waiting
    expire(rclient, run, "apple", 1)
    assert store.leases.expire(run, "apple", 1, max_deliveries=2, queued=True) is LeaseVerdict.NOTHING
    assert store.leases.of_run(run)[("apple", 1)] > store.leases.server_time()
    # expired, never started, nothing queued: lost; issued again, and the loss is a delivery
    expire(rclient, run, "apple", 1)
    assert store.leases.expire(run, "apple", 1, max_deliveries=2, queued=False) is LeaseVerdict.REISSUE
    # a second collector looking at the same moment finds nothing to do (the deadline moved)
    assert store.leases.expire(run, "apple", 1, max_deliveries=2, queued=False) is LeaseVerdict.NOTHING
    # started (counted its delivery), lost again: the budget of 2 deliveries is spent
    assert store.count_delivery(run, "apple", 1) == 2
    store.leases.extend(run, "apple", 1, worker="w@h")
    expire(rclient, run, "apple", 1)
    assert store.leases.expire(run, "apple", 1, max_deliveries=2, queued=False) is LeaseVerdict.DEAD_LETTER
    assert ("apple", 1) in store.leases.of_run(run)  # kept until the failure record is counted
    store.record_outcome(info, "apple", 1, "rejected", "generation_failed")
    store.record_outcome(info, "pear", 0, "accepted", None)
    assert store.leases.of_run(run) == {} and in_flight(store, run) == set()
    assert store.words_done(run) == 2

    # `dlq --retry` attempts hold leases from the moment they exist
    attempts = store.issue_retry_attempts(run, "apple", 1)
    assert set(store.leases.of_run(run)) == {("apple", a) for a in attempts} == in_flight(store, run)


def test_complete_run_drops_stale_leases(rclient: redis.Redis, tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "done.json", name="done", words=["apple"]))[0]
    store = RunStore(rclient)
    info = store.create(run_id_for(config), config, "")
    store.issue_shortfall(info)
    store.set_status(info.run, "complete")
    expire(rclient, info.run, "apple", 0)
    assert store.leases.expire(info.run, "apple", 0, max_deliveries=3, queued=False) is LeaseVerdict.NOTHING
    assert store.leases.of_run(info.run) == {}
