"""A farm of real processes to break: a private redis-server (AOF, fsync always), celery
workers, the bundled model. Used by tests/test_chaos.py (one case each) and
benchmarks/soak.py (every case, many times).

Each case starts a fresh farm, enqueues a run, injects one fault, lets the farm recover and
then checks what a user relies on (:func:`verify`): every word has its quota or is short
with a reason, the run is ``complete``, no record id and no accepted text appears twice,
every shard parses, the manifest's counts equal the shards' contents.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import redis
import zstandard

from convfarm.messages import RESULTS_STREAM, ConversationRecord
from convfarm.runstate import RunStore, attempt_field, run_id_for, run_key
from producer.local import find_redis_server, free_port
from tests.collector_hooks import HOOKS_ENV
from tests.conftest import REPO, WorkerProcess, start_worker, wait_for, write_config
from tests.inprocess import make_config, make_record
from tests.worker_hooks import worker_env

# Short limits so that an expired lease or a restored message is noticed within seconds.
# CONVFARM_CHAOS_SCALE multiplies the time limits for a slow (shared, overloaded) machine,
# where one 24-token generation can take several seconds.
SCALE = float(os.environ.get("CONVFARM_CHAOS_SCALE", "1"))
CHAOS_ENV = {
    "CONVFARM_SOFT_TIME_LIMIT": str(int(8 * SCALE)),
    "CONVFARM_HARD_TIME_LIMIT": str(int(10 * SCALE)),
    "CONVFARM_LEASE_SECONDS": str(int(12 * SCALE)),
    "CONVFARM_VISIBILITY_TIMEOUT": str(int(15 * SCALE)),
    "CONVFARM_UNACKED_RESTORE_INTERVAL": "3",
    "CONVFARM_CLAIM_IDLE_SECONDS": str(int(5 * SCALE)),
    "CONVFARM_SEAL_IDLE_SECONDS": "2",
    "CONVFARM_MAX_DELIVERIES": "3",
    # the classic cases kill a prefork pool child: one conversation at a time (the batched
    # worker, -P threads, has its own case below)
    "CONVFARM_BATCH_SIZE": "1",
}
WORDS = ["apple", "bridge", "cloud", "dance", "eagle", "forest", "garden", "harbor", "island", "jacket",
         "kettle", "ladder", "market", "needle", "ocean", "pencil", "quilt", "rocket", "saddle", "tunnel",
         "umbrella", "valley", "window", "yogurt", "zebra", "anchor", "basket", "candle", "desert", "engine",
         "feather", "glacier", "hammer", "igloo", "jungle", "kitten", "lantern", "mirror", "nest", "orchard",
         "pillow", "quarry", "ribbon", "shovel", "teapot", "unicorn", "violin", "wagon", "yarn", "zipper",
         "acorn", "bottle", "castle", "dolphin", "easel", "fossil", "guitar", "helmet", "insect", "jewel"]


class PrivateRedis:
    """redis-server on a free port with ``appendonly yes`` and ``appendfsync always``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        binary = find_redis_server()
        assert binary, "the chaos suite needs a redis-server binary"
        self.binary = binary

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                   "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
                   "--logfile", str(self.data_dir / "redis.log")]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False
        wait_for(answers, 30, "the private redis-server to answer")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: whatever was fsync'd to the AOF survives, nothing else."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class ChaosFarm:
    root: Path
    redis: PrivateRedis = field(init=False)
    workers: list[WorkerProcess] = field(default_factory=list)
    # attempt fields (word, U+001F, attempt) that a killed worker was running when it died: the
    # proof that the fault hit work in flight (each must come back: deliveries >= 2)
    hit: list[str] = field(default_factory=list)
    killed_at: dict[str, float] = field(default_factory=dict)  # attempt field -> when its worker was killed
    # attempts being generated when a fault that kills no worker came (a warm shutdown, Redis
    # killed or unreachable): each must reach the output
    at_fault: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.redis = PrivateRedis(self.root / "redis")
        self.redis.start()
        self.out = self.root / "out"
        self.logs = self.root / "logs"

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CONVFARM_FAULT", "CONVFARM_TEST_HOOKS"))}
        return {**base, "CONVFARM_BROKER_URL": self.redis.url, "CONVFARM_OUT_DIR": str(self.out),
                "PYTHONPATH": str(REPO), **CHAOS_ENV, **extra}

    @property
    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, socket_timeout=10)

    def store(self) -> RunStore:
        return RunStore(self.client)

    def start(self, name: str, *, collector: bool = False, **extra: str) -> WorkerProcess:
        worker = start_worker(self.env(**extra), self.logs, name, collector=collector)
        self.workers.append(worker)
        return worker

    def enqueue(self, words: list[str], name: str = "chaos", **fields: object) -> str:
        config = write_config(self.root / f"{name}.json", name=name, words=words,
                              **{"max_tokens": 24, "max_attempts": 2, "shard_size": 4, "n_threads": 1, **fields})
        result = subprocess.run([sys.executable, "-m", "producer.cli", "enqueue", str(config)], cwd=REPO,
                                env=self.env(), capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        match = re.search(r"run (\S+): sent", result.stdout)
        assert match, result.stdout
        return match.group(1)

    def reported(self, run: str) -> int:
        try:
            counts = self.store().counts(run)
        except redis.RedisError:
            return 0
        return counts.accepted + counts.rejected

    def status(self, run: str) -> str:
        try:
            value = self.client.hget(run_key(run), "status")
        except redis.RedisError:
            return ""
        return value.decode() if value else ""

    def wait_complete(self, run: str, timeout: float = 240) -> None:
        wait_for(lambda: self.status(run) == "complete", timeout, f"run {run} to complete\n{self.tails()}", interval=0.5)

    def wait_running(self, worker: WorkerProcess, timeout: float = 120) -> None:
        """Until ``worker`` is in the middle of a task (its pool child generating)."""
        wait_for(lambda: b"Task convfarm.generate" in worker.log.read_bytes() and b"loaded model" in worker.log.read_bytes(),
                 timeout, f"{worker.name} to run a task")

    def running_on(self, run: str, worker: WorkerProcess) -> list[str]:
        """Attempts of ``run`` that ``worker`` is generating now (the run's ``running`` hash)."""
        try:
            raw = self.client.hgetall(run_key(run, "running"))
        except redis.RedisError:
            return []
        return [f.decode() for f, v in raw.items() if json.loads(v).get("worker", "").startswith(f"{worker.name}@")]

    def published(self, run: str) -> set[str]:
        """Attempt fields of ``run`` whose records are on the results stream, not yet committed."""
        try:
            entries = self.client.xrange(RESULTS_STREAM)
        except redis.RedisError:
            return set()
        records = (json.loads(fields[b"record"]) for _, fields in entries)
        return {attempt_field(r["word"], r["attempt"]) for r in records if r.get("run") == run}

    def generating(self, run: str, worker: WorkerProcess) -> list[str]:
        """Wait until ``worker`` generates an attempt of ``run``; the attempts it holds then."""
        # An attempt stays in `running` until the collector counts its outcome, a moment after its
        # record is published: wait for one whose record is not on the stream yet (still generating).
        def held_while_generating() -> list[str]:
            held = self.running_on(run, worker)
            return held if set(held) - self.published(run) else []
        return wait_for(held_while_generating, 120, f"{worker.name} to generate an attempt of {run}", interval=0.05)

    def fault_while_generating(self, run: str, worker: WorkerProcess) -> None:
        """Remember what ``worker`` generates now, for a fault that follows at once (``at_fault``)."""
        self.at_fault.extend(self.generating(run, worker))

    def kill_mid_task(self, run: str, victim: WorkerProcess, pid: int | None = None) -> None:
        """SIGKILL ``victim`` (or its pool child ``pid``) while it generates an attempt of ``run``,
        and remember which attempts it held."""
        held = self.generating(run, victim)
        if pid is None:
            victim.kill(signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
        self.hit.extend(held)
        self.killed_at.update((attempt, time.time()) for attempt in held)

    def tails(self, lines: int = 12) -> str:
        return "\n".join(f"--- {w.name}\n" + "\n".join(w.text().splitlines()[-lines:]) for w in self.workers)

    def close(self) -> None:
        for worker in self.workers:
            worker.send_signal(signal.SIGCONT)
            worker.kill(signal.SIGKILL)  # the farm is thrown away: no need to wait for warm shutdowns
        self.redis.stop()


def pool_children(worker: WorkerProcess) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(worker.proc.pid)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in out]


def verify(farm: ChaosFarm, run: str, words: list[str], per_word: int = 1) -> dict[str, int]:
    """What a user relies on after recovery; returns figures for the soak report."""
    store = farm.store()
    assert farm.status(run) == "complete"
    run_dir = farm.out / run
    def hidden() -> list[str]:
        return sorted(p.name for p in run_dir.iterdir() if p.name.startswith((".open-", ".sealing-")) and p.stat().st_size)
    # a dead collector's open file is adopted once it has been silent CONVFARM_CLAIM_IDLE_SECONDS
    # (at the latest by the next 15 s check): records in hidden files are not output yet
    wait_for(lambda: not hidden(), 60, "hidden files to be sealed")
    # every shard parses completely: whole lines, each one JSON object (strict, unlike
    # read_records, which forgives the torn tail of an open file)
    records: dict[str, list[dict]] = {kind: [] for kind in ("conversations", "rejected")}
    for kind in records:
        for shard in sorted(run_dir.glob(f"{kind}-*.jsonl*")):
            data = shard.read_bytes()
            if shard.suffix == ".zst":
                data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
            assert data.endswith(b"\n"), f"{shard.name} ends in a torn line"
            records[kind].extend(json.loads(line) for line in data.decode("utf-8").split("\n")[:-1])
    everything = records["conversations"] + records["rejected"]
    ids = Counter(r["id"] for r in everything)
    assert not [i for i, n in ids.items() if n > 1], "a record id was written twice"
    texts = Counter(json.dumps(r["turns"]) for r in records["conversations"])
    assert not [t for t, n in texts.items() if n > 1], "an accepted conversation appears twice"
    # the manifest's counts equal the shards' contents
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"  # written before the run's status flips
    assert manifest["counts"]["accepted"] == len(records["conversations"])
    assert manifest["counts"]["rejected"] == len(records["rejected"])
    assert Counter(r["reason"] for r in records["rejected"]) == Counter(manifest["counts"]["by_reason"])
    assert sum(s["records"] for s in manifest["shards"]) == len(everything)
    # every word has its quota, or is short with a reason (a rejected record or a dead letter)
    accepted = Counter(r["word"] for r in records["conversations"])
    short = set(store.short_words(run))
    explained = {r["word"] for r in records["rejected"]} | {d["word"] for d in store.dead_letters.list(run)}
    for word in words:
        if accepted[word] < per_word:
            assert word in short, f"{word}: {accepted[word]} accepted, not marked short"
            assert word in explained, f"{word} is short with no reason"
    # no record's tokens counted twice (a collector killed between its write and its commit mark
    # may leave a batch's tokens uncounted: the shard, not the counter, is the truth)
    tokens_on_disk = sum(r["tokens"]["completion"] for r in everything)
    tokens_counted = store.counts(run).completion_tokens
    assert tokens_counted <= tokens_on_disk, f"completion tokens counted twice: {tokens_counted} > {tokens_on_disk}"
    # each attempt a killed worker held came back (redelivered, or issued again when its lease expired)
    # An attempt still shown as running at the kill may have published its record just before it (it
    # leaves `running` when the collector counts its outcome, ~0.1 s later): not lost, it does not come
    # back. Its record was made before the kill; one that came back was made after.
    made = {f"{r['word']}\x1f{r['attempt']}": datetime.fromisoformat(r["created_at"]).timestamp() for r in everything}
    farm.hit = [a for a in farm.hit if made.get(a, float("inf")) > farm.killed_at.get(a, 0.0)]
    deliveries = store.redis.hmget(run_key(run, "deliveries"), farm.hit) if farm.hit else []
    hit_came_back = sum(1 for d in deliveries if d is not None and int(d) >= 2)
    at_fault_written = sum(1 for a in farm.at_fault if a in made)
    once = store.redis.hmget(run_key(run, "deliveries"), farm.at_fault) if farm.at_fault else []
    # nothing left in flight: no lease of this run is outstanding
    assert not store.leases.of_run(run), f"leases left: {store.leases.of_run(run)}"
    return {"records": len(everything), "accepted": len(records["conversations"]), "short": len(short),
            "dead_letters": store.dead_letters.count(run), "tokens_on_disk": tokens_on_disk,
            "tokens_counted": tokens_counted, "hit": len(farm.hit), "hit_came_back": hit_came_back,
            "at_fault": len(farm.at_fault), "at_fault_written": at_fault_written,
            "at_fault_delivered_once": sum(1 for d in once if d is not None and int(d) == 1),
            "faults": sum(w.text().count("fault injection:") for w in farm.workers),
            "reissued": sum(1 for w in farm.workers for line in w.text().splitlines() if "issued again" in line)}


# --- the cases ---------------------------------------------------------------------------------
# Each takes a fresh farm and the words, runs one fault and returns the run id once it is over.


def case_pool_child_kill(farm: ChaosFarm, words: list[str]) -> str:
    farm.start("collector", collector=True)
    gen = farm.start("gen0")
    run = farm.enqueue(words)
    farm.wait_running(gen)
    for _ in range(2):  # twice, at different points of the run
        before = farm.reported(run)
        wait_for(lambda before=before: pool_children(gen) and farm.reported(run) > before, 120, "progress")
        farm.kill_mid_task(run, gen, pool_children(gen)[0])
    return run


def case_worker_kill(farm: ChaosFarm, words: list[str]) -> str:
    farm.start("collector", collector=True)
    victim = farm.start("gen0")
    farm.start("gen1")
    run = farm.enqueue(words)
    farm.wait_running(victim)
    wait_for(lambda: farm.reported(run) >= 1, 120, "the first result")  # mid-run, with work left for the victim
    farm.kill_mid_task(run, victim)  # the whole worker: its running and reserved tasks are lost with it
    return run


def case_batched_worker_kill(farm: ChaosFarm, words: list[str]) -> str:
    """A batched worker (task threads feeding one engine) killed with several conversations in
    its batch: all of them come back (unacked messages, leases), same record ids, none twice."""
    farm.start("collector", collector=True)
    victim = farm.start("gen0", CONVFARM_BATCH_SIZE="4")
    farm.start("gen1", CONVFARM_BATCH_SIZE="4")
    run = farm.enqueue(words)
    farm.wait_running(victim)
    # killed while its first wave is in flight: a batch's conversations end together, and with 6 words
    # over 8 slots there is no second wave, so after the first result every held attempt may be published
    wait_for(lambda: len(farm.running_on(run, victim)) >= 2, 120, "several conversations in the victim's batch")
    farm.kill_mid_task(run, victim)
    return run


def case_warm_shutdown(farm: ChaosFarm, words: list[str]) -> str:
    farm.start("collector", collector=True)
    gen = farm.start("gen0")
    run = farm.enqueue(words)
    farm.wait_running(gen)
    wait_for(lambda: farm.reported(run) >= 1, 120, "the first result")
    farm.fault_while_generating(run, gen)
    # warm shutdown mid-task: finish the task, then exit. SIGTERM to the main process only, as docker
    # stop and Kubernetes send it; sent to the process group it kills the pool child and its task too
    # (that attempt then comes back by its lease, like any killed worker's)
    gen.send_signal(signal.SIGTERM, group=False)
    gen.proc.wait(60)
    farm.start("gen1")
    return run


def make_collector_fault(point: str) -> Callable[[ChaosFarm, list[str]], str]:
    def case(farm: ChaosFarm, words: list[str]) -> str:
        collector = farm.start("collector", collector=True, CONVFARM_FAULT=point, CONVFARM_FAULT_AFTER="2", **HOOKS_ENV)
        farm.start("gen0")
        run = farm.enqueue(words)
        wait_for(lambda: collector.proc.poll() is not None, 180, f"the collector to kill itself at {point}")
        time.sleep(1)  # results keep arriving while no collector runs
        farm.start("collector", collector=True)  # same name: it finds its own pending list and open files
        return run
    case.__name__ = f"case_collector_{point}"
    return case


def case_redis_kill(farm: ChaosFarm, words: list[str]) -> str:
    farm.start("collector", collector=True)
    gen = farm.start("gen0")
    run = farm.enqueue(words)
    farm.wait_running(gen)
    wait_for(lambda: farm.reported(run) >= 1, 120, "the first result")
    farm.fault_while_generating(run, gen)
    farm.redis.kill()
    time.sleep(2)
    farm.redis.start()  # from its AOF
    return run


def case_redis_unreachable(farm: ChaosFarm, words: list[str]) -> str:
    farm.start("collector", collector=True)
    gen = farm.start("gen0")
    run = farm.enqueue(words)
    farm.wait_running(gen)
    wait_for(lambda: farm.reported(run) >= 1, 120, "the first result")
    farm.fault_while_generating(run, gen)
    farm.redis.signal(signal.SIGSTOP)  # it answers nothing for 10 s, like a partitioned network
    time.sleep(10)
    farm.redis.signal(signal.SIGCONT)
    return run


POISON = "quilt"


def case_poison_word(farm: ChaosFarm, words: list[str]) -> str:
    farm.start("collector", collector=True)
    farm.start("gen0", **worker_env(POISON))
    return farm.enqueue(sorted({*words, POISON}), max_attempts=1)


def case_two_collectors(farm: ChaosFarm, words: list[str]) -> str:
    """Collector a dies for good right after writing a batch it has neither marked committed
    nor acknowledged (its open file keeps records nobody else knows are written); b takes over
    its pending results and adopts its open file, writing nothing twice."""
    first = farm.start("collector-a", collector=True, CONVFARM_FAULT="after_write", CONVFARM_FAULT_AFTER="2", **HOOKS_ENV,
                       CONVFARM_SEAL_IDLE_SECONDS="600")
    farm.start("collector-b", collector=True)
    farm.start("gen0")
    run = farm.enqueue(words)
    wait_for(lambda: first.proc.poll() is not None, 240 * SCALE, "collector a to die after a write")
    return run  # not restarted


# --- several collectors on one run, no model: the records are built here and put on the stream


def seed_run(farm: ChaosFarm, words: list[str], name: str = "multi") -> tuple[str, list[ConversationRecord]]:
    """A run created and issued as ``enqueue`` does, and the first attempt's record of each word."""
    config = make_config(name, words)
    run = run_id_for(config)
    store = farm.store()
    store.issue_shortfall(store.create(run, config, ""))
    return run, [make_record(run, word, 0) for word in words]


def publish_at_once(farm: ChaosFarm, records: list[ConversationRecord]) -> None:
    """One MULTI: a collector blocked on the stream reads all of them in one batch."""
    pipe = farm.client.pipeline()
    for record in records:
        pipe.xadd(RESULTS_STREAM, {"record": record.to_json()})
    pipe.execute()


def case_duplicated_results(farm: ChaosFarm, words: list[str]) -> str:
    """Every result on the stream twice (a worker published twice): collector a holds the first
    copies between its committed check and its write while collector b reads the second copies.
    b must leave them to a (the claim per record id), a writes each once."""
    stalling = {"CONVFARM_FAULT": "before_write", "CONVFARM_FAULT_SIGNAL": "SIGSTOP", **HOOKS_ENV}
    first = farm.start("collector-a", collector=True, CONVFARM_CLAIM_IDLE_SECONDS="600", **stalling)
    run, records = seed_run(farm, words)
    wait_for(lambda: b"started on stream" in first.log.read_bytes(), 120, "collector a to start")
    publish_at_once(farm, records)
    wait_for(lambda: "fault injection: SIGSTOP at before_write" in first.text(), 60, "a to stop inside its batch")
    second = farm.start("collector-b", collector=True, CONVFARM_CLAIM_IDLE_SECONDS="600")
    publish_at_once(farm, records)  # the copies
    wait_for(lambda: "being written by another collector" in second.text(), 120,
             f"collector b to find the ids claimed by a\n{farm.tails()}")
    first.send_signal(signal.SIGCONT)
    return run


def make_stalled_collector(point: str) -> Callable[[ChaosFarm, list[str]], str]:
    """Collector a stops (SIGSTOP) inside a batch at ``point`` (``before_write``: claimed, not
    written; ``after_write``: written, not committed) past the claim idle time; b takes its results
    over (and its open file); a is woken (SIGCONT) after the run is complete: its commit is
    refused and its write rolled back, nothing is written or counted twice."""
    def case(farm: ChaosFarm, words: list[str]) -> str:
        stalling = {"CONVFARM_FAULT": point, "CONVFARM_FAULT_SIGNAL": "SIGSTOP", **HOOKS_ENV}
        first = farm.start("collector-a", collector=True, **stalling)
        run, records = seed_run(farm, words)
        wait_for(lambda: b"started on stream" in first.log.read_bytes(), 120, "collector a to start")
        publish_at_once(farm, records)
        wait_for(lambda: f"fault injection: SIGSTOP at {point}" in first.text(), 60, "a to stop inside its batch")
        second = farm.start("collector-b", collector=True)
        wait_for(lambda: "took over" in second.text(), 120, f"collector b to take a's results over\n{farm.tails()}")
        farm.wait_complete(run)
        first.send_signal(signal.SIGCONT)
        wait_for(lambda: "were taken over" in first.text(), 60, f"collector a to find itself fenced\n{farm.tails()}")
        return run
    case.__name__ = f"case_stalled_collector_{point}"
    return case


def case_seal_race(farm: ChaosFarm, words: list[str]) -> str:
    """Collector a stops while sealing a compressed shard (written to its temporary name, not yet
    renamed); b takes a's results over and, opening the run, finishes the same seal; a is woken:
    its rename must not fail (one shared temporary name made it fail the run), the run stays
    complete and the shard whole."""
    stalling = {"CONVFARM_FAULT": "before_seal_rename", "CONVFARM_FAULT_SIGNAL": "SIGSTOP", **HOOKS_ENV}
    first = farm.start("collector-a", collector=True, **stalling)
    config = make_config("sealrace", words, shard_size=3, compression="zstd")
    run = run_id_for(config)
    store = farm.store()
    store.issue_shortfall(store.create(run, config, ""))
    wait_for(lambda: b"started on stream" in first.log.read_bytes(), 120, "collector a to start")
    publish_at_once(farm, [make_record(run, word, 0) for word in words])
    wait_for(lambda: "SIGSTOP at before_seal_rename" in first.text(), 60, "a to stop inside a seal")
    second = farm.start("collector-b", collector=True)
    wait_for(lambda: "took over" in second.text(), 120, f"collector b to take a's results over\n{farm.tails()}")
    farm.wait_complete(run)
    first.send_signal(signal.SIGCONT)
    wait_for(lambda: "were taken over" in first.text() or "complete" in first.text().split("SIGSTOP", 1)[-1], 60,
             f"collector a to go on after its seal\n{farm.tails()}")
    time.sleep(1)
    assert farm.status(run) == "complete", farm.tails()
    assert "failed" not in first.text(), farm.tails()
    return run


CASES: dict[str, Callable[[ChaosFarm, list[str]], str]] = {
    "pool_child_kill": case_pool_child_kill,
    "worker_kill": case_worker_kill,
    "batched_worker_kill": case_batched_worker_kill,
    "warm_shutdown": case_warm_shutdown,
    **{f"collector_{p}": make_collector_fault(p) for p in ("before_write", "after_write", "after_rename", "before_ack")},
    "redis_kill": case_redis_kill,
    "redis_unreachable": case_redis_unreachable,
    "poison_word": case_poison_word,
    "two_collectors": case_two_collectors,
    "duplicated_results": case_duplicated_results,
    **{f"stalled_collector_{p}": make_stalled_collector(p) for p in ("before_write", "after_write")},
    "seal_race": case_seal_race,
}


Figures = dict[str, float]


def worker_hit(figures: Figures) -> None:
    assert figures["hit"] >= 1, "the worker was killed with no task of the run running"
    assert figures["hit_came_back"] >= 1, "no attempt the killed worker held was delivered again"


def finished_warm(figures: Figures) -> None:
    assert figures["at_fault"] >= 1, "the warm shutdown came with no task of the run running"
    assert figures["at_fault_written"] == figures["at_fault"], "a task running at the warm shutdown was not written"
    assert figures["at_fault_delivered_once"] == figures["at_fault"], "a task finished at the warm shutdown ran again"


def redis_hit(figures: Figures) -> None:
    assert figures["at_fault"] >= 1, "Redis failed with no task of the run running"
    assert figures["at_fault_written"] == figures["at_fault"], "a task running when Redis failed was never written"


def collector_hit(figures: Figures) -> None:
    assert figures["faults"] >= 1, "the collector never reached its checkpoint"


def counted_once(figures: Figures) -> None:
    collector_hit(figures)
    assert figures["tokens_counted"] == figures["tokens_on_disk"], "tokens counted twice or lost"


# what each case proves beyond verify() (every word has its quota or is short with a reason,
# nothing written twice, the manifest equals the shards)
# asserted by run_case, so the soak checks them too
PROOFS: dict[str, Callable[[Figures], None]] = {
    "pool_child_kill": worker_hit,
    "worker_kill": worker_hit,
    "batched_worker_kill": worker_hit,
    "warm_shutdown": finished_warm,
    "redis_kill": redis_hit,
    "redis_unreachable": redis_hit,
    "duplicated_results": counted_once,
    "stalled_collector_before_write": counted_once,
    "stalled_collector_after_write": counted_once,
    **{f"collector_{p}": collector_hit for p in ("before_write", "after_write", "after_rename", "before_ack")},
    "two_collectors": collector_hit,
    "seal_race": counted_once,
}


def run_case(name: str, root: Path, words: list[str], timeout: float = 300) -> dict[str, float]:
    """One case on a fresh farm under ``root``: inject, recover, verify; returns its figures."""
    if root.exists():
        shutil.rmtree(root)
    farm = ChaosFarm(root)
    started = time.monotonic()
    try:
        run = CASES[name](farm, words)
        farm.wait_complete(run, timeout * SCALE)
        wanted = sorted({*words, POISON}) if name == "poison_word" else words
        figures = verify(farm, run, wanted)
        if name == "poison_word":
            letters = farm.store().dead_letters.list(run)
            assert any(d["word"] == POISON for d in letters), "the poison word was not dead-lettered"
            assert POISON in farm.store().short_words(run)
        PROOFS.get(name, lambda _: None)(figures)
        return {**figures, "seconds": round(time.monotonic() - started, 1)}
    finally:
        farm.close()
