"""Exactly-once output with several collectors (docs/design.md, "Delivery guarantees").

Two collectors in this process on the session's real Redis, interleaved at the commit's named
checkpoints: one is stopped between its committed check and its write, the other acts, then the
first goes on. Without an atomic claim per record id, or a fence on a collector whose results
were taken over, each case writes records twice and counts their tokens twice.
"""

from __future__ import annotations

import pytest

from convfarm.runstate import Fenced, RunInfo
from tests.inprocess import WORDS, FarmState, make_record, pending, push
from workers.collector import Collector

pytestmark = pytest.mark.fast


def records_of(info: RunInfo) -> list:
    return [make_record(info.run, word, 0) for word in WORDS]


def assert_once_each(state: FarmState, info: RunInfo, expected: int) -> None:
    ids = state.ids(info)
    assert len(ids) == len(set(ids)), f"records written twice: {len(ids) - len(set(ids))}"
    assert len(ids) == expected
    counts = state.store.counts(info.run)
    assert counts.accepted == expected
    assert counts.completion_tokens == 20 * expected, "completion tokens counted more than once"


def at(collector: Collector, point: str, action) -> None:
    """Run ``action`` once, the first time ``collector`` reaches ``point``."""
    done = []

    def observer(reached: str) -> None:
        if reached == point and not done:
            done.append(point)
            action()

    collector.checkpoints.observers.append(observer)


def test_two_collectors_with_copies_of_one_record_write_it_once(farm_state: FarmState) -> None:
    """Stream entries duplicated (a worker published twice): A and B each read a copy of every
    record; B commits its copies while A is between its committed check and its write."""
    info = farm_state.create_run()
    client = farm_state.client
    push(client, records_of(info))
    push(client, records_of(info))  # the copies
    a, b = farm_state.collector("a"), farm_state.collector("b")
    a.ensure_group()
    a.consumer.batch = b.consumer.batch = len(WORDS)
    first, second = a.read(">", None), b.read(">", None)
    assert len(first) == len(second) == len(WORDS)
    at(a, "before_write", lambda: b.process(second))
    a.process(first)
    assert pending(client) == 0
    assert_once_each(farm_state, info, len(WORDS))
    assert b.committer.stages[0].stats["claimed elsewhere"] == len(WORDS)  # the interleaving happened


def test_a_stalled_collector_whose_results_were_taken_over_writes_nothing(farm_state: FarmState) -> None:
    """A stalls (past the claim idle time) after its committed check; B takes its pending
    results over, writes them and seals A's open file; A wakes: its commit is refused, its
    write rolled back, and it goes on under its new token with what is still its own."""
    info = farm_state.create_run()
    client = farm_state.client
    push(client, records_of(info))
    a = farm_state.collector("a")
    b = farm_state.collector("b", claim_idle_ms=0)  # A counts as dead at once
    a.ensure_group()
    entries = a.read(">", None)
    at(a, "before_write", lambda: b.claim_abandoned())
    with pytest.raises(Fenced):
        a.process(entries)
    assert pending(client) == 0  # B acknowledged them; A did not ack anything
    assert_once_each(farm_state, info, len(WORDS))
    a.forget_runs()
    more = [make_record(info.run, word, 1) for word in WORDS]
    push(client, more)
    assert a.process(a.read(">", None)) == len(WORDS)  # A works again, under its new token
    assert_once_each(farm_state, info, 2 * len(WORDS))


def test_a_fenced_collectors_claims_are_taken_and_its_live_claims_are_not(farm_state: FarmState) -> None:
    """The claim script alone: an id held by a live collector is busy; fenced, it is free."""
    info = farm_state.create_run()
    store = farm_state.store
    ids = ["r1", "r2"]
    token_a, token_b = store.fences.token("a"), store.fences.token("b")
    assert store.claim_records(info.run, ids, "a", token_a) == [None, None]
    assert store.claim_records(info.run, ids, "b", token_b) == ["busy", "busy"]
    store.fences.fence("a")
    assert store.claim_records(info.run, ids, "b", token_b) == [None, None]
    with pytest.raises(Fenced):
        store.confirm_records(info.run, {"r1": "accepted"}, "a", token_a, counters={"completion_tokens": 5},
                              model_identity=None)
    store.confirm_records(info.run, {"r1": "accepted", "r2": "accepted"}, "b", token_b,
                          counters={"completion_tokens": 5}, model_identity=None)
    assert store.claim_records(info.run, ids, "a", store.fences.token("a")) == ["accepted", "accepted"]
    assert store.counts(info.run).completion_tokens == 5
