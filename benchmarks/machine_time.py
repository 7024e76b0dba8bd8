"""Does a run's machine time add up to the time its workers spent? (docs/design.md, "Cost")

    PYTHONPATH=. .venv/bin/python benchmarks/machine_time.py RUN_DIR [RUN_DIR ...]

Reads every record of a finished run directory (accepted and rejected shards) and compares,
per worker, three figures:

* the worker's span: from the start of its first conversation (``created_at`` minus the
  record's latency, ``generation_seconds``) to its last record's ``created_at``;
* the sum of the records' machine time (``machine_seconds``: each record's share of its
  worker's busy time);
* the sum of the records' latencies, what the summary used to add up (batch × too much).

A worker that was busy from its first conversation to its last has machine time ≈ span. The
manifest's ``depth_and_cost.machine_seconds`` is printed beside the sum, which it must equal.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from convfarm.rundir.reader import read_manifest, read_run


def figures(run_dir: Path) -> list[dict[str, object]]:
    by_worker: dict[str, list[dict]] = defaultdict(list)
    for record in [*read_run(run_dir), *read_run(run_dir, "rejected")]:
        by_worker[record["worker"] or "?"].append(record)
    rows = []
    for worker, records in sorted(by_worker.items()):
        ends = [datetime.fromisoformat(r["created_at"]).timestamp() for r in records]
        starts = [end - r["generation_seconds"] for end, r in zip(ends, records, strict=True)]
        machine = sum(r.get("machine_seconds") or 0.0 for r in records)
        latency = sum(r["generation_seconds"] for r in records)
        span = max(ends) - min(starts)
        rows.append({"worker": worker, "records": len(records), "span_s": round(span, 2),
                     "machine_s": round(machine, 2), "latency_s": round(latency, 2),
                     "machine_over_span": round(machine / span, 3) if span else None,
                     "latency_over_span": round(latency / span, 2) if span else None})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    print("| run | worker | records | span s | Σ machine s | machine ÷ span | Σ latency s | latency ÷ span "
          "| manifest machine s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for run_dir in args.run_dirs:
        in_manifest = read_manifest(run_dir).get("depth_and_cost", {}).get("machine_seconds")
        for row in figures(run_dir):
            print(f"| {run_dir.name} | {row['worker']} | {row['records']} | {row['span_s']} | {row['machine_s']} "
                  f"| {row['machine_over_span']} | {row['latency_s']} | {row['latency_over_span']} | {in_manifest} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
