"""Soak: repeat every chaos case (tests/chaos.py) many times over a larger run.

    PYTHONPATH=. python benchmarks/soak.py --repeats 10 --words 50          # the issue's target
    PYTHONPATH=. python benchmarks/soak.py --repeats 1 --words 12 --cases redis_kill,worker_kill
    PYTHONPATH=. python benchmarks/soak.py --report --words 50 --log soak.jsonl   # the table of a log

Each repetition starts a fresh farm (private redis-server with appendonly yes + appendfsync
always, a collector, generation workers, the bundled model, max_tokens 24), injects the fault,
waits for the run to complete and verifies: every word has its quota or is short with a
reason, no record id and no accepted text twice, every shard parses, the manifest's counts
equal the shards' contents, and the fault hit work in flight (the case's proof). Prints a
markdown table (for the README's Reliability section) and writes every repetition's figures
as JSON lines to --log.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos import CASES, SCALE, WORDS, run_case


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--words", type=int, default=50, help=f"words per run (at most {len(WORDS)})")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--log", type=Path, default=Path("soak.jsonl"))
    parser.add_argument("--budget", type=float, default=0, help="stop starting new repetitions after this many seconds")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: print the table of every repetition in --log (of --words words)")
    args = parser.parse_args()
    if args.report:
        results: dict[str, list[dict]] = {}
        for line in args.log.read_text().splitlines():
            row = json.loads(line)
            if row.get("words") == args.words:
                results.setdefault(row["case"], []).append(row)
        return print_table(results, args.words)
    words = WORDS[: args.words]
    cases = [c for c in args.cases.split(",") if c]
    results: dict[str, list[dict]] = {c: [] for c in cases}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="convfarm-soak-") as tmp, args.log.open("a") as log:
        for repeat in range(args.repeats):
            for case in cases:
                if args.budget and time.monotonic() - started > args.budget:
                    break
                try:
                    figures = {"ok": True, **run_case(case, Path(tmp) / case, words)}
                except Exception as exc:  # noqa: BLE001 (a failed repetition is a figure, not the end of the soak)
                    figures = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
                    traceback.print_exc()
                figures.update(case=case, repeat=repeat, words=len(words), scale=SCALE)
                results[case].append(figures)
                log.write(json.dumps(figures) + "\n")
                log.flush()
                print(json.dumps(figures), flush=True)
    return print_table(results, len(words))


def print_table(results: dict[str, list[dict]], words: int) -> int:
    """The markdown table for the README's Reliability section; 0 when every repetition passed.
    A passing repetition also proved that its fault hit work in flight (tests/chaos.py PROOFS)."""
    print("\n| case | runs | passed | words/run | records per run | median s | re-issued by a lease (total) "
          "| dead letters (total) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for case, rows in results.items():
        if not rows:
            continue
        ok = [r for r in rows if r["ok"]]
        seconds = sorted(r["seconds"] for r in ok)
        median = seconds[len(seconds) // 2] if seconds else float("nan")
        records = sorted({r["records"] for r in ok})
        spread = "" if not records else str(records[0]) if len(records) == 1 else f"{records[0]}–{records[-1]}"
        print(f"| {case} | {len(rows)} | {len(ok)} | {words} | {spread} | {median:.0f} | "
              f"{sum(r.get('reissued', 0) for r in ok)} | {sum(r.get('dead_letters', 0) for r in ok)} |")
    for case, rows in results.items():
        for row in rows:
            if not row["ok"]:
                print(f"failed: {case} repeat {row.get('repeat')}: {row.get('error', '')[:500]}")
    return 0 if all(r["ok"] for rows in results.values() for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
