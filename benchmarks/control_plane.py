"""The control plane under load: Redis commands and Redis CPU per attempt, with the model replaced.

Runs the real pieces on a private ``redis-server``: ``producer enqueue`` (the real CLI), real
Celery generation workers (``-P threads``), one or more real collectors and, optionally, a
``producer status --watch``. Only the model is replaced, by the synthetic engine of
``benchmarks/controlplane/synthetic_worker.py`` (a well-formed, varied conversation after a
fixed delay; its records name ``synthetic-engine`` as their model).

Per row it prints: attempts/s end to end; Redis commands per attempt (``INFO commandstats``,
reset before the run, the Lua scripts' inner calls and the harness's own polls included, the
polls then subtracted); Redis CPU µs per attempt (``INFO cpu``, user + sys, raw and after
subtracting an idle Redis's rate measured over the same span beforehand); collector
records/s; worker CPU ms per attempt (the worker processes' own CPU). The last line states the
two headline figures.

Usage::

    python benchmarks/control_plane.py [--words 2000] [--rows default|quick] [--delay 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.private_redis import private_redis  # noqa: E402
from convfarm.config import parse_config  # noqa: E402
from convfarm.messages import queue_for_model  # noqa: E402
from convfarm.runstate import run_id_for  # noqa: E402

MODEL = "smollm2-135m"  # names the queue; the synthetic worker never loads it


@dataclass(frozen=True)
class Row:
    collectors: int
    workers: int  # worker processes
    threads: int  # task threads per worker process (CONVFARM_BATCH_SIZE)
    watch: bool
    split: bool = False  # the run state and results stream on a second redis-server (CONVFARM_STATE_URL)

    @property
    def label(self) -> str:
        return (f"{self.collectors} coll, {self.workers}x{self.threads} thr{', watch' if self.watch else ''}"
                f"{', split' if self.split else ''}")


ROWS = {
    "default": [Row(1, 1, 8, False), Row(1, 2, 16, False), Row(1, 2, 32, False), Row(1, 2, 32, True),
                Row(2, 2, 32, False), Row(4, 2, 32, False), Row(1, 2, 32, False, split=True)],
    "quick": [Row(1, 1, 8, False), Row(1, 1, 8, True), Row(2, 1, 8, False), Row(1, 1, 8, False, split=True)],
}


def config_file(directory: Path, words: int, name: str) -> Path:
    data = {"name": name, "model": MODEL, "words": [f"term{i:05d}" for i in range(words)], "max_attempts": 1,
            "structure": "free", "prompt_lines": ['A conversation about "{word}"', 'STUDENT: What does "{word}" mean?',
                                                  "TEACHER:"], "exclude": ["relig", "politic"]}
    path = directory / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def commandstats(clients: list[redis.Redis], field: str = "calls") -> dict[str, int]:
    """Calls (or ``usec``: microseconds spent) per command, summed over the servers. A script's
    usec include its inner calls', which are also counted under their own names."""
    total: dict[str, int] = {}
    for client in clients:
        for name, stats in client.info("commandstats").items():
            total[name.removeprefix("cmdstat_")] = total.get(name.removeprefix("cmdstat_"), 0) + int(stats[field])
    return total


def redis_cpu(clients: list[redis.Redis]) -> float:
    """CPU seconds (user + sys), summed over the servers."""
    infos = [client.info("cpu") for client in clients]
    return sum(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]) for info in infos)


