"""Credentials are never printed: broker URLs are masked in errors, logs and status; a dead
broker is one line with exit 1; ``.env`` stays out of git; Flower's login is not on a command line."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from convfarm.settings import mask_credentials
from producer.local import free_port
from tests.conftest import REPO, no_broker_env, producer, wait_for, write_config

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
