"""The run-state Lua scripts on the session's real Redis: redelivery, the
dropped-attempt budget, skip_covered idempotence, and issuing over more than 1,000 words.
(The forever round with two collectors is in test_collector.py.)"""

from __future__ import annotations

import pytest

from tests.inprocess import FarmState, make_config

pytestmark = pytest.mark.fast


def test_a_redelivered_outcome_counts_once_and_repeats_its_retry(farm_state: FarmState) -> None:
    info = farm_state.create_run(make_config(words=["leaf"], max_attempts=3))
    store = farm_state.store
    first = store.record_outcome(info, "leaf", 0, "rejected", "too_short")
    again = store.record_outcome(info, "leaf", 0, "rejected", "too_short")
    assert (first.new, first.retry_attempt) == (True, 1)
    assert (again.new, again.retry_attempt) == (False, 1)  # the same retry, so a lost send is re-sent, not a new one
    counts = store.counts(info.run)
    assert (counts.rejected, counts.by_reason) == (1, {"too_short": 1})
    assert store.redis.hget(f"convfarm:run:{info.run}:issued", "leaf") == b"2"


def test_dropped_attempts_do_not_spend_the_budget(farm_state: FarmState) -> None:
    info = farm_state.create_run(make_config(words=["leaf"], per_word=1, max_attempts=2))
    store = farm_state.store
    assert store.record_outcome(info, "leaf", 0, "dropped", None).retry_attempt is None
    assert not store.is_done(info.run, "leaf")
    assert store.issue_shortfall(info) == [("leaf", 1)]  # the dropped attempt never ran: the budget is whole
    assert store.record_outcome(info, "leaf", 1, "rejected", "x").retry_attempt == 2
    spent = store.record_outcome(info, "leaf", 2, "rejected", "x")
    assert spent.retry_attempt is None and spent.words_done == 1
    assert store.short_words(info.run) == ["leaf"]
    assert store.issue_shortfall(info) == []
    assert store.counts(info.run).dropped == 1


def test_cover_counts_a_record_once(farm_state: FarmState) -> None:
    info = farm_state.create_run(make_config(words=["leaf", "room"], per_word=2, skip_covered=True))
    store = farm_state.store
    assert store.cover(info, "rec-1", ["room"]) == 0
    assert store.cover(info, "rec-1", ["room"]) == 0  # a redelivered record
    assert store.redis.hget(f"convfarm:run:{info.run}:covered", "room") == b"1"
    assert store.cover(info, "rec-2", ["room"]) == 1  # a second record covers it: done
    assert store.is_done(info.run, "room")


def test_issue_shortfall_over_more_than_a_thousand_words_issues_each_once(farm_state: FarmState) -> None:
    words = [f"word{i:04d}" for i in range(2345)]
    info = farm_state.create_run(make_config(words=words, per_word=2), issue=False)
    store = farm_state.store
    tasks = store.issue_shortfall(info)
    assert sorted(tasks) == sorted((w, a) for w in words for a in (0, 1))
    assert store.issue_shortfall(info) == []  # nothing missing any more


def test_a_batch_of_outcomes_decides_each_as_if_recorded_alone(farm_state: FarmState) -> None:
    """The collector records a batch in one script call: outcomes, retries, counters, done and
    short words and leases come out as with one call per outcome, a duplicate in the batch included."""
    outcomes = [("leaf", 0, "rejected", "too_short"), ("room", 0, "accepted", None), ("leaf", 0, "rejected", "too_short"),
                ("leaf", 1, "rejected", "too_short"), ("pear", 0, "dropped", None), ("leaf", 2, "accepted", None)]
    store = farm_state.store
    alone = farm_state.create_run(make_config(name="alone", words=["leaf", "room", "pear"], max_attempts=3))
    batched = farm_state.create_run(make_config(name="batched", words=["leaf", "room", "pear"], max_attempts=3))
    one_by_one = [store.record_outcome(alone, *outcome) for outcome in outcomes]
    together = store.record_outcomes(batched, outcomes)
    assert together == one_by_one
    assert [(o.new, o.retry_attempt) for o in together] == [(True, 1), (True, None), (False, 1), (True, 2), (True, None),
                                                            (True, None)]
    assert store.counts(batched.run) == store.counts(alone.run)
    assert store.word_sets(batched.run) == store.word_sets(alone.run)
    assert store.leases.of_run(batched.run) == store.leases.of_run(alone.run) == {}  # every attempt has its outcome
    # the dropped one never ran: it is issued again (its next attempt number)
    assert store.issue_shortfall(batched) == store.issue_shortfall(alone) == [("pear", 1)]


