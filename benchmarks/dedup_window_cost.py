"""What the dedup window costs: ``Deduplicator.judge`` with a window that evicts on every kept
record against no window, on a private redis-server, sides interleaved (compare within the run).

The records are ``pipeline_throughput.py``'s (varied 4-turn conversations, 1 in 10 an exact
copy, 1 in 10 a near copy), judged in batches of 500 as the collector does.

    PYTHONPATH=. nice -n 15 .venv/bin/python benchmarks/dedup_window_cost.py --records 20000 --window 1000 --repeats 4
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.pipeline_throughput import config_for, make_records  # noqa: E402
from benchmarks.private_redis import private_redis  # noqa: E402
from convfarm.config import parse_config  # noqa: E402
from workers.dedup import Deduplicator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=1_000, help="the windowed side's window (kept records)")
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    with private_redis(Path(tempfile.mkdtemp(prefix="dedup-window-"))) as client:
        words = [f"term{i}" for i in range(args.records // 2)]
        config, _ = parse_config(config_for(words, "window-cost", per_word=2))
        records = make_records("window-cost", words, random.Random(1))
        rates: dict[int, list[float]] = {0: [], args.window: []}
        for repeat in range(args.repeats):
            for window in rates:
                client.flushdb()
                dedup = Deduplicator(client, window=window)
                started = time.perf_counter()
                for start in range(0, len(records), 500):
                    dedup.judge(f"run{repeat}", config, records[start:start + 500])
                rates[window].append(len(records) / (time.perf_counter() - started))
        base = statistics.median(rates[0])
        for window, values in rates.items():
            print(f"window {window or 'none'}: {statistics.median(values):,.0f} records/s median "
                  f"({', '.join(f'{v:,.0f}' for v in values)}); {statistics.median(values) / base:.2f}x")


if __name__ == "__main__":
    main()
