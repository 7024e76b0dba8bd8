"""A forever run's Redis state per round, without the model: the real Collector and RunStore fed
one result per issued attempt, round after round (what workers would send), on a private
redis-server. Before each result the task's own calls are made (count the delivery, take the
lease, show it running); every ``--reject-every``-th result is rejected, so retries happen.
Measures the run's keys, entries (hash fields, set members, list items) and memory
(``MEMORY USAGE ... SAMPLES 0``: exact) every ``--every`` rounds.

    PYTHONPATH=. nice -n 15 .venv/bin/python benchmarks/forever_state_rounds.py --rounds 400 --words 50 \
        --window 5000 --every 40
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.private_redis import private_redis  # noqa: E402
from convfarm.config import parse_config  # noqa: E402
from convfarm.messages import ConversationRecord, ModelIdentity, TokenCounts, Turn  # noqa: E402
from convfarm.rules import roles_for  # noqa: E402
from convfarm.runstate import RunStore, run_id_for  # noqa: E402
from workers.collector import Collector  # noqa: E402


def record(run: str, word: str, attempt: int) -> ConversationRecord:
    turns = [Turn(speaker="STUDENT", text=f'What does "{word}" mean? ({attempt})'),
             Turn(speaker="TEACHER", text=f"{word} number {attempt} is a thing {attempt * 7919 % 10007} people use.")]
    return ConversationRecord(
        id=f"{run}:{word}:{attempt}", run=run, word=word, attempt=attempt, status="accepted", turns=turns,
        messages=roles_for(turns), raw="...", ended_by="eos",
        model=ModelIdentity(name="smollm2-135m", file="m.gguf", sha256="ab" * 32, size=1),
        params={}, seed=attempt, worker="w@h", tokens=TokenCounts(prompt=30, completion=40), generation_seconds=0.1)


def entries(client: redis.Redis, key: str) -> int:
    kind = client.type(key)
    return {b"hash": client.hlen, b"set": client.scard, b"list": client.llen, b"zset": client.zcard}.get(
        kind, lambda _k: 1)(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--words", type=int, default=50)
    parser.add_argument("--window", type=int, default=None,
                        help="the collector's dedup window (default: CONVFARM_DEDUP_WINDOW, or its default)")
    parser.add_argument("--reject-every", type=int, default=10, help="every Nth result is rejected (0: none)")
    parser.add_argument("--every", type=int, default=1, help="print every Nth round")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="forever-rounds-"))
    with private_redis(tmp) as client:
        data = json.loads((REPO / "examples" / "example.json").read_text())
        data.update(words=[f"word{i}" for i in range(args.words)], exclude=[])
        config, _ = parse_config(data)
        store = RunStore(client)
        run = run_id_for(config)
        store.create(run, config, str(tmp / "out"))
        store.set_forever(run, True)
        pending = store.issue_shortfall(store.get(run))
        sent: list[tuple[str, int]] = []
        collector = Collector(client, "bench", send_task=lambda _info, w, a: sent.append((w, a)), out_root=tmp / "out")
        if args.window is not None:
            collector.dedup.window = args.window
        print(json.dumps({"dedup_window": collector.dedup.window}), flush=True)
        results = accepted = 0
        for round_ in range(1, args.rounds + 1):
            # a round ends when every word has its quota: rejected attempts' retries come back
            # first, then the collector raises the target and sends the next round's tasks
            while store.get(run).round == round_:
                batch = []
                for w, a in pending:
                    store.count_delivery(run, w, a)  # what the task does before it generates
                    store.leases.extend(run, w, a, worker="bench@host")
                    results += 1
                    rejected = args.reject_every and results % args.reject_every == 0
                    accepted += not rejected
                    r = record(run, w, a)
                    if rejected:
                        r = r.model_copy(update={"status": "rejected", "reason": "too_short"})
                    batch.append((b"0-0", {b"record": r.to_json().encode()}))
                collector.process(batch)
                pending, sent[:] = list(sent), []
            if round_ % args.every and round_ != args.rounds:
                continue
            keys = store.run_keys(run)
            memory = sum(client.memory_usage(k, samples=0) or 0 for k in keys)
            print(json.dumps({"round": round_, "results": results, "accepted": accepted, "keys": len(keys),
                              "entries": sum(entries(client, k) for k in keys), "run_bytes": memory,
                              "bytes_per_result": round(memory / results)}), flush=True)
        sizes = {k.removeprefix(f"convfarm:run:{run}").lstrip(":") or "(meta)":
                 (client.memory_usage(k, samples=0) or 0, entries(client, k)) for k in keys}
        print(json.dumps({"largest_keys (bytes, entries)": dict(sorted(sizes.items(), key=lambda kv: -kv[1][0])[:10])}))


if __name__ == "__main__":
    main()
