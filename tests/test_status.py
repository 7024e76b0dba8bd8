"""`producer status` on a live run: the numbers a user watches, checked against Redis and the shards."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import redis

from convfarm.runstate import RunStore
from tests.conftest import farm_env, producer, start_worker, wait_for, write_config
from tests.runfiles import records, run_of, status_of


def status_json(run: str, env: dict[str, str]) -> dict:
    result = producer("status", run, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_status_json_follows_a_live_run(redis_url: str, tmp_path: Path, rclient: redis.Redis) -> None:
    out = tmp_path / "out"
    # One attempt at a time: with the batched default all eight attempts start together and, all
    # cut at the same max_tokens, can finish in one step, leaving no moment with results *and* a
    # task in progress for this test to look at (it then waited out its 180 s in CI).
    env = farm_env(redis_url, out, CONVFARM_BATCH_SIZE="1")
    words = ["bridge", "leaf", "pocket", "camera"]
    config = write_config(tmp_path / "live.json", name="live", max_tokens=48, per_word=2, max_attempts=2, words=words)
    run = run_of(config)
    assert producer("enqueue", str(config), env=env).returncode == 0

    # no worker yet: everything is pending
    before = status_json("live", env)  # a unique prefix names the run
    assert before["run"] == run and before["status"] == "active"
    assert before["words"] == {"total": 4, "complete": 0, "in_progress": 0, "pending": 4, "short": 0, "dead_lettered": 0}
    assert before["conversations"]["accepted"] == 0 and before["eta_s"] is None

    collector = start_worker(env, tmp_path / "logs", "collector-status", collector=True)
    generator = start_worker(env, tmp_path / "logs", "gen-status")
    try:
        store = RunStore(rclient)

        def live_with_results() -> dict | None:
            """When Redis shows results and a running attempt, freeze the generation worker, so a
            fast run cannot slip past the moment `producer status` looks at; thaw it if it moved on."""
            counts = store.counts(run)
            if not (counts.accepted + counts.rejected and store.word_sets(run)[2]):
                return None
            generator.send_signal(signal.SIGSTOP)
            status = status_json(run, env)
            seen = status["conversations"]["accepted"] + status["conversations"]["rejected"]
            if status["status"] == "active" and seen and status["words"]["in_progress"]:
                return status
            generator.send_signal(signal.SIGCONT)
            return None

        live = wait_for(live_with_results, 180, "a live status with results and a task in progress", interval=0.5)
        generator.send_signal(signal.SIGCONT)
        words_now = live["words"]
        assert words_now["complete"] + words_now["short"] + words_now["in_progress"] + words_now["pending"] == 4
        assert live["rate"]["tokens_per_s"] > 0 and live["rate"]["results_per_s"] > 0
        assert live["conversations"]["rejected"] == sum(live["conversations"]["by_reason"].values())
        (worker,) = [w for w in live["workers"] if w["worker"].startswith("gen-status@")]
        assert worker["tasks"] >= 1 and worker["tokens_per_s"] > 0 and worker["model"].endswith(".gguf")

        wait_for(lambda: status_of(rclient, run) == "complete", 300, "the run to complete")
    finally:
        generator.stop()
        collector.stop()

    done = status_json(run, env)
    kept, dropped = records(out / run, "conversations"), records(out / run, "rejected")
    assert done["status"] == "complete" and done["eta_s"] is None
    assert done["words"]["complete"] + done["words"]["short"] == 4 and done["words"]["pending"] == 0
    assert done["conversations"]["accepted"] == len(kept)
    assert done["conversations"]["rejected"] == len(dropped)
    reasons: dict[str, int] = {}
    for record in dropped:
        reasons[record["reason"]] = reasons.get(record["reason"], 0) + 1
    assert done["conversations"]["by_reason"] == reasons
    # the rich view shows the same run
    view = producer("status", run, env=env)
    assert view.returncode == 0 and run in view.stdout and "complete" in view.stdout


def test_status_watch_ends_with_the_run(redis_url: str, tmp_path: Path, rclient: redis.Redis) -> None:
    """--watch refreshes until the run is no longer active (here: cancelled)."""
    env = farm_env(redis_url, tmp_path / "out")
    config = write_config(tmp_path / "watched.json", name="watched", max_tokens=16, words=["leaf"])
    run = run_of(config)
    assert producer("enqueue", str(config), env=env).returncode == 0
    assert producer("cancel", run, env=env).returncode == 0
    watched = producer("status", run, "--watch", "--interval", "0.5", env=env, timeout=60)
    assert watched.returncode == 0 and "cancelled" in watched.stdout


def test_status_and_dlq_print_markup_like_user_data_as_it_is(tmp_path: Path, redis_url: str,
                                                             rclient: redis.Redis) -> None:
    from convfarm.config import load_config
    from convfarm.runstate import RunStore, dead_letter, run_id_for

    config, _ = load_config(write_config(tmp_path / "m.json", name="markup", model="[/b]model.gguf",
                                         words=["[/b]", "leaf [bold]"]))
    store = RunStore(rclient)
    run = store.create(run_id_for(config), config, str(tmp_path / "out")).run
    store.dead_letters.add(run, dead_letter("[/b]", 0, "ValueError: [/i] closed :bear:", "w[/u]@h"))
    store.workers.report("gen[/b]@host", model="[/b]model.gguf", model_file="x.gguf", completion_tokens=3, seconds=1.0)
    env = {**os.environ, "CONVFARM_BROKER_URL": redis_url}
    for args in (("status", run), ("dlq", run), ("runs",)):
        result = producer(*args, env=env)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (args, result.stderr)
    assert "[/b]model.gguf" in producer("status", run, env=env).stdout
    dlq = producer("dlq", run, env=env).stdout
    assert "[/b]" in dlq and "[/i] closed" in dlq and "w[/u]@h" in dlq
    assert ":bear:" in dlq  # an emoji code in user data stays text (Rich would print a bear)


@pytest.mark.fast
def test_an_error_line_keeps_emoji_codes_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    """A worker's log tail names tasks ``run:bear:0``: Rich printed a bear instead of the line."""
    import typer

    from producer.cli.console import fail

    with pytest.raises(typer.Exit):
        fail("gen0 exited unexpectedly:\nTask convfarm.generate[run:bear:0] received", code=1)
    assert "convfarm.generate[run:bear:0] received" in capsys.readouterr().err
