"""Flower shows the farm: run for real, looked at through its API and a browser.

The farm here is started with the command lines of ``docker-compose.yml`` (the flower,
collector and worker-cpu services), so what is checked is what ``docker compose up`` runs:
Flower with basic auth from ``FLOWER_BASIC_AUTH``, a generation worker named after its model,
the collector. A small run goes through it; then Flower's REST API must list the workers,
the queue with its length, and every task with readable args (run, word) and a result
that says what came out; headless Chromium renders the tasks page (the JavaScript table
included) and its screenshot is taken (saved to ``docs/flower-tasks.png`` with CONVFARM_UPDATE_SCREENSHOT=1).
"""

from __future__ import annotations

import ast
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from producer.local import free_port
from tests.conftest import REPO, WorkerProcess, farm_env, producer, wait_for, write_config
from tests.deployfiles import BUNDLED_QUEUE, compose, option_value, probe

USER, PASSWORD = "farmer", "s3cret-hay"
WORDS = ["bridge", "leaf", "pocket"]
SCREENSHOT = REPO / "docs" / "flower-tasks.png"
SHOT_SIZE = (2000, 640)
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# the closed network refuses the browser's own background connections; these keep it quiet
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def start(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> WorkerProcess:
    """A compose service's command, run here: ``celery`` is this venv's."""
    assert argv[0] == "celery"
    log = log_dir / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "celery", *argv[1:]], cwd=REPO, env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    return WorkerProcess(name, proc, log)


def with_option(argv: list[str], name: str, value: str) -> list[str]:
    """Replace ``--name=...`` (ports and paths differ here from the container's)."""
    assert any(a.startswith(name + "=") for a in argv), f"{name} not in {argv}"
    return [f"{name}={value}" if a.startswith(name + "=") else a for a in argv]


@dataclass
class Flower:
    base: str
    auth: tuple[str, str] | None

    def request(self, path: str, auth: tuple[str, str] | bool | None = True) -> tuple[int, str]:
        """GET ``path``; ``auth=True`` uses the configured credentials, ``None`` sends none."""
        request = urllib.request.Request(self.base + path)
        creds = self.auth if auth is True else auth or None
        if creds:
            token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, ConnectionError):
            return 0, ""

    def json(self, path: str) -> Any:
        import json

        status, body = self.request(path)
        assert status == 200, f"GET {path}: {status} {body[:300]}"
        return json.loads(body)


@dataclass
class FlowerFarm:
    flower: Flower
    run: str
    gen_worker: str
    collector: str
    queue_length_seen: int
    flower_db: Path
    procs: dict[str, WorkerProcess]

    def heartbeat(self, name: str) -> Path:
        return self.flower_db.parent.parent / f"hb-{name}"


def hostname_of(pattern: str) -> str:
    return pattern.replace("%h", socket.gethostname())


def blocked_pops(client: redis.Redis, pid: int) -> int:
    """Connections of process ``pid`` (and its children) blocked in a BRPOP in Redis now."""
    import psutil

    proc = psutil.Process(pid)
    ports = {c.laddr.port for p in (proc, *proc.children(recursive=True)) for c in p.net_connections(kind="tcp")}
    return sum(1 for c in client.client_list() if c.get("cmd") in ("brpop", "blpop") and "b" in c.get("flags", "")
               and int(c["addr"].rsplit(":", 1)[1]) in ports)


def finished_tasks(flower: Flower, run: str) -> list[dict[str, Any]]:
    tasks = flower.json("/api/tasks").values()
    return [t for t in tasks if t.get("args") and run in t["args"] and t.get("state") in ("SUCCESS", "FAILURE")]