def test_concurrent_creates_of_one_run_all_see_it_whole(farm_state: FarmState) -> None:
    """Many enqueues of one config at once: each gets the run, none a half-written meta."""
    from concurrent.futures import ThreadPoolExecutor

    config = make_config("concurrent")
    run = f"{config.name}-{config.config_hash()[:8]}"
    store = farm_state.store

    def create(_: int) -> str:
        from convfarm.runstate import RunStore

        return RunStore(farm_state.client).create(run, config, "out").out_dir

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(create, range(200))) == {"out"}
    assert store.list_runs() == [run]


def test_a_run_half_written_by_a_killed_enqueue_is_completed_not_wedged(farm_state: FarmState) -> None:
    from convfarm.runstate import RunKeys

    config = make_config("wedged")
    run = f"{config.name}-{config.config_hash()[:8]}"
    farm_state.client.hset(RunKeys(run).meta, "config", config.canonical_json())  # killed after its first write
    info = farm_state.store.create(run, config, "out")
    assert (info.out_dir, info.status, info.total_words) == ("out", "active", len(config.words))
    assert run in farm_state.store.list_runs()  # purge and `producer runs` see it


def test_a_big_per_word_is_issued_in_chunks_none_holding_redis_long(farm_state: FarmState,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """No single script call issues more than ISSUE_PER_CALL attempts; all of them are issued."""
    from convfarm.runstate import store as store_module

    config = make_config("chunks", words=["bridge", "leaf", "pocket"], per_word=2_500)
    info = farm_state.create_run(config, issue=False)
    store = farm_state.store
    sizes: list[int] = []
    real = store._issue.__class__.__call__

    def counting(script, keys, args):
        reply = real(script, keys, args)
        sizes.append(sum(int(n) for n in reply[1::2]))
        return reply

    monkeypatch.setattr(store._issue.__class__, "__call__", counting)
    tasks = store.issue_shortfall(info)
    assert len(tasks) == 3 * 2_500 and len(set(tasks)) == len(tasks)
    assert max(sizes) <= store_module.ISSUE_PER_CALL and len(sizes) > 3
    assert store.issue_shortfall(info) == []  # nothing missing now


# Deferred writes (convfarm/runstate/_floor.lua): a script's per-member writes sent as one call per
# command and key at its end must leave Redis exactly as writing each at once does, in any order of
# adds and removes of one member, and past the 2,000-pair chunk of one call.
DEFERRED_CASES = [
    ("add then remove one member", [("ZADD", "m", 1), ("ZREM", "m"), ("ZADD", "n", 2)]),
    ("remove then add again", [("ZADD", "m", 1), ("ZREM", "m"), ("ZADD", "m", 3), ("ZREM", "m"), ("ZADD", "m", 4)]),
    ("a member written twice keeps the last score", [("ZADD", "m", 1), ("ZADD", "m", 5)]),
    ("hash fields set and deleted", [("HSET", "f", "a"), ("HDEL", "f"), ("HSET", "g", "b"), ("HSET", "f", "c")]),
    ("more than one call's chunk", [("ZADD", f"m{i}", i) for i in range(4500)] + [("ZREM", "m7")]),
]


@pytest.mark.parametrize("ops", [ops for _, ops in DEFERRED_CASES], ids=[name for name, _ in DEFERRED_CASES])
def test_deferred_writes_leave_what_writing_at_once_leaves(farm_state: FarmState, ops: list[tuple]) -> None:
    from convfarm.runstate.scripts import _PRELUDE, _SINGLE

    body = """
for i = 1, #ARGV - 1, 3 do
  local cmd, member, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = (cmd == 'ZADD' or cmd == 'ZREM') and KEYS[1] or KEYS[2]
  local args = ({ZADD = {value, member}, ZREM = {member}, HSET = {member, value}, HDEL = {member}})[cmd]
  if ARGV[#ARGV] == 'defer' then defer(cmd, key, member, args) else redis.call(cmd, key, unpack(args)) end
end
"""
    client = farm_state.client
    flat = [x for cmd, member, *value in ops for x in (cmd, member, value[0] if value else "")]
    script = client.register_script(_SINGLE % (_PRELUDE, body))
    seen = []
    for mode, keys in (("defer", ["t:z1", "t:h1"]), ("now", ["t:z2", "t:h2"])):
        script(keys=keys, args=[*flat, mode])
        seen.append((client.zrange(keys[0], 0, -1, withscores=True), client.hgetall(keys[1])))
    client.delete("t:z1", "t:h1", "t:z2", "t:h2")
    assert seen[0] == seen[1]
    assert seen[0] != ([], {})
