"""Duplicate detection: exact and near-duplicate, across collectors and a collector crash."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from convfarm.config import parse_config
from convfarm.judging import rules_stamp
from convfarm.messages import RESULTS_STREAM, ConversationRecord, ModelIdentity, TokenCounts, Turn, record_id
from convfarm.runstate import RunStore, run_id_for
from tests.conftest import EXAMPLE, farm_env, producer, start_worker, wait_for, write_config
from tests.runfiles import leftovers, records, run_of, status_of
from workers.collector import Collector
from workers.dedup import BUCKET_CAP, Deduplicator, band_layout, content_hash

TEACHING = ("A bridge is a structure that carries a road or a railway over a river, a valley or another road. "
            "Engineers build it from steel, concrete or stone, and they check how much weight it can carry "
            "before anyone is allowed to cross it with a heavy truck.")


def conversation(record_id: str, answer: str, word: str = "bridge") -> ConversationRecord:
    return ConversationRecord(
        id=record_id, run="dedup-unit", word=word, attempt=0, status="accepted",
        turns=[Turn(speaker="STUDENT", text=f"What does {word} mean?"), Turn(speaker="TEACHER", text=answer)],
        model=ModelIdentity(name="m", file="m.gguf", sha256="x", size=1), params={}, seed=1, worker="w",
        tokens=TokenCounts(), generation_seconds=0.0,
    )


def unit_config(threshold: float | None = 0.7):
    import json

    data = json.loads(EXAMPLE.read_text())
    return parse_config({**data, "near_dup_threshold": threshold})[0]


@pytest.mark.fast
def test_exact_and_near_duplicates_are_found_across_collectors(rclient: redis.Redis) -> None:
    """Two collectors (two Deduplicators) share one run's state in Redis."""
    run = f"dedup-unit-{time.time_ns()}"
    config = unit_config()
    first, second = Deduplicator(rclient), Deduplicator(rclient)
    original = conversation("a", TEACHING)
    assert first.judge(run, config, [original])[0].reason is None

    shouting = conversation("b", TEACHING.upper().replace(" ", "  "))  # case and spacing do not make text new
    reworded = conversation("c", TEACHING.replace("heavy truck", "big lorry"))
    unrelated = conversation("d", "A leaf is the flat green part of a plant that turns sunlight into food.", "leaf")
    verdicts = second.judge(run, config, [shouting, reworded, unrelated])
    assert [(v.reason, v.duplicate_of) for v in verdicts] == [("duplicate", "a"), ("near_duplicate", "a"), (None, None)]

    # a result delivered twice (a collector crashed before acknowledging it) keeps its verdict
    assert first.judge(run, config, [original])[0].reason is None
    assert second.judge(run, config, [unrelated])[0].reason is None


@pytest.mark.fast
def test_near_duplicate_detection_follows_the_configured_threshold(rclient: redis.Redis) -> None:
    run = f"dedup-threshold-{time.time_ns()}"
    text = TEACHING
    changed = " ".join(w if i % 6 else "x" + w for i, w in enumerate(text.split()))  # every 6th word altered
    dedup = Deduplicator(rclient)
    assert dedup.judge(run, unit_config(0.9), [conversation("a", text), conversation("b", changed)])[1].reason is None
    run = f"dedup-threshold-{time.time_ns()}"
    assert dedup.judge(run, unit_config(0.3), [conversation("a", text), conversation("b", changed)])[1].reason == \
        "near_duplicate"
    run = f"dedup-threshold-{time.time_ns()}"
    exact_only = dedup.judge(run, unit_config(None), [conversation("a", text), conversation("b", changed),
                                                      conversation("c", text)])
    assert [v.reason for v in exact_only] == [None, None, "duplicate"]