@pytest.fixture(scope="module")
def farm(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowerFarm]:
    root = tmp_path_factory.mktemp("flower-farm")
    logs = root / "logs"
    logs.mkdir()
    services = compose()["services"]
    port = free_port()
    env = farm_env(redis_url, root / "runs", FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}")
    db = root / "flower-state" / "flower.db"
    db.parent.mkdir()
    flower_argv = with_option(with_option(with_option(services["flower"]["command"], "--port", str(port)),
                                          "--address", "127.0.0.1"), "--db", str(db))
    procs: dict[str, WorkerProcess] = {}
    try:
        # Flower first: it builds its task list from events, and events are not replayed
        procs["flower"] = start("flower", flower_argv, env, logs)
        flower = Flower(f"http://127.0.0.1:{port}", (USER, PASSWORD))
        wait_for(lambda: flower.request("/healthcheck", auth=None)[0] == 200, 60, "Flower to answer")
        # each process its own heartbeat file (in a container each has its own /tmp)
        procs["collector"] = start("collector", services["collector"]["command"],
                                   {**env, "CONVFARM_HEARTBEAT_FILE": str(root / "hb-collector")}, logs)
        procs["worker"] = start("worker-cpu", services["worker-cpu"]["command"],
                                {**env, "CONVFARM_HEARTBEAT_FILE": str(root / "hb-worker")}, logs)
        gen = hostname_of(option_value(services["worker-cpu"]["command"], "-n"))
        collector = hostname_of(option_value(services["collector"]["command"], "-n"))

        def both_listed() -> bool:
            workers = flower.json("/api/workers?refresh=1")
            return gen in workers and collector in workers and bool(workers[gen].get("active_queues"))

        wait_for(both_listed, 90, "Flower to list the generation worker and the collector", interval=2)

        # Freeze the generation worker, so the queue visibly fills up, then let it work.
        broker = redis.Redis.from_url(redis_url)
        worker_pid = procs["worker"].proc.pid
        procs["worker"].send_signal(signal.SIGSTOP)
        # A BRPOP the worker sent just before it froze would still be served by Redis and take
        # one message off the list: wait until none of its connections is blocked in one
        # (kombu's BRPOP times out after 1 s, and the frozen worker sends no other).
        wait_for(lambda: blocked_pops(broker, worker_pid) == 0, 30, "the frozen worker's last BRPOP to time out",
                 interval=0.1)
        config = write_config(root / "flowerdemo.json", name="flowerdemo", words=WORDS, max_tokens=32)
        sent = producer("enqueue", str(config), env=env, timeout=120)
        assert sent.returncode == 0, sent.stderr
        run = sent.stdout.split("run ", 1)[1].split(":", 1)[0].strip()

        def queue_length() -> int:
            queues = flower.json("/api/queues/length")["active_queues"]
            return next((q["messages"] for q in queues if q["name"] == BUNDLED_QUEUE), 0)

        seen = wait_for(lambda: queue_length() >= len(WORDS) and queue_length(), 30, "Flower to show the queued tasks")
        procs["worker"].send_signal(signal.SIGCONT)

        def all_words_done() -> bool:
            done = finished_tasks(flower, run)
            pending = [t for t in flower.json("/api/tasks").values()
                       if t.get("args") and run in t["args"] and t.get("state") not in ("SUCCESS", "FAILURE")]
            return {ast.literal_eval(t["args"])[1] for t in done} >= set(WORDS) and not pending

        wait_for(all_words_done, 300, "the run's tasks to succeed in Flower", interval=2)
        yield FlowerFarm(flower, run, gen, collector, seen, db, procs)
    finally:
        for name in ("worker", "collector", "flower"):
            if name in procs:
                procs[name].stop()


def test_flower_lists_the_workers_by_what_they_serve(farm: FlowerFarm) -> None:
    workers = farm.flower.json("/api/workers?refresh=1")
    assert farm.gen_worker in workers and farm.collector in workers
    # the name says the model; the worker consumes that model's queue
    assert farm.gen_worker.startswith("cpu-smollm2-135m@")
    assert [q["name"] for q in workers[farm.gen_worker]["active_queues"]] == [BUNDLED_QUEUE]
    assert [q["name"] for q in workers[farm.collector]["active_queues"]] == ["convfarm.collector"]


def test_flower_shows_the_queue_length(farm: FlowerFarm) -> None:
    assert farm.queue_length_seen == len(WORDS)  # all words waited while the worker was frozen
    queues = farm.flower.json("/api/queues/length")["active_queues"]
    assert {"name": BUNDLED_QUEUE, "messages": 0} in queues  # and the queue drained


def test_flower_lists_every_task_with_readable_args_and_result(farm: FlowerFarm) -> None:
    tasks = finished_tasks(farm.flower, farm.run)
    assert {ast.literal_eval(t["args"])[1] for t in tasks} >= set(WORDS)
    for task in tasks:
        assert task["name"] == "convfarm.generate"
        run, word, attempt = ast.literal_eval(task["args"])  # a person reads: run, word, attempt
        assert run == farm.run and isinstance(word, str) and isinstance(attempt, int)
        assert task["uuid"] == f"{run}:{word}:{attempt}"  # deterministic, readable task ids
        assert task["state"] == "SUCCESS", task
        assert task["worker"] == farm.gen_worker
        # the task's summary: verdict, tokens, speed and model file (tasks.task_summary)
        assert "tok/s" in task["result"] and MODEL_FILE in task["result"], task["result"]
        # the worker's verdict, never called final: the collector may still drop a duplicate
        assert task["result"].strip("'\"").startswith(("sent to the collector, passed the rules",
                                                        "sent to the collector, rejected")), task["result"]


