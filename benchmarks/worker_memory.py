"""Worker memory over a long run (target: RSS stays flat, no growth per task).

Starts the one-machine farm (embedded Redis, collector, one generation worker), runs
ROUNDS runs of WORDS short tasks each, and samples the resident set size of the process
that holds the model (the prefork pool child) after every round. Prints the samples and
the growth per 100 tasks after the first round (the first round includes the model load).

    python benchmarks/worker_memory.py [--rounds 10] [--words 50] [--max-tokens 24]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from convfarm.broker import celery_client, redis_client  # noqa: E402
from convfarm.config import load_config  # noqa: E402
from convfarm.messages import queue_for_model  # noqa: E402
from convfarm.runstate import run_key  # noqa: E402
from convfarm.settings import Settings  # noqa: E402
from producer.enqueue import enqueue  # noqa: E402
from producer.local import local_farm  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def pool_child(parent: int) -> int:
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
    return int(out[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--words", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()
    base, _ = load_config(REPO / "examples" / "example.json")
    samples: list[tuple[int, int]] = []
    with tempfile.TemporaryDirectory() as tmp, \
            local_farm(queue_for_model(base.model), Path(tmp), embedded_redis=True) as (url, farm):
        settings = Settings(broker_url=url)
        client, celery = redis_client(settings), celery_client(settings)
        tasks = 0
        for round_no in range(args.rounds):
            words = [f"{w}{round_no}x{i}" for i in range(args.words) for w in ("leaf",)]
            config = base.model_copy(update={"name": f"mem{round_no}", "words": words, "max_tokens": args.max_tokens,
                                             "max_attempts": 1})
            info, _ = enqueue(config, client=client, celery=celery, out_dir=Path(tmp))
            while client.hget(run_key(info.run), "status") != b"complete":
                time.sleep(0.05)
            tasks += len(words)
            samples.append((tasks, rss_kib(pool_child(farm.procs["gen0"].pid))))
            print(f"after {tasks:5d} tasks: worker RSS {samples[-1][1] / 1024:7.1f} MiB", flush=True)
    (first_tasks, first_rss), (last_tasks, last_rss) = samples[0], samples[-1]
    growth = (last_rss - first_rss) / max(1, last_tasks - first_tasks) * 100
    print(f"growth after the first round: {(last_rss - first_rss) / 1024:+.1f} MiB over {last_tasks - first_tasks} tasks "
          f"({growth:+.1f} KiB per 100 tasks)")
    # a leak grows at the same rate all along; warm-up (caches, allocator arenas) levels off
    mid_tasks, mid_rss = samples[len(samples) // 2]
    print(f"growth over the second half: {(last_rss - mid_rss) / 1024:+.1f} MiB over {last_tasks - mid_tasks} tasks")


if __name__ == "__main__":
    main()
