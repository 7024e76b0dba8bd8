"""A forever run's Redis state per round, without the model: the real Collector and RunStore fed
one result per issued attempt, round after round (what workers would send), on a private
redis-server. Measures the run's keys, hash fields and memory (MEMORY USAGE) after each round.

    PYTHONPATH=. .venv/bin/python benchmarks/forever_state_rounds.py --rounds 40 --words 50
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from convfarm.config import parse_config  # noqa: E402
from convfarm.messages import ConversationRecord, ModelIdentity, TokenCounts, Turn  # noqa: E402
from convfarm.rules import roles_for  # noqa: E402
from convfarm.runstate import RunStore, run_id_for  # noqa: E402
from producer.local import free_port  # noqa: E402
from workers.collector import Collector  # noqa: E402


def record(run: str, word: str, attempt: int) -> ConversationRecord:
    turns = [Turn(speaker="STUDENT", text=f'What does "{word}" mean? ({attempt})'),
             Turn(speaker="TEACHER", text=f"{word} number {attempt} is a thing {attempt * 7919 % 10007} people use.")]
    return ConversationRecord(
        id=f"{run}:{word}:{attempt}", run=run, word=word, attempt=attempt, status="accepted", turns=turns,
        messages=roles_for(turns), raw="...", ended_by="eos",
        model=ModelIdentity(name="smollm2-135m", file="m.gguf", sha256="ab" * 32, size=1),
        params={}, seed=attempt, worker="w@h", tokens=TokenCounts(prompt=30, completion=40), generation_seconds=0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--words", type=int, default=50)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="forever-rounds-"))
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                              stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        data = json.loads((REPO / "examples" / "example.json").read_text())
        data.update(words=[f"word{i}" for i in range(args.words)], exclude=[])
        config, _ = parse_config(data)
        store = RunStore(client)
        run = run_id_for(config)
        info = store.create(run, config, str(tmp / "out"))
        store.set_forever(run, True)
        pending = store.issue_shortfall(store.get(run))
        sent: list[tuple[str, int]] = []
        collector = Collector(client, "bench", send_task=lambda _info, w, a: sent.append((w, a)), out_root=tmp / "out")
        for round_ in range(1, args.rounds + 1):
            entries = [(b"0-0", {b"record": record(run, w, a).to_json().encode()}) for w, a in pending]
            collector.process(entries)
            pending, sent[:] = list(sent), []
            keys = store.run_keys(run)
            memory = sum(client.memory_usage(k) or 0 for k in keys)
            fields = sum(client.hlen(k) for k in keys if client.type(k) == b"hash")
            print(json.dumps({"round": round_, "results": round_ * args.words, "keys": len(keys), "hash_fields": fields,
                              "run_bytes": memory, "bytes_per_result": round(memory / (round_ * args.words))}),
                  flush=True)
        del info
        sizes = {k.removeprefix(f"convfarm:run:{run}").lstrip(":") or "(meta)": client.memory_usage(k) or 0 for k in keys}
        print(json.dumps({"largest_keys": dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:6])}))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