def test_collector_and_worker_beat_the_heartbeat_their_liveness_checks_read(farm: FlowerFarm) -> None:
    """Both kinds of worker process (prefork generation worker, solo collector) keep the probe happy after a run."""
    for name in ("worker", "collector"):
        result = probe(farm.heartbeat(name), 30)
        assert result.returncode == 0, f"{name}: {result.stderr}"


def test_flower_requires_the_basic_auth_login(farm: FlowerFarm) -> None:
    for path in ("/", "/tasks", "/workers", "/api/workers", "/api/tasks", f"/api/task/info/{farm.run}:{WORDS[0]}:0"):
        assert farm.flower.request(path, auth=None)[0] == 401, f"{path} answered without credentials"
        assert farm.flower.request(path, auth=(USER, "wrong"))[0] == 401, f"{path} took a wrong password"
        assert farm.flower.request(path, auth=("intruder", PASSWORD))[0] == 401, path
        assert farm.flower.request(path)[0] == 200, path
    # the health checks of compose and Kubernetes get through without the login; so do the
    # Prometheus metrics (deploy/README.md warns about it), which name no run or word
    assert farm.flower.request("/healthcheck", auth=None) == (200, "OK")
    status, metrics = farm.flower.request("/metrics", auth=None)
    assert status == 200 and farm.run not in metrics


# --- the browser ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed here when missing (the test machines start without it)."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.fail("chromium is missing and cannot be installed here (needs root and apt-get): apt-get install chromium")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], env=env,
                                 capture_output=True, text=True, timeout=900)
        if install.returncode != 0:  # a stale package list: refresh it once and retry
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
            install = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], env=env,
                                     capture_output=True, text=True, timeout=900)
        assert install.returncode == 0, f"apt-get install chromium failed:\n{install.stderr[-2000:]}"
        found = shutil.which("chromium") or "/usr/bin/chromium"
    return found


def browse(chromium: str, url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Headless Chromium with a fresh profile; the virtual time budget lets the page's JavaScript load its data."""
    with tempfile.TemporaryDirectory(prefix="convfarm-chromium-") as profile:
        return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000",
                               *args, url], capture_output=True, text=True, timeout=timeout)


def test_the_tasks_page_in_a_browser_shows_run_and_word(farm: FlowerFarm, chromium: str,
                                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    url = farm.flower.base.replace("http://", f"http://{USER}:{PASSWORD}@") + "/tasks"
    # the DOM after the page's scripts filled the table: what a person sees, as text
    dom = browse(chromium, url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    for word in WORDS:
        assert f"'{word}'" in dom.stdout, f"the tasks table does not show {word!r}"
    assert farm.run in dom.stdout and farm.gen_worker in dom.stdout and "tok/s" in dom.stdout
    # without the login the browser gets nothing of the farm
    anonymous = browse(chromium, farm.flower.base + "/tasks", "--dump-dom")
    assert farm.run not in anonymous.stdout

    shot = tmp_path_factory.mktemp("shot") / "flower-tasks.png"
    # wide enough for every column of compose's --tasks_columns, worker and runtime included
    result = browse(chromium, url, f"--screenshot={shot}", f"--window-size={SHOT_SIZE[0]},{SHOT_SIZE[1]}")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, "an empty page compresses to almost nothing"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == SHOT_SIZE
    # the committed picture changes only on request: a test run must not dirty the checkout
    if os.environ.get("CONVFARM_UPDATE_SCREENSHOT") == "1":
        shot.replace(SCREENSHOT)
    else:
        shot.unlink()


def test_flower_keeps_its_state_across_restarts(farm: FlowerFarm, redis_url: str) -> None:
    """--persistent: after a restart Flower still lists the tasks it saw (compose/k8s keep the file on a volume)."""
    farm.procs["flower"].stop()
    assert list(farm.flower_db.parent.glob(farm.flower_db.name + "*")), "Flower wrote no state file"
    services = compose()["services"]
    port = free_port()
    argv = with_option(with_option(with_option(services["flower"]["command"], "--port", str(port)),
                                   "--address", "127.0.0.1"), "--db", str(farm.flower_db))
    env = {**farm_env(redis_url, farm.flower_db.parent), "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
    again = start("flower-again", argv, env, farm.procs["flower"].log.parent)
    farm.procs["flower"] = again  # stopped by the fixture
    restarted = Flower(f"http://127.0.0.1:{port}", (USER, PASSWORD))
    wait_for(lambda: restarted.request("/healthcheck", auth=None)[0] == 200, 60, "Flower to restart")

    def words_listed() -> set[str]:
        return {ast.literal_eval(t["args"])[1] for t in finished_tasks(restarted, farm.run)}

    # a restarted Flower lists what it saw before (its state file), not what it sees anew: no task runs now
    assert wait_for(lambda: words_listed() >= set(WORDS), 30, "the restarted Flower to list the run's tasks")
