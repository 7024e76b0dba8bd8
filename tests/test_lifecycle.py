"""Run lifecycle on real parts: quotas, idempotent resume, cancel, forever mode, dead letters, skip_covered.

One collector and one generation worker (real `celery -A workers worker` processes, the
bundled model) serve the whole module; max_tokens stays small to keep runs short.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from convfarm.model_files import resolve_model
from convfarm.runstate import RunStore, run_key
from tests.conftest import REPO, no_broker_env, producer, start_worker, wait_for, write_config
from tests.runfiles import accepted_per_word, in_flight, leftovers, records, run_of, sent, status_of

# skip_covered drops a word's attempt when other conversations covered it *before* it starts: a
# worker decoding one conversation at a time makes that order repeatable (a batched worker starts
# up to CONVFARM_BATCH_SIZE attempts together, before any coverage is known; docs/run-lifecycle.md)
FARM_ENV = {"CONVFARM_BATCH_SIZE": "1"}


def test_quota_is_met_exactly_and_reenqueue_sends_only_the_shortfall(farm: dict, tmp_path: Path,
                                                                      rclient: redis.Redis) -> None:
    env, out = farm["env"], farm["out"]
    words = ["bridge", "leaf", "pocket", "camera", "village"]
    config = write_config(tmp_path / "quota.json", name="quota", max_tokens=48, per_word=3, max_attempts=5, words=words)
    run = run_of(config)
    first = producer("enqueue", str(config), env=env)
    assert first.returncode == 0, first.stderr
    assert sent(first.stdout) == 15  # 3 per word

    # interrupt the run half way: queued tasks are dropped, what ran is kept
    wait_for(lambda: RunStore(rclient).counts(run).accepted >= 2, 180, "the first accepted conversations")
    cancelled = producer("cancel", run, env=env)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    wait_for(lambda: in_flight(rclient, run) == 0, 120, "queued tasks to be dropped")
    assert status_of(rclient, run) == "cancelled"
    have = accepted_per_word(out / run)
    shortfall = sum(3 - have[w] for w in words)
    assert 0 < shortfall < 15

    # resuming sends exactly what is missing ...
    resumed = producer("enqueue", str(config), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert sent(resumed.stdout) == shortfall
    wait_for(lambda: status_of(rclient, run) == "complete", 300, "the run to complete")

    # ... and every word ends with exactly its quota of accepted conversations, each written once
    assert accepted_per_word(out / run) == {w: 3 for w in words}
    every = records(out / run, "conversations") + records(out / run, "rejected")
    assert len({r["id"] for r in every}) == len(every)
    manifest = json.loads((out / run / "manifest.json").read_text())
    assert manifest["counts"]["accepted"] == 15 and manifest["words"]["short"] == []
    assert leftovers(out / run) == []

    # a finished run has nothing missing
    again = producer("enqueue", str(config), env=env)
    assert again.returncode == 0 and sent(again.stdout) == 0, again.stdout


def test_forever_keeps_producing_until_cancelled(farm: dict, tmp_path: Path, rclient: redis.Redis) -> None:
    env, out = farm["env"], farm["out"]
    config = write_config(tmp_path / "forever.json", name="forever", max_tokens=32, words=["leaf", "room"])
    run = run_of(config)
    waiter = subprocess.Popen([sys.executable, "-m", "producer.cli", "enqueue", str(config), "--forever", "--wait"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # the per-word target rises round after round, and output appears while it goes on
        wait_for(lambda: int(rclient.hget(run_key(run), "round") or 0) >= 3, 300, "a third round")
        wait_for(lambda: len(list((out / run).glob("conversations-*.jsonl"))) >= 2, 120, "rotated shards")
        assert waiter.poll() is None, "--wait must keep waiting while a forever run goes on"
        assert int(rclient.hget(run_key(run), "target")) >= 3

        cancelled = producer("cancel", run, env=env)
        assert cancelled.returncode == 0, cancelled.stderr
        output, _ = waiter.communicate(timeout=60)  # --wait stops waiting
        assert waiter.returncode == 0 and "cancelled" in output, output
    finally:
        if waiter.poll() is None:
            waiter.kill()
    wait_for(lambda: in_flight(rclient, run) == 0, 120, "the last task to finish or be dropped")
    issued = rclient.hgetall(run_key(run, "issued"))
    round_at_end = rclient.hget(run_key(run), "round")
    wait_for(lambda: not list((out / run).glob(".open-*")), 30, "the open shards to be sealed")
    status = json.loads(producer("status", run, "--json", env=env).stdout)
    assert status["status"] == "cancelled" and status["forever"] is True
    assert status["conversations"]["accepted"] == len(records(out / run, "conversations")) >= 2
    # nothing more is issued after a cancel, and the state stays readable
    assert rclient.hgetall(run_key(run, "issued")) == issued and rclient.hget(run_key(run), "round") == round_at_end


def test_a_failing_task_is_dead_lettered_and_retried(farm: dict, tmp_path: Path, rclient: redis.Redis) -> None:
    """A corrupt GGUF makes every delivery raise: the attempt ends in the dead-letter list; after
    the file is fixed, `dlq --retry` runs the word again."""
    env, out = {**farm["env"], "CONVFARM_MAX_DELIVERIES": "2"}, farm["out"]
    model = tmp_path / "broken.gguf"
    model.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64 + b"not a model" * 100)
    config = write_config(tmp_path / "dlq.json", name="dlq", model=str(model), max_tokens=32, max_attempts=1,
                          words=["bridge"])
    run = run_of(config)
    worker = start_worker(env, tmp_path / "logs", "gen-broken", queue="convfarm.gen.broken")
    try:
        assert producer("enqueue", str(config), env=env).returncode == 0
        wait_for(lambda: status_of(rclient, run) == "complete", 120, "the run to give up on its word")
        listed = producer("dlq", run, "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        (letter,) = json.loads(listed.stdout)
        assert letter["word"] == "bridge" and letter["attempt"] == 0 and "Failed to load model" in letter["error"]
        assert int(rclient.hget(run_key(run, "deliveries"), "bridge\x1f0")) == 2  # counted outside the message
        (failed,) = records(out / run, "rejected")
        assert failed["reason"] == "generation_failed"
        status = json.loads(producer("status", run, "--json", env=env).stdout)
        assert status["words"]["dead_lettered"] == 1 and status["words"]["short"] == 1 and status["dead_letters"] == 1

        model.unlink()
        shutil.copyfile(resolve_model("smollm2-135m"), model)  # the operator fixes the model file
        retried = producer("dlq", run, "--retry", env=env)
        assert retried.returncode == 0 and "re-enqueued 1 attempt" in retried.stdout, retried.stdout + retried.stderr
        wait_for(lambda: len(records(out / run, "conversations") + records(out / run, "rejected")) == 2, 180,
                 "the retried attempt's record")
        retry_record = next(r for r in records(out / run, "conversations") + records(out / run, "rejected") if r["attempt"] == 1)
        assert retry_record["reason"] != "generation_failed" and retry_record["model"]["sha256"]
        wait_for(lambda: status_of(rclient, run) == "complete", 60, "the run to complete again")
        assert json.loads(producer("dlq", run, "--json", env=env).stdout) == []
    finally:
        worker.stop()


def test_skip_covered_drops_words_other_conversations_mention(farm: dict, tmp_path: Path, rclient: redis.Redis) -> None:
    """Seed behaviour (opt-in): 'technology' and 'pictures' appear in the conversations of 'bridge'
    and 'camera' (greedy decoding makes that repeatable), so they are not generated themselves."""
    env, out = farm["env"], farm["out"]
    words = ["bridge", "camera", "leaf", "technology", "pictures"]
    config = write_config(tmp_path / "covered.json", name="covered", max_tokens=48, temperature=0.0, max_attempts=1,
                          skip_covered=True, words=words)
    run = run_of(config)
    assert producer("enqueue", str(config), env=env).returncode == 0
    wait_for(lambda: status_of(rclient, run) == "complete", 180, "the run to complete")
    written = {r["word"] for r in records(out / run, "conversations") + records(out / run, "rejected")}
    mentioned = " ".join(t["text"] for r in records(out / run, "conversations") for t in r["turns"][1:]).casefold()
    covered = {w for w in ("technology", "pictures") if w in mentioned}
    assert covered, f"the model no longer mentions the covered words: {mentioned!r}"
    assert not covered & written  # covered words were dropped, not generated
    store = RunStore(rclient)
    assert store.words_done(run) == len(words) and not store.short_words(run)
    # a covered word's task may still be queued when the run completes: a worker drops it when it comes up
    wait_for(lambda: in_flight(rclient, run) == 0, 60, "the covered words' tasks to be dropped")
    assert store.counts(run).dropped == len(covered)


def test_lifecycle_commands_reject_unknown_runs_in_one_line(farm: dict) -> None:
    for args in (("status", "no-such-run"), ("cancel", "no-such-run"), ("dlq", "no-such-run", "--retry")):
        result = producer(*args, env=farm["env"])
        assert result.returncode == 2, result.stdout + result.stderr
        assert "no run 'no-such-run'" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_runs_lists_newest_first(farm: dict, tmp_path: Path) -> None:
    env = {**os.environ, **farm["env"]}
    config = write_config(tmp_path / "listed.json", name="listed", max_tokens=16, words=["leaf"])
    assert producer("enqueue", str(config), env=env).returncode == 0
    listed = producer("runs", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert rows[0]["run"] == run_of(config) and rows[0]["words"] == 1


def _run_with_keys(rclient: redis.Redis, tmp_path: Path, name: str) -> str:
    from convfarm.config import load_config
    from convfarm.runstate import RunStore, run_id_for, run_key

    config, _ = load_config(write_config(tmp_path / f"{name}.json", name=name, words=["leaf", "room"]))
    store = RunStore(rclient)
    run = store.create(run_id_for(config), config, str(tmp_path / "out")).run
    store.issue_shortfall(store.get(run))
    rclient.hset(run_key(run, "content"), "h", "id")  # dedup's keys share the run's prefix
    return run


def test_purge_deletes_every_key_of_a_finished_run_and_nothing_else(tmp_path: Path, redis_url: str,
                                                                    rclient: redis.Redis) -> None:
    from convfarm.runstate import RunStore

    store = RunStore(rclient)
    run = _run_with_keys(rclient, tmp_path, "purgeme")
    other = _run_with_keys(rclient, tmp_path, "purgeme-too")  # its id starts like the other's
    keys, other_keys = store.run_keys(run), store.run_keys(other)
    assert len(keys) >= 3 and not set(keys) & set(other_keys)
    env = {**os.environ, "CONVFARM_BROKER_URL": redis_url}
    active = producer("purge", run, env=env)
    assert active.returncode == 2 and "producer cancel" in active.stderr and store.run_keys(run) == keys
    store.set_status(run, "complete")
    dry = producer("purge", run, "--dry-run", env=env)
    assert dry.returncode == 0 and all(k in dry.stdout for k in keys) and store.run_keys(run) == keys
    done = producer("purge", run, env=env)
    assert done.returncode == 0, done.stderr
    assert store.run_keys(run) == [] and run not in store.list_runs()
    assert store.run_keys(other) == other_keys and other in store.list_runs()


def test_a_finished_run_expires_and_the_collector_forgets_it(tmp_path: Path, rclient: redis.Redis,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from convfarm.runstate import RunStore, run_key
    from convfarm.settings import get_settings
    from workers.collector import Collector

    monkeypatch.setenv("CONVFARM_RUN_RETENTION_DAYS", "1")
    get_settings.cache_clear()
    try:
        run = _run_with_keys(rclient, tmp_path, "retained")
        collector = Collector(rclient, "c-test", send_task=lambda *_: None, out_root=tmp_path / "out")
        handle = collector.handle(run)
        assert handle is not None and run in collector.runs
        collector.finish_run(handle)
        assert run not in collector.runs  # no in-memory state for a finished run
        ttls = [rclient.ttl(k) for k in RunStore(rclient).run_keys(run)]
        assert ttls and all(0 < t <= 86400 for t in ttls)
        # resuming it (enqueue) keeps its keys for as long as it runs
        RunStore(rclient).keep_run(run)
        assert rclient.ttl(run_key(run)) == -1
    finally:
        get_settings.cache_clear()


def test_resume_trap_is_explained_and_fresh_starts_again(tmp_path: Path, redis_url: str) -> None:
    import shutil

    config = write_config(tmp_path / "c.json", name="trap", max_tokens=16, words=["leaf"])
    env = no_broker_env(CONVFARM_BROKER_URL=redis_url)
    out = tmp_path / "out"
    first = producer("run", str(config), "--out", str(out), env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    (run_dir,) = out.glob("trap-*")
    shutil.rmtree(run_dir)
    again = producer("run", str(config), "--out", str(out), env=env, timeout=300)
    assert again.returncode == 0 and "0 task(s)" in again.stdout
    assert "is gone" in again.stderr and "--fresh" in again.stderr, again.stderr
    fresh = producer("run", str(config), "--out", str(out), "--fresh", env=env, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    assert (run_dir / "manifest.json").is_file() and "1 task(s)" in fresh.stdout
