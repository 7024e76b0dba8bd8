"""How a forever run's Redis state grows: keys and memory sampled over a long `producer run --forever`.

A private redis-server, the real farm (`producer run --forever`, the bundled model, tiny
max_tokens so that many rounds pass), sampled every INTERVAL seconds: the run's keys, their
memory (MEMORY USAGE), Redis's used_memory, and the conversations accepted so far.

    PYTHONPATH=. .venv/bin/python benchmarks/forever_state.py --seconds 300
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
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from convfarm.runstate import RunStore  # noqa: E402
from producer.local import free_port  # noqa: E402


def sample(client: redis.Redis, store: RunStore) -> dict[str, float]:
    runs = store.list_runs()
    keys = store.run_keys(runs[0]) if runs else []
    memory = sum(client.memory_usage(k) or 0 for k in keys)
    counts = store.counts(runs[0]) if runs else None
    fields = sum(client.hlen(k) for k in keys if client.type(k) == b"hash")
    return {"keys": len(keys), "hash_fields": fields, "run_bytes": memory,
            "used_memory": int(client.info("memory")["used_memory"]), "accepted": counts.accepted if counts else 0,
            "results": (counts.accepted + counts.rejected) if counts else 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--interval", type=float, default=30)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="forever-state-"))
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                              stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    config = json.loads((REPO / "examples" / "example.json").read_text())
    config.update(name="forever-state", max_tokens=48, words=config["words"][:4], near_dup_threshold=None)
    (tmp / "c.json").write_text(json.dumps(config))
    env = {**os.environ, "CONVFARM_BROKER_URL": url, "PYTHONPATH": str(REPO), "CONVFARM_SEAL_IDLE_SECONDS": "5"}
    farm = subprocess.Popen([sys.executable, "-m", "producer.cli", "run", str(tmp / "c.json"), "--out", str(tmp / "out"),
                             "--forever"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    client = redis.Redis.from_url(url)
    store = RunStore(client)
    start = time.monotonic()
    rows = []
    try:
        while time.monotonic() - start < args.seconds:
            time.sleep(args.interval)
            row = {"t": round(time.monotonic() - start), **sample(client, store)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        os.killpg(farm.pid, signal.SIGINT)  # Ctrl-C: the workers finish their task first
        try:
            farm.wait(120)
        except subprocess.TimeoutExpired:  # a task still generating on a loaded machine
            os.killpg(farm.pid, signal.SIGKILL)  # its workers get SIGTERM from PR_SET_PDEATHSIG
            farm.wait(10)
        server.terminate()
        server.wait(10)
    if len(rows) >= 2 and rows[-1]["results"] > rows[0]["results"]:
        grew = (rows[-1]["run_bytes"] - rows[0]["run_bytes"]) / (rows[-1]["results"] - rows[0]["results"])
        print(f"run state grows {grew:.0f} bytes per result; keys {rows[0]['keys']} -> {rows[-1]['keys']}")


if __name__ == "__main__":
    main()
