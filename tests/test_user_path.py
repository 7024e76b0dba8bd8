"""The user's path as a new user walks it (README, docs): the CLI as a subprocess on a real
Redis; where a worker or a collector matters, real ``celery`` processes and the bundled model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import redis

from convfarm.runstate import run_key
from tests.conftest import producer, write_config

LONG_NAME = "physfarm-glossary-of-physics-for-first-year-students"


def env_for(redis_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "CONVFARM_BROKER_URL": redis_url, "COLUMNS": "80", **extra}


def enqueue(config: Path, env: dict[str, str], *args: str) -> str:
    result = producer("enqueue", str(config), *args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("run ", 1)[1].split(":", 1)[0]


def test_runs_shows_whole_ids_and_commands_take_a_prefix_or_the_config(redis_url: str, rclient: redis.Redis,
                                                                        tmp_path: Path) -> None:
    env = env_for(redis_url)
    config = write_config(tmp_path / "physics.json", name=LONG_NAME, words=["force", "mass"], max_tokens=16)
    run = enqueue(config, env, "--queue", "convfarm.gen.nobody-serves-this")
    listed = producer("runs", env=env)
    assert listed.returncode == 0 and run in listed.stdout, listed.stdout  # whole, at 80 columns
    # the config file names its run; a prefix does too
    assert json.loads(producer("status", str(config), "--json", env=env).stdout)["run"] == run
    assert producer("dlq", LONG_NAME[:12], env=env).returncode == 0
    # dlq and cancel default to the newest run; a destructive command says which run it means first
    assert f"run {run}: no dead letters" in producer("dlq", env=env).stdout
    unsure = producer("cancel", env=env)
    assert unsure.returncode == 2 and f"means run {run}" in unsure.stderr and "--yes" in unsure.stderr
    assert json.loads(producer("status", run, "--json", env=env).stdout)["status"] == "active"
    done = producer("cancel", str(config), "--yes", env=env)
    assert done.returncode == 0 and f"run {run} cancelled" in done.stdout, done.stderr
    refused = producer("purge", LONG_NAME[:12], env=env)
    assert refused.returncode == 2 and f"means run {run}" in refused.stderr
    assert producer("purge", run, env=env).returncode == 0  # the whole id needs no confirmation


def test_help_shows_flags_without_a_type() -> None:
    shown = producer("filter", "--help", env={**os.environ, "COLUMNS": "120"})
    assert "--force" in shown.stdout and "<bool>" not in shown.stdout


def test_dry_run_says_what_a_real_enqueue_would_send_with_an_estimate(redis_url: str, rclient: redis.Redis,
                                                                       tmp_path: Path) -> None:
    from convfarm.runstate import RunStore

    env = env_for(redis_url)
    config = write_config(tmp_path / "dry.json", name="dryrun", words=["force", "mass", "heat"], max_tokens=40)
    new = producer("enqueue", str(config), "--dry-run", env=env)
    assert new.returncode == 0, new.stderr
    assert "(new): a real enqueue would send 3 task(s) for 3 word(s)" in new.stdout
    assert "at most 120 tokens" in new.stdout and "no measured rate" in new.stdout
    # an earlier run of this model measured 30 tokens per task at 10 tok/s of machine time
    RunStore(rclient).workers.report("gen-earlier@host", model="smollm2-135m", model_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                    completion_tokens=300, seconds=30.0)
    for _ in range(9):
        RunStore(rclient).workers.report("gen-earlier@host", model="smollm2-135m",
                                        model_file="SmolLM2-135M-Instruct.Q4_1.gguf", completion_tokens=0, seconds=0.0)
    measured = producer("enqueue", str(config), "--dry-run", env=env)
    assert "~90 tokens (30 per attempt, measured over 10 earlier task(s)" in measured.stdout, measured.stdout
    assert "0m09s of worker time at 10.0 tok/s" in measured.stdout
    assert "dryrun" not in producer("runs", env=env).stdout  # a dry run creates nothing
    enqueue(config, env, "--queue", "convfarm.gen.nobody-serves-this")
    again = producer("enqueue", str(config), "--dry-run", env=env)
    assert "(active, 0/3 words done): a real enqueue would send 0 task(s)" in again.stdout, again.stdout
    assert "nothing is missing" in again.stdout


def test_purge_then_enqueue_never_appends_to_the_old_output(farm: dict, tmp_path: Path, rclient: redis.Redis) -> None:
    from convfarm.runstate import run_key

    env = farm["env"]
    config = write_config(tmp_path / "purged.json", name="purged", words=["leaf", "bridge"], max_tokens=24,
                          max_attempts=1)
    first = producer("enqueue", str(config), "--wait", env=env, timeout=900)
    assert first.returncode == 0, first.stderr
    run = first.stdout.split("run ", 1)[1].split(":", 1)[0]
    run_dir = farm["out"] / run
    files, manifest = sorted(p.name for p in run_dir.iterdir()), (run_dir / "manifest.json").read_text()
    assert json.loads(manifest)["incarnation"]

    # the producer's own runs/ is not the collector's: no "output missing" from its own disk
    elsewhere = {**env, "CONVFARM_OUT_DIR": str(tmp_path / "producer-runs")}
    resumed = producer("enqueue", str(config), env=elsewhere)
    assert resumed.returncode == 0 and "sent 0 task(s)" in resumed.stdout
    assert "warning" not in resumed.stderr, resumed.stderr
    # a collector on another host: said where, never "missing"
    rclient.hset(run_key(run), mapping={"output_host": "collector-host.example", "output_path": "/data/runs/" + run})
    remote = producer("enqueue", str(config), env=elsewhere)
    assert "on the collector's host collector-host.example: /data/runs/" in remote.stdout
    assert "warning" not in remote.stderr, remote.stderr
    rclient.hset(run_key(run), mapping={"output_host": "", "output_path": str(run_dir)})

    purged = producer("purge", run, env=env)
    assert purged.returncode == 0 and f"its output stays in {run_dir}" in purged.stdout, purged.stdout
    again = producer("enqueue", str(config), "--wait", env=env, timeout=900)
    assert again.returncode == 1 and "earlier incarnation" in again.stderr, (again.stdout, again.stderr)
    # nothing appended beside the old shards, the old manifest untouched
    assert sorted(p.name for p in run_dir.iterdir()) == files
    assert (run_dir / "manifest.json").read_text() == manifest


def test_a_farm_says_when_nobody_works(farm: dict, tmp_path: Path, rclient: redis.Redis) -> None:
    import signal
    import subprocess
    import sys
    import time

    from convfarm.runstate.presence import Presence
    from tests.conftest import REPO, start_worker, wait_for

    env = farm["env"]
    presence = Presence(rclient)
    wait_for(lambda: presence.serving("convfarm.gen.smollm2-135m") and presence.collectors_alive(), 300,
             "the farm's worker and collector to report")
    # a mistyped model: its queue is served by nobody
    config = write_config(tmp_path / "typo.json", name="typo", model="smollm2-35m", words=["leaf", "bridge", "mass"],
                          max_tokens=16)
    waiting = subprocess.Popen([sys.executable, "-m", "producer.cli", "enqueue", str(config), "--wait"], cwd=REPO,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: rclient.llen("convfarm.gen.smollm2-35m") == 3, 120, "the tasks to be queued")
    time.sleep(14)  # the bar looks at the farm every 2 s, after a 10 s grace
    waiting.send_signal(signal.SIGINT)
    out, errors = waiting.communicate(timeout=60)
    assert "no live worker serves queue convfarm.gen.smollm2-35m" in errors, errors
    assert "did you mean convfarm.gen.smollm2-135m" in errors, errors
    assert "no worker on queue convfarm.gen.smollm2-35m" in out + errors, (out, errors)
    run = out.split("run ", 1)[1].split(":", 1)[0]

    shown = producer("status", run, env={**env, "COLUMNS": "200"})
    assert "interrupted: no worker alive" in shown.stdout and "no worker on queue convfarm.gen.smollm2-35m" in shown.stdout
    as_json = json.loads(producer("status", run, "--json", env=env).stdout)
    assert as_json["interrupted"] and as_json["eta_s"] is None
    kinds = {(w["kind"], w["state"]) for w in as_json["workers"]}
    assert ("collector", "alive") in kinds and ("worker", "alive") in kinds

    cancelled = producer("cancel", run, env=env)
    assert cancelled.returncode == 0 and "3 queued task(s) removed" in cancelled.stdout, cancelled.stdout
    assert rclient.llen("convfarm.gen.smollm2-35m") == 0
    assert json.loads(producer("status", run, "--json", env=env).stdout)["conversations"]["dropped"] == 3

    # a worker killed for good is marked gone (it cannot say goodbye), not listed as a live worker
    doomed = start_worker(env, farm["logs"], "gen-doomed", queue="convfarm.gen.doomed")
    wait_for(lambda: presence.serving("convfarm.gen.doomed"), 300, "the doomed worker to report")
    doomed.kill()
    wait_for(lambda: not presence.serving("convfarm.gen.doomed"), 60, "the killed worker to be marked gone")
    rows = json.loads(producer("status", run, "--json", env=env).stdout)["workers"]
    assert [r["state"] for r in rows if r["worker"].startswith("gen-doomed@")] == ["gone"]


def test_unreachable_redis_advice_fits_whether_the_url_is_set() -> None:
    bad = "redis://127.0.0.1:1/0"
    told = producer("runs", env={**os.environ, "CONVFARM_BROKER_URL": bad, "REDIS_URL": ""})
    assert told.returncode == 1 and "CONVFARM_BROKER_URL is set to that URL" in told.stderr, told.stderr
    assert "set CONVFARM_BROKER_URL to" not in told.stderr


def test_the_physics_example_is_what_config_new_writes(tmp_path: Path) -> None:
    from tests.conftest import REPO

    example = REPO / "examples" / "physics.json"
    words = tmp_path / "words.txt"
    words.write_text("\n".join(json.loads(example.read_text())["words"]) + "\n")
    out = tmp_path / "physics.json"
    made = producer("config", "new", "physics", "--topic", "physics", "--words", str(words), "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert json.loads(out.read_text()) == json.loads(example.read_text())


def test_purge_takes_a_stopped_runs_queued_tasks_off_the_queue(redis_url: str, rclient: redis.Redis,
                                                               tmp_path: Path) -> None:
    """A run the collector failed (say, its output belongs to another incarnation) still has tasks
    queued where no worker took them: purge removes them with the run's state, so a worker that
    comes later does not generate for a run that no longer exists. --no-workers-ok silences the
    "nobody serves this queue" warning for a farm whose workers start later."""
    env = env_for(redis_url)
    queue = "convfarm.gen.later-workers"
    config = write_config(tmp_path / "later.json", name="later", words=["leaf", "bridge", "mass"], max_tokens=16)
    sent = producer("enqueue", str(config), "--queue", queue, "--no-workers-ok", env=env)
    assert sent.returncode == 0 and "no live worker" not in sent.stdout + sent.stderr, (sent.stdout, sent.stderr)
    run = sent.stdout.split("run ", 1)[1].split(":", 1)[0]
    assert rclient.llen(queue) == 3
    rclient.hset(run_key(run), "status", "failed")  # as a collector fails a run
    purged = producer("purge", run, "--yes", env=env)
    assert purged.returncode == 0 and f"removed 3 queued task(s) from {queue}" in purged.stdout, purged.stdout
    assert rclient.llen(queue) == 0
    assert run not in producer("runs", env=env).stdout