@pytest.mark.fast
def test_the_window_forgets_the_oldest_kept_records_and_only_them(rclient: redis.Redis) -> None:
    """With a window of 3, copies of the last 3 kept records are caught (exact and near), a copy of
    an older one is kept; a redelivered record keeps its verdict and joins the window once."""
    run = f"dedup-window-{time.time_ns()}"
    config = unit_config()
    dedup = Deduplicator(rclient, window=3)
    texts = [f"{TEACHING} Story number {i}: " + " ".join(f"w{i}x{j}" for j in range(30)) for i in range(5)]
    assert [v.reason for v in dedup.judge(run, config, [conversation(f"r{i}", t) for i, t in enumerate(texts)])] == \
        [None] * 5
    copies = [conversation("c4", texts[4].upper()), conversation("n3", texts[3] + " again"),
              conversation("c0", texts[0]), conversation("c1", texts[1])]
    assert [(v.reason, v.duplicate_of) for v in dedup.judge(run, config, copies)] == \
        [("duplicate", "r4"), ("near_duplicate", "r3"), (None, None), (None, None)]  # r0, r1 left the window
    assert dedup.judge(run, config, [conversation("c1", texts[1])])[0].reason is None  # c1 delivered again
    content, minhash, lsh, kept = dedup.index_keys(run)
    assert [e.split()[0] for e in map(bytes.decode, rclient.lrange(kept, 0, -1))] == ["r4", "c0", "c1"]
    assert rclient.hlen(content) == rclient.hlen(minhash) == 3
    bands, _ = band_layout(config.near_dup_threshold, config.near_dup_num_perm)
    members = [m for v in rclient.hvals(lsh) for m in v.split()]
    assert sorted(set(members)) == [b"c0", b"c1", b"r4"] and len(members) == 3 * bands


@pytest.mark.fast
def test_the_collector_rechecks_only_records_judged_by_other_rules(rclient: redis.Redis, tmp_path: Path) -> None:
    """A record stamped with the collector's own rules version and config was judged by the same
    rules: not judged again. One from another rules version, or unstamped, is re-checked."""
    config = unit_config()
    config = config.model_copy(update={"name": f"recheck{time.time_ns()}", "words": ["bridge", "leaf", "river"],
                                       "exclude": ["truck"]})
    config, _ = parse_config(config.model_dump(mode="json"))
    run = run_id_for(config)
    store = RunStore(rclient)
    store.create(run, config, str(tmp_path))
    store.issue_shortfall(store.get(run))

    def record(word: str, stamp: str | None) -> ConversationRecord:
        r = conversation(f"{word}-{stamp}", TEACHING.replace("bridge", word), word)  # says "truck": excluded
        # the collector's door checks the id against run, word and attempt
        return r.model_copy(update={"run": run, "rules_version": stamp, "id": record_id(run, word, r.attempt)})

    ours, older, unstamped = record("bridge", rules_stamp(config)), record("leaf", "0:older"), record("river", None)
    for r in (ours, older, unstamped):
        rclient.xadd(RESULTS_STREAM, {"record": r.to_json()})
    collector = Collector(rclient, "recheck", lambda *_: None, out_root=tmp_path)
    collector.ensure_group()
    while entries := collector.read(">", None):
        collector.process(entries)
    collector.finish_run(collector.runs[run])
    by_word = {r["word"]: r for r in records(tmp_path / run, "conversations") + records(tmp_path / run, "rejected")}
    assert by_word["bridge"]["status"] == "accepted"  # trusted: the worker ran these very rules
    assert (by_word["leaf"]["status"], by_word["leaf"]["reason"]) == ("rejected", "excluded")
    assert (by_word["river"]["status"], by_word["river"]["reason"]) == ("rejected", "excluded")


@pytest.mark.fast
def test_concurrent_collectors_keep_one_copy(rclient: redis.Redis) -> None:
    """The verdict is one atomic Redis script: copies judged at the same moment keep exactly one."""
    run = f"dedup-race-{time.time_ns()}"
    config = unit_config()
    barrier = threading.Barrier(8, timeout=60)

    def judge(i: int) -> bool:
        record = conversation(f"r{i}", TEACHING if i % 2 else TEACHING.replace("steel", "iron"))
        barrier.wait()
        return Deduplicator(redis.Redis(connection_pool=rclient.connection_pool)).judge(run, config, [record])[0].reason is None

    # a pool re-raises a thread's exception in result(): a crashed judge fails the test, not a warning
    with ThreadPoolExecutor(max_workers=8) as pool:
        verdicts = [future.result(timeout=120) for future in [pool.submit(judge, i) for i in range(8)]]
    assert len(verdicts) == 8 and sum(verdicts) == 1