def process_cpu(processes: list[subprocess.Popen]) -> float:
    total = 0.0
    for proc in processes:
        try:
            parent = psutil.Process(proc.pid)
            for p in [parent, *parent.children(recursive=True)]:
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(processes: list[subprocess.Popen]) -> None:
    for proc in processes:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_ready(client: redis.Redis, names: list[str], timeout: float = 120.0) -> None:
    """Until every worker answers a ping (celery's own control command, before the stats reset)."""
    from celery import Celery

    url = client.connection_pool.connection_kwargs
    app = Celery(broker=f"redis://{url['host']}:{url['port']}/{url.get('db', 0)}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=1.0) or []
        seen = {name for reply in replies for name in reply}
        if all(any(n in s for s in seen) for n in names):
            return
    raise RuntimeError(f"workers not ready after {timeout:.0f}s: wanted {names}")


def measure(row: Row, words: int, delay: float, work: Path, monitor: Path | None = None) -> dict[str, float]:
    with ExitStack() as servers:
        client = servers.enter_context(private_redis(work))  # the broker (and the run state, unless split)
        kwargs = client.connection_pool.connection_kwargs
        url = f"redis://{kwargs['host']}:{kwargs['port']}/0"
        env = {**os.environ, "CONVFARM_BROKER_URL": url, "CONVFARM_OUT_DIR": str(work / "out"),
               "CONVFARM_SYNTHETIC_DELAY": str(delay), "CONVFARM_BATCH_SIZE": str(row.threads),
               "PYTHONPATH": str(REPO)}
        env.pop("REDIS_URL", None)
        env.pop("CONVFARM_STATE_URL", None)
        state = client
        if row.split:
            (work / "state").mkdir()
            state = servers.enter_context(private_redis(work / "state"))
            skw = state.connection_pool.connection_kwargs
            env["CONVFARM_STATE_URL"] = f"redis://{skw['host']}:{skw['port']}/0"
        clients = [client] + ([state] if row.split else [])
        log = work / "farm.log"
        queue = queue_for_model(MODEL)
        workers = [start([sys.executable, "-m", "celery", "-A", "benchmarks.controlplane.synthetic_worker", "worker",
                          "-Q", queue, "-n", f"gen{i}@%h", "--loglevel", "WARNING"], env, log)
                   for i in range(row.workers)]
        collectors = [start([sys.executable, "-m", "celery", "-A", "workers", "worker", "--collector",
                             "-Q", "convfarm.collector", "-P", "solo", "-c", "1", "-n", f"collector{i}@%h",
                             "--loglevel", "WARNING"], {**env, "CONVFARM_BATCH_SIZE": "1"}, log)
                      for i in range(row.collectors)]
        watcher: list[subprocess.Popen] = []
        try:
            wait_ready(client, [f"gen{i}@" for i in range(row.workers)] + [f"collector{i}@" for i in range(row.collectors)])
            # an idle farm's Redis rate over a short span: what the run's figure is compared with
            idle_from, idle_cpu = time.perf_counter(), redis_cpu(clients)
            time.sleep(3.0)
            idle_rate = (redis_cpu(clients) - idle_cpu) / (time.perf_counter() - idle_from)
            path = config_file(work, words, f"cp{row.collectors}{row.workers}{row.threads}{int(row.watch)}")
            parsed, _ = parse_config(json.loads(path.read_text()))
            run = run_id_for(parsed)
            for c in clients:
                c.config_resetstat()
            if monitor:  # every command with its keys, to see where they come from (it costs Redis CPU itself)
                watcher.append(subprocess.Popen(["redis-cli", "-p", str(kwargs["port"]), "monitor"],
                                                stdout=monitor.open("wb"), start_new_session=True))
            cpu0, wcpu0, ccpu0 = redis_cpu(clients), process_cpu(workers), process_cpu(collectors)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "producer.cli", "enqueue", str(path)], cwd=REPO, env=env,
                           check=True, capture_output=True)
            if row.watch:
                watcher.append(start([sys.executable, "-m", "producer.cli", "status", run, "--watch"], env, log))
            polls = 0
            while state.hget(f"convfarm:run:{run}", "status") != b"complete":
                polls += 1
                time.sleep(0.25)
                if time.perf_counter() - started > 1800:
                    raise RuntimeError("run did not complete in 30 min")
            elapsed = time.perf_counter() - started
            cpu = redis_cpu(clients) - cpu0
            stats = commandstats(clients)
            usec = commandstats(clients, "usec")
            state_share = sum(commandstats([state]).values()) / max(1, sum(stats.values())) if row.split else 1.0
            wcpu, ccpu = process_cpu(workers) - wcpu0, process_cpu(collectors) - ccpu0
            counts = state.hgetall(f"convfarm:run:{run}:counts")
        finally:
            stop(watcher + workers + collectors)
    stats["hget"] = stats.get("hget", 0) - polls - 1  # the harness's own status polls
    total = sum(stats.values()) - 2 - len(clients)  # the final HGETALL and the INFOs aren't the farm's
    attempts = sum(int(v) for k, v in counts.items() if k.endswith(b"issued")) or words
    return {"attempts": attempts, "seconds": elapsed, "attempts_per_s": attempts / elapsed,
            "commands_per_attempt": total / attempts,
            "redis_us_per_attempt": cpu / attempts * 1e6,
            "redis_us_per_attempt_net": max(0.0, cpu - idle_rate * elapsed) / attempts * 1e6,
            "collector_records_per_s": attempts / elapsed,
            "state_share": state_share,
            "worker_cpu_ms_per_attempt": wcpu / attempts * 1e3, "collector_cpu_ms_per_attempt": ccpu / attempts * 1e3,
            "top": dict(sorted(stats.items(), key=lambda kv: -kv[1])[:12]),
            "top_usec": dict(sorted(usec.items(), key=lambda kv: -kv[1])[:6])}


