"""Shared fixtures: a real Redis database of our own, real worker processes, the bundled model.

Each test session takes a free Redis database number (a lock key with a TTL, refreshed before
every test), so several sessions on one Redis do not see each other's runs; it is flushed before
use and again before each test module that uses it, so tasks one module leaves queued are never
run by another module's workers (modules pass alone, in any order, and together).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.inprocess import FarmState

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "example.json"
BASE_URL = os.environ.get("CONVFARM_TEST_REDIS", "redis://127.0.0.1:6379")
LOCK = "convfarm-test-session-lock"
LOCK_TTL = 3600
_session: dict[str, str] = {}  # the claimed database's URL, once a test asked for it


def purge(client: redis.Redis) -> None:
    """Every key of our database but the lock: runs, the results stream, Celery's queues."""
    for key in client.scan_iter(count=1000):
        if key != LOCK.encode():
            client.delete(key)


def _claim_database(base_url: str) -> int:
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base_url}/{db}")
        if client.set(LOCK, os.getpid(), nx=True, ex=LOCK_TTL):
            purge(client)
            return db
    raise RuntimeError("no free Redis database for the tests (all 15 locked)")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base_url, embedded = BASE_URL, None
    try:
        redis.Redis.from_url(f"{base_url}/0", socket_connect_timeout=2).ping()
    except redis.ConnectionError:
        # no Redis here: use the same embedded redis-server that `producer run` would start
        from producer.local import EmbeddedRedis

        embedded = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
        embedded.start()
        base_url = embedded.url.rsplit("/", 1)[0]
    db = _claim_database(base_url)
    url = f"{base_url}/{db}"
    previous = {k: os.environ.get(k) for k in ("CONVFARM_BROKER_URL", "REDIS_URL")}
    os.environ["CONVFARM_BROKER_URL"] = url
    os.environ.pop("REDIS_URL", None)
    from convfarm.settings import get_settings

    get_settings.cache_clear()
    _session["url"] = url
    yield url
    _session.pop("url", None)
    client = redis.Redis.from_url(url)
    client.flushdb()
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()
    if embedded is not None:
        embedded.stop()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Keep our database lock (a session can outlive its TTL) and purge the database when a
    new module that uses Redis starts (its previous module's workers are stopped by then)."""
    if "redis_url" not in getattr(item, "fixturenames", ()):
        return
    module = item.module.__name__ if item.module else ""
    new_module, _session["module"] = _session.get("module") != module, module
    url = _session.get("url")
    if url is None:
        return  # the database is claimed (and flushed) by this test's setup
    client = redis.Redis.from_url(url)
    owner = client.get(LOCK)
    if owner is not None and owner != str(os.getpid()).encode():
        pytest.exit(f"another test session took our Redis database ({url})", returncode=1)
    client.set(LOCK, os.getpid(), ex=LOCK_TTL)
    if new_module:
        purge(client)


@pytest.fixture
def rclient(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def user_keys(client: redis.Redis) -> list[bytes]:
    return [k for k in client.scan_iter() if k != LOCK.encode()]


def write_config(path: Path, **fields: object) -> Path:
    """The example config with some fields replaced (small max_tokens keeps tests quick)."""
    data = json.loads(EXAMPLE.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))
    return path


def farm_env(redis_url: str, out_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "CONVFARM_BROKER_URL": redis_url, "CONVFARM_OUT_DIR": str(out_dir),
            "CONVFARM_SEAL_IDLE_SECONDS": "2", **extra}


@dataclass
class WorkerProcess:
    """A real ``celery -A workers worker`` process (its own process group, so we can kill it)."""

    name: str
    proc: subprocess.Popen
    log: Path

    def send_signal(self, sig: int, *, group: bool = True) -> None:
        """To the whole process group (the pool children too), or to the main process alone, as
        docker stop and Kubernetes send SIGTERM (to the container's first process)."""
        if self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                os.kill(self.proc.pid, sig)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.send_signal(sig)
            self.proc.wait(30)

    def stop(self) -> None:
        self.send_signal(signal.SIGCONT)  # in case a test left it stopped
        self.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_worker(env: dict[str, str], log_dir: Path, name: str, *, collector: bool = False,
                 queue: str = "convfarm.gen.smollm2-135m", extra: tuple[str, ...] = ()) -> WorkerProcess:
    from producer.local import worker_command

    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    command = [*worker_command(queue, f"{name}@%h", collector=collector), *extra]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    return WorkerProcess(name, proc, log)


def resident(batch_size: int, kv_layout: str | None = None, **options: Any) -> Iterator[Any]:
    """The bundled model for an engine test fixture (``yield from resident(...)``), closed after the module."""
    from convfarm.engine import ResidentModel

    model = ResidentModel("smollm2-135m", n_ctx=512, n_gpu_layers=0, n_threads=None, batch_size=batch_size,
                          kv_layout=kv_layout, **options)
    yield model
    model.close()


@pytest.fixture(scope="module")
def farm(redis_url: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A collector and a generation worker shared by one module's tests (the database is
    purged before each module, so no other module's tasks reach them)."""
    label = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    out = tmp_path_factory.mktemp(label)
    env = farm_env(redis_url, out, **getattr(request.module, "FARM_ENV", {}))  # a module may pin settings
    logs = out / "logs"
    collector = start_worker(env, logs, f"collector-{label}", collector=True)
    generator = start_worker(env, logs, f"gen-{label}")
    yield {"env": env, "out": out, "logs": logs, "collector": collector, "generator": generator}
    generator.stop()
    collector.stop()


def farm_processes(out_dir: Path) -> list[int]:
    """Worker processes (``producer run``'s) whose CONVFARM_OUT_DIR is ``out_dir``.

    Other users' and vanishing processes on a shared machine are skipped: reading their
    environment may raise (permission, or the process ended after pgrep listed it).
    """
    listed = subprocess.run(["pgrep", "-f", "celery -A workers worker"], capture_output=True, text=True).stdout.split()
    marker = f"CONVFARM_OUT_DIR={out_dir}".encode()
    found = []
    for pid in map(int, listed):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ:
            found.append(pid)
    return found


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def producer(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the CLI as a user would (a subprocess)."""
    return subprocess.run([sys.executable, "-m", "producer.cli", *args], cwd=REPO, env=env or os.environ.copy(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def farm_state(redis_url: str, tmp_path: Path) -> Iterator[FarmState]:
    """A clean database with in-process collectors (tests/inprocess.py); stops them afterwards."""
    client = redis.Redis.from_url(redis_url)
    purge(client)
    state = FarmState(redis_url, tmp_path / "runs")
    try:
        yield state
    finally:
        state.stop_all()
        purge(client)


def no_broker_env(**extra: str) -> dict[str, str]:
    """The environment without a broker URL (the commands fall back to their defaults), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("CONVFARM_BROKER_URL", "REDIS_URL")}
    return {**env, **extra}


@pytest.fixture(autouse=True)
def _sigint_as_a_user_has_it(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts with SIGINT handled and unblocked in this process, as in a user's shell:
    the processes a test starts inherit both, and the Ctrl-C tests (test_resilience.py,
    test_user_path.py) need their `producer` to get a KeyboardInterrupt. A test that leaves SIGINT
    ignored or blocked is named in a warning, and the state is put back for the next one."""
    yield
    ignored = signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    if ignored or blocked:
        import warnings

        warnings.warn(f"{request.node.nodeid} left SIGINT {'ignored' if ignored else ''}"
                      f"{' and ' if ignored and blocked else ''}{'blocked' if blocked else ''}", stacklevel=1)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