def test_identical_text_is_rejected_as_duplicate_through_a_collector_crash(redis_url: str, tmp_path: Path,
                                                                           rclient: redis.Redis) -> None:
    """Greedy decoding (temperature 0) repeats itself: a word's second conversation is an exact copy
    of its first, and 'leaf!' gets nearly the conversation 'leaf' got (a near copy). The collector is
    SIGKILLed mid-run and restarted; afterwards every record is written once and every kept
    conversation is unique."""
    out = tmp_path / "out"
    # one attempt at a time: results keep arriving after the kill, and greedy repeats are exact
    env = farm_env(redis_url, out, CONVFARM_BATCH_SIZE="1")
    prompt = ['A student and a teacher talk about the word "{word}".', 'STUDENT: Do you know the word "{word}"?', "TEACHER:"]
    words = ["bridge", "leaf", "leaf!"]
    config = write_config(tmp_path / "dups.json", name="dups", prompt_lines=prompt, words=words, temperature=0.0,
                          max_tokens=24, per_word=2, max_attempts=1, near_dup_threshold=0.6)
    run = run_of(config)
    collector = start_worker(env, tmp_path / "logs", "collector-dedup", collector=True)
    generator = start_worker(env, tmp_path / "logs", "gen-dedup")
    try:
        assert producer("enqueue", str(config), env=env).returncode == 0
        counts = RunStore(rclient).counts
        wait_for(lambda: counts(run).accepted + counts(run).rejected >= 2, 180, "the first results")
        collector.kill()
        assert counts(run).accepted + counts(run).rejected < 2 * len(words), "the kill came after the last result"
        time.sleep(2)  # results keep arriving while no collector runs
        collector = start_worker(env, tmp_path / "logs", "collector-dedup", collector=True)  # same name, same pending list
        wait_for(lambda: status_of(rclient, run) == "complete", 240, "the run to complete")
    finally:
        generator.stop()
        collector.stop()
    kept = records(out / run, "conversations")
    dropped = records(out / run, "rejected")
    everything = kept + dropped
    assert sorted((r["word"], r["attempt"]) for r in everything) == sorted((w, a) for w in words for a in (0, 1))
    assert len({r["id"] for r in everything}) == len(everything)  # nothing written twice
    assert leftovers(out / run) == []  # no half-written shard
    hashes = [content_hash([Turn(**t) for t in r["turns"]]) for r in kept]
    assert len(set(hashes)) == len(hashes)

    by_id = {r["id"]: r for r in kept}
    exact = [r for r in dropped if r["reason"] == "duplicate"]
    near = [r for r in dropped if r["reason"] == "near_duplicate"]
    assert exact and near, [(r["word"], r["reason"]) for r in dropped]
    for record in exact:
        original = by_id[record["duplicate_of"]]
        assert content_hash([Turn(**t) for t in record["turns"]]) == content_hash([Turn(**t) for t in original["turns"]])
    for record in near:
        original = by_id[record["duplicate_of"]]  # always a kept record
        assert original["turns"] != record["turns"]
    status = producer("status", run, "--json", env=env)
    assert '"near_duplicate"' in status.stdout and '"duplicate"' in status.stdout


def test_a_full_bucket_takes_no_more_members_but_its_members_are_still_found(rclient: redis.Redis) -> None:
    """Boilerplate shared by many conversations fills a bucket: past BUCKET_CAP members nobody is
    added to it (memory stays bounded), and a near copy of a member is still found through it.
    Signatures and band hashes are made up here so that every record shares band 0 and nothing else."""
    run = f"dedup-bucket-{time.time_ns()}"
    dedup = Deduplicator(rclient)
    keys = dedup.index_keys(run)
    num_perm, needed, bands = 128, 102, 9
    rng = random.Random(5)

    def args(index: int, signature: bytes) -> list[bytes | str]:
        band_hashes = b"shared!!" + bytes(rng.randrange(256) for _ in range(8 * (bands - 1)))
        return [f"r{index}", f"hash{index}", signature, band_hashes]

    signatures = [bytes(rng.randrange(256) for _ in range(4 * num_perm)) for _ in range(BUCKET_CAP + 6)]
    flat: list[bytes | str | int] = [needed, num_perm, 8, 0]  # band width 8, no window
    for index, signature in enumerate(signatures):
        flat += args(index, signature)
    reply = dedup._judge(keys=keys, args=flat)
    assert reply[::2] == [b"unique"] * len(signatures)  # unrelated texts that happen to share one band
    members = rclient.hget(keys[2], b"0:shared!!").split()
    assert members == [f"r{i}".encode() for i in range(BUCKET_CAP)]
    near = bytearray(signatures[3])
    near[:4] = b"\0\0\0\0"  # agrees with r3 in 127 of 128 positions
    reply = dedup._judge(keys=keys, args=[needed, num_perm, 8, 0, *args(999, bytes(near))])
    assert reply == [b"near_duplicate", b"r3"]