def measure_drain(collectors: int, words: int, work: Path) -> dict[str, float]:
    """Collector throughput alone: the workers publish every record first, with no collector
    running; then ``collectors`` start on the full stream and are timed from their first counted
    outcome to the run's completion (start-up excluded, so 1 and 2 collectors compare fairly)."""
    with private_redis(work) as client:
        kwargs = client.connection_pool.connection_kwargs
        url = f"redis://{kwargs['host']}:{kwargs['port']}/0"
        env = {**os.environ, "CONVFARM_BROKER_URL": url, "CONVFARM_OUT_DIR": str(work / "out"),
               "CONVFARM_SYNTHETIC_DELAY": "0.002", "CONVFARM_BATCH_SIZE": "32", "PYTHONPATH": str(REPO)}
        env.pop("REDIS_URL", None)
        env.pop("CONVFARM_STATE_URL", None)
        log = work / "farm.log"
        workers = [start([sys.executable, "-m", "celery", "-A", "benchmarks.controlplane.synthetic_worker", "worker",
                          "-Q", queue_for_model(MODEL), "-n", "gen0@%h", "--loglevel", "WARNING"], env, log)]
        processes: list[subprocess.Popen] = []
        try:
            wait_ready(client, ["gen0@"])
            path = config_file(work, words, f"drain{collectors}")
            run = run_id_for(parse_config(json.loads(path.read_text()))[0])
            subprocess.run([sys.executable, "-m", "producer.cli", "enqueue", str(path), "--no-workers-ok"], cwd=REPO,
                           env=env, check=True, capture_output=True)
            deadline = time.monotonic() + 1800
            while client.xlen("convfarm:results") < words:
                if time.monotonic() > deadline:
                    raise RuntimeError("the workers did not publish every record in 30 min")
                time.sleep(0.2)
            stop(workers)
            processes = [start([sys.executable, "-m", "celery", "-A", "workers", "worker", "--collector",
                                "-Q", "convfarm.collector", "-P", "solo", "-c", "1", "-n", f"collector{i}@%h",
                                "--loglevel", "WARNING"], {**env, "CONVFARM_BATCH_SIZE": "1"}, log)
                         for i in range(collectors)]
            counts = f"convfarm:run:{run}:counts"

            def counted() -> int:
                return sum(int(client.hget(counts, k) or 0) for k in ("accepted", "rejected"))

            while counted() == 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("no collector counted anything")
                time.sleep(0.02)
            first, started = counted(), time.perf_counter()
            cpu0, rcpu0 = process_cpu(processes), redis_cpu([client])
            while client.hget(f"convfarm:run:{run}", "status") != b"complete":
                if time.monotonic() > deadline:
                    raise RuntimeError("the collectors did not finish in 30 min")
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            cpu, rcpu = process_cpu(processes) - cpu0, redis_cpu([client]) - rcpu0
        finally:
            stop(workers + processes)
    drained = words - first
    return {"collectors": collectors, "records": drained, "seconds": elapsed, "records_per_s": drained / elapsed,
            "collector_cpu_ms_per_record": cpu / drained * 1e3, "redis_busy": rcpu / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--words", type=int, default=2000)
    parser.add_argument("--delay", type=float, default=0.05, help="synthetic generation seconds per conversation")
    parser.add_argument("--rows", choices=sorted(ROWS), default="default")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--monitor", type=Path, help="write Redis MONITOR output of the first row here (skews its CPU)")
    parser.add_argument("--drain", type=int, nargs="*", metavar="K",
                        help="instead: collector throughput alone, K collectors on a full stream (e.g. --drain 1 2)")
    args = parser.parse_args()
    if args.drain:
        drains = []
        for k in args.drain:
            with tempfile.TemporaryDirectory(prefix="convfarm-cp-") as tmp:
                drains.append(measure_drain(k, args.words, Path(tmp)))
            d = drains[-1]
            print(f"{k} collector(s): {d['records']} records in {d['seconds']:.2f} s = {d['records_per_s']:.0f} "
                  f"records/s ({d['collector_cpu_ms_per_record']:.2f} collector CPU ms per record, Redis "
                  f"{d['redis_busy']:.0%} busy), "
                  f"{d['records_per_s'] / drains[0]['records_per_s']:.2f}x the first row", flush=True)
        if args.json:
            args.json.write_text(json.dumps(drains, indent=2))
        return
    results = []
    print(f"{'row':32} {'att/s':>7} {'cmd/att':>8} {'redis µs/att':>13} {'net µs/att':>11} "
          f"{'worker ms/att':>14} {'coll ms/att':>12}")
    for row in ROWS[args.rows]:
        with tempfile.TemporaryDirectory(prefix="convfarm-cp-") as tmp:
            figures = measure(row, args.words, args.delay, Path(tmp), args.monitor if not results else None)
        results.append({"row": row.label, **figures})
        print(f"{row.label:32} {figures['attempts_per_s']:7.1f} {figures['commands_per_attempt']:8.1f} "
              f"{figures['redis_us_per_attempt']:13.0f} {figures['redis_us_per_attempt_net']:11.0f} "
              f"{figures['worker_cpu_ms_per_attempt']:14.2f} {figures['collector_cpu_ms_per_attempt']:12.2f}", flush=True)
        if row.split:
            print(f"    split: {figures['state_share']:.0%} of the commands on the run state's server", flush=True)
        print("    top commands: " + ", ".join(f"{k} {v / figures['attempts']:.1f}" for k, v in figures["top"].items()),
              flush=True)
        print("    µs per attempt inside commands (a script's include its calls'): "
              + ", ".join(f"{k} {v / figures['attempts']:.0f}" for k, v in figures["top_usec"].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    first = results[0]
    print(f"HEADLINE: {first['commands_per_attempt']:.1f} Redis commands per attempt, "
          f"{first['redis_us_per_attempt']:.0f} µs Redis CPU per attempt ({first['row']}, {args.words} words)")


if __name__ == "__main__":
    main()
