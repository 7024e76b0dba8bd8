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


@pytest.mark.fast
@pytest.mark.parametrize(("text", "expected"), [
    (f"redis://:{SECRET}@h:6379/0", "redis://:***@h:6379/0"),
    (f"cannot reach rediss://ops:{SECRET}@farm.lan:6380/0?ssl_cert_reqs=required (x)",
     "cannot reach rediss://ops:***@farm.lan:6380/0?ssl_cert_reqs=required (x)"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),  # nothing to hide
    ("see http://example.org/a:b@c", "see http://example.org/a:b@c"),  # a path is not a password
    # redis-py also reads the password from the query
    (f"redis://h:6379/0?password={SECRET}", "redis://h:6379/0?password=***"),
    (f"at rediss://h/0?ssl_cert_reqs=none&password={SECRET}&db=2 (x)",
     "at rediss://h/0?ssl_cert_reqs=none&password=***&db=2 (x)"),
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


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_a_dead_broker_is_one_line_exit_1_without_its_password(tmp_path: Path, form: str) -> None:
    port = free_port()
    dead = f"redis://:{SECRET}@127.0.0.1:{port}/0" if form == "userinfo" else f"redis://127.0.0.1:{port}/0?password={SECRET}"
    config = write_config(tmp_path / "c.json", max_tokens=16, words=["leaf"])
    for args in (("status",), ("enqueue", str(config)), ("run", str(config), "--out", str(tmp_path / "out"))):
        result = producer(*args, env=no_broker_env(CONVFARM_BROKER_URL=dead), timeout=120)
        assert result.returncode == 1, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
        assert SECRET not in result.stdout + result.stderr
        # either form is shown masked (a query password may be shown moved into the userinfo, as kombu needs it)
        assert "redis://:***@127.0.0.1" in result.stderr or (form == "query" and "/0?password=***" in result.stderr)


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_producer_run_status_and_worker_logs_never_show_the_password(tmp_path: Path, password_redis: str,
                                                                     form: str) -> None:
    config = write_config(tmp_path / "c.json", name="masked", max_tokens=16, words=["leaf"])
    url = password_redis if form == "userinfo" else password_redis.replace(f":{SECRET}@", "") + f"?password={SECRET}"
    env = no_broker_env(CONVFARM_BROKER_URL=url)
    run = producer("run", str(config), "--out", str(tmp_path / "out"), env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    first = run.stdout.splitlines()[0]  # the first line says which Redis the farm uses
    assert first.startswith("redis ") and "CONVFARM_BROKER_URL" in first, first
    assert ("redis redis://:***@127.0.0.1" if form == "userinfo" else "/0?password=***") in first
    # the collector is a consumer of its own name, the output directory's (two farms on one Redis: two names)
    from convfarm.messages import COLLECTOR_GROUP, RESULTS_STREAM
    from producer.local import collector_name

    consumers = [c["name"].decode() for c in redis.Redis.from_url(url).xinfo_consumers(RESULTS_STREAM, COLLECTOR_GROUP)]
    assert [c.split("@")[0] for c in consumers] == [collector_name(tmp_path / "out").split("@")[0]], consumers
    status = producer("status", env=env)
    assert status.returncode == 0, status.stderr
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "out" / ".convfarm" / "logs").glob("*.log"))
    assert logs, "the workers wrote logs"
    for text in (run.stdout, run.stderr, status.stdout, status.stderr, logs):
        assert SECRET not in text


@pytest.mark.fast
def test_dot_env_is_ignored_by_git() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert ignored.returncode == 0, ".env (the real secrets) must never be committed"


@pytest.mark.fast
def test_readme_starts_flower_without_a_password_on_the_command_line() -> None:
    readme = (REPO / "README.md").read_text()
    assert "--basic-auth=" not in readme and "FLOWER_BASIC_AUTH=user:password" in readme


@pytest.mark.parametrize(("given", "used"), [
    (f"redis://127.0.0.1:6379/0?password={SECRET}", f"redis://:{SECRET}@127.0.0.1:6379/0"),
    ("rediss://h:6380/0?ssl_cert_reqs=required&password=a%40b", "rediss://:a%40b@h:6380/0?ssl_cert_reqs=required"),
    ("redis://:kept@h/0", "redis://:kept@h/0"),
])
def test_a_query_password_is_what_celery_can_use(given: str, used: str) -> None:
    # kombu takes the password from the URL's userinfo only (a query password was a TypeError in every process)
    from convfarm.settings import Settings

    assert Settings(broker_url=given).redis_url == used
