"""The collector's failure paths, in process on the session's real Redis.

A fault is injected at each step of a batch — before and after the shard append (which
fsyncs), the fsync itself, the ``committed`` write, the outcome scripts, the ack — and the
run must still end with every record written exactly once. Also: malformed entries, an
unknown run, Redis back without the consumer group (and without its last writes), and a
second collector taking over a dead one's pending entries.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest
import redis

from convfarm.messages import COLLECTOR_GROUP, RESULTS_STREAM
from convfarm.rundir import shards as shards_module
from convfarm.rundir.shards import ShardSet
from convfarm.runstate import RunInfo
from tests.conftest import wait_for
from tests.inprocess import WORDS, FailingPipeline, FarmState, Fault, make_config, make_record, pending, push, unread
from workers.collector import Collector

pytestmark = pytest.mark.fast


def first_attempts(info: RunInfo) -> list:
    return [make_record(info.run, word, 0) for word in WORDS]


def wait_done(state: FarmState, info: RunInfo, timeout: float = 30) -> None:
    client = state.client
    wait_for(lambda: state.store.status(info.run) == "complete" and pending(client) == 0 and unread(client) == 0,
             timeout, "the run to complete with every result acknowledged")


def assert_exactly_once(state: FarmState, info: RunInfo, expected: int) -> None:
    ids = state.ids(info)
    assert len(ids) == len(set(ids)), f"records written twice: {len(ids) - len(set(ids))}"
    assert len(ids) == expected
    counts = state.store.counts(info.run)
    assert counts.accepted + counts.rejected == expected
    assert state.store.redis.hlen(f"convfarm:run:{info.run}:committed") == expected


# Each injector returns the Fault it installed on the collector (or a class it uses).
Injector = Callable[[Collector], Fault]

FAULTS: dict[str, Injector] = {
    "before the committed check": lambda c: Fault(c.store, "claim_records").install(),
    "before the append": lambda c: Fault(ShardSet, "append_kinds").install(),
    "after the append (fsync'd)": lambda c: Fault(ShardSet, "append_kinds", when="after").install(),
    "in the fsync": lambda c: file_fsync_fault(),
    "before the committed write": lambda c: Fault(c.store, "confirm_records").install(),
    "after the committed write": lambda c: Fault(c.store, "confirm_records", when="after").install(),
    "before the outcomes": lambda c: Fault(c.store, "record_outcomes").install(),
    "after the outcomes": lambda c: Fault(c.store, "record_outcomes", when="after").install(),
    "a timeout in the outcomes": lambda c: Fault(c.store, "record_outcomes", exc=lambda: redis.TimeoutError("t/o")).install(),
}


def file_fsync_fault() -> Fault:
    """The fsync of a batch's file fails once (EIO); the fsyncs of new directories' entries, made when the
    run is opened, pass (convfarm/rundir/files.py, make_dirs)."""
    import stat

    fault = Fault(shards_module.os, "fsync", exc=lambda: OSError(5, "injected EIO"))
    real = shards_module.os.fsync
    fault.install()
    wrapped = shards_module.os.fsync
    shards_module.os.fsync = lambda fd: (wrapped if stat.S_ISREG(shards_module.os.fstat(fd).st_mode) else real)(fd)
    return fault


def fail_ack(collector: Collector) -> Fault:
    """The XACK/XDEL pipeline ran in Redis, but its reply was lost."""
    fault = Fault(collector.consumer, "redis")  # only used for bookkeeping: fired/times
    real = collector.consumer.redis
    pipeline = real.pipeline

    class Client:
        def __getattr__(self, name: str):
            return getattr(real, name)

        def pipeline(self, *args, **kwargs):
            return FailingPipeline(real, fault) if not args and not kwargs else pipeline(*args, **kwargs)

    fault.original = real
    collector.consumer.redis = Client()  # type: ignore[assignment]
    return fault


FAULTS["after the ack"] = fail_ack


@pytest.mark.parametrize("where", list(FAULTS))
def test_a_fault_at_any_step_of_a_batch_writes_each_record_once(farm_state: FarmState, where: str) -> None:
    info = farm_state.create_run()
    push(farm_state.client, first_attempts(info))
    collector = farm_state.collector()
    fault = FAULTS[where](collector)
    try:
        farm_state.start(collector)
        wait_done(farm_state, info)
    finally:
        fault.remove()
    assert fault.fired == 1, "the fault was never reached"
    assert_exactly_once(farm_state, info, len(WORDS))


def test_malformed_entries_and_unknown_runs_are_dropped_and_acknowledged(farm_state: FarmState) -> None:
    info = farm_state.create_run()
    client = farm_state.client
    client.xadd(RESULTS_STREAM, {"record": b"{not json"})
    client.xadd(RESULTS_STREAM, {"something": b"else"})
    push(client, [make_record("no-such-run", "leaf", 0)])
    push(client, first_attempts(info))
    farm_state.start(farm_state.collector())
    wait_done(farm_state, info)
    assert_exactly_once(farm_state, info, len(WORDS))
    assert not (farm_state.out_root / "no-such-run").exists()


def test_redis_back_without_the_group_or_its_last_writes_writes_no_duplicate(farm_state: FarmState) -> None:
    """A restarted Redis lost the consumer group and the ``committed`` ids of the last batch,
    and the results are delivered again: the open shard is the truth."""
    info = farm_state.create_run(make_config(per_word=2))  # the run stays open after one record per word
    client = farm_state.client
    records = first_attempts(info)
    push(client, records)
    farm_state.start(farm_state.collector())
    wait_for(lambda: len(farm_state.ids(info)) == len(WORDS) and pending(client) == 0, 20, "the first batch")
    client.xgroup_destroy(RESULTS_STREAM, COLLECTOR_GROUP)
    client.delete(f"convfarm:run:{info.run}:committed")
    push(client, records)  # redelivered
    wait_for(lambda: unread(client) == 0, 20, "the redelivered results to be consumed")
    ids = farm_state.ids(info)
    assert sorted(ids) == sorted(r.id for r in records)


def test_a_second_collector_takes_over_a_dead_ones_pending_results(farm_state: FarmState) -> None:
    info = farm_state.create_run()
    client = farm_state.client
    push(client, first_attempts(info))
    dead = farm_state.collector("dead")
    dead.ensure_group()
    assert len(dead.read(">", None)) == len(WORDS)  # read, then it died before writing anything
    assert pending(client) == len(WORDS)
    farm_state.start(farm_state.collector("heir", claim_idle_ms=200))
    wait_done(farm_state, info)
    assert_exactly_once(farm_state, info, len(WORDS))
    consumers = {c["name"]: c["pending"] for c in client.xinfo_consumers(RESULTS_STREAM, COLLECTOR_GROUP)}
    assert consumers.get(b"dead", consumers.get("dead")) == 0


def test_the_claim_idle_time_is_a_setting(monkeypatch: pytest.MonkeyPatch, farm_state: FarmState) -> None:
    from convfarm.settings import get_settings

    monkeypatch.setenv("CONVFARM_CLAIM_IDLE_SECONDS", "0.25")
    get_settings.cache_clear()
    try:
        collector = Collector(farm_state.client, "c", lambda *a: None, out_root=farm_state.out_root)
        assert collector.consumer.claim_idle_ms == 250
    finally:
        monkeypatch.delenv("CONVFARM_CLAIM_IDLE_SECONDS")
        get_settings.cache_clear()


def test_two_collectors_end_a_forever_round_once(farm_state: FarmState) -> None:
    """Both see the round end at once: the target rises by per_word once and each word's
    next attempt is sent once."""
    info = farm_state.create_run(make_config(per_word=1))
    store = farm_state.store
    store.set_forever(info.run, True)
    store.record_outcomes(info, [(w, 0, "accepted", None) for w in WORDS])
    collectors = [farm_state.collector(name) for name in ("a", "b")]
    handles = [c.handle(info.run) for c in collectors]
    barrier = threading.Barrier(2)

    def end(collector: Collector, handle) -> None:
        barrier.wait()
        collector.end_of_round(handle)

    threads = [threading.Thread(target=end, args=pair) for pair in zip(collectors, handles, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    meta = store.meta(info.run, "round", "target")
    assert meta == {"round": "2", "target": "2"}
    assert sorted(farm_state.sent) == sorted((info.run, w, 1) for w in WORDS)


def test_a_torn_character_at_the_end_of_the_open_shard_does_not_stall_the_run(farm_state: FarmState) -> None:
    """A crash mid-write left half a UTF-8 character: the restarted collector cuts it and goes on."""
    info = farm_state.create_run()
    records = first_attempts(info)
    directory = farm_state.run_dir(info)
    directory.mkdir(parents=True)
    (directory / ".open-conversations-c1.jsonl").write_bytes(
        (records[0].to_json() + "\n").encode() + '{"id": "torn", "raw": "caf\u00e9'.encode()[:-1])
    farm_state.store.mark_committed(info.run, {records[0].id: "accepted"})
    push(farm_state.client, records)  # the first is a redelivery of the record on disk
    farm_state.start(farm_state.collector("c1"))
    wait_done(farm_state, info, timeout=20)
    assert sorted(farm_state.ids(info)) == sorted(r.id for r in records)


def test_a_record_is_written_as_its_worker_sent_it_unless_the_collector_changed_it(farm_state: FarmState) -> None:
    """A record from a worker on the collector's rules, kept as it came, goes to the shard byte for
    byte as the worker sent it (not serialised again); a record the collector rejects (here an exact
    copy) or one from other rules is written as the collector now sees it."""
    from convfarm.judging import rules_stamp

    config = make_config(words=["leaf", "room", "pear"], near_dup_threshold=0.8, max_attempts=1)
    info = farm_state.create_run(config)
    stamp = rules_stamp(config)
    leaf = make_record(info.run, "leaf", 0).model_copy(update={"rules_version": stamp})
    copy = make_record(info.run, "room", 0).model_copy(update={"rules_version": stamp, "turns": leaf.turns})
    other_rules = make_record(info.run, "pear", 0).model_copy(update={"rules_version": "0:older"})
    sent = [r.to_json().replace('"seed":', '"seed" :') for r in (leaf, copy, other_rules)]  # as another encoder spaces it
    for line in sent:
        farm_state.client.xadd(RESULTS_STREAM, {"record": line})
    farm_state.start(farm_state.collector())
    wait_for(lambda: farm_state.store.status(info.run) == "complete", 30, "the run to complete")
    lines = [line for path in sorted(farm_state.run_dir(info).glob("*.jsonl")) for line in path.read_text().splitlines()]
    assert sent[0] in lines  # kept as it came
    written = {json.loads(line)["word"]: (line, json.loads(line)) for line in lines}
    assert written["room"][1]["status"] == "rejected" and written["room"][1]["reason"] == "duplicate"
    assert written["room"][1]["duplicate_of"] == leaf.id and written["room"][0] != sent[1]
    assert written["pear"][0] != sent[2] and written["pear"][1]["status"] == "accepted"  # serialised by the collector
