"""One table: batched decoding, the farm end to end, the pipeline, worker memory.

    python benchmarks/throughput.py                 # the whole table (~30 min on 2 cores)
    python benchmarks/throughput.py --quick         # fewer requests and tasks (~5 min), same columns

Rows, all measured in this one run (the machine is shared: compare within the run):

1. **engine**: the same requests (the example config's prompt and sampling, streaming rules
   and early stop as in a worker, fixed seeds) one at a time (the engine with one slot and a
   KV stream of its own: what ``Llama.create_completion`` makes, token for token, tested in
   tests/test_batched_engine.py, and what a worker did before batching; the farm has no other
   generation path since) and through the batched engine with N = 1, 2, 4, 8, 16 slots;
   aggregate completion tokens/s and the ratio to the one-at-a-time side. Generation only: the
   relevance judge's scoring is left out (``score=False``), so the rows compare with earlier
   tables. The sides alternate (``--rounds``) and each figure is the mean.
   "All slots busy" is the engine's rate over its loop rounds that decoded with every slot
   taken (admissions included): a worker in a long run, without the drain of the last wave,
   when fewer than N requests are left (a sixth of a 48-request side at N = 8).
   ``llama-batched-bench`` (PP 40, TG 128, same N) sits beside it when the tool is found
   (``--batched-bench PATH`` or ``$LLAMA_BATCHED_BENCH`` or PATH).
2. **producer run**: the command a user runs, with a private embedded Redis, at the default
   batch size and at ``--batch-size 1``; accepted conversations/s over the command's wall time
   (start-up and shutdown included) and over the run itself (enqueue to complete).
3. **pipeline**: collector records/s and enqueue words/s (``benchmarks/pipeline_throughput.py
   --embedded`` in a fresh process: the embedded Redis, AOF with appendfsync everysec).
4. **worker RSS**: a batched worker's resident memory over ``--rss-tasks`` short tasks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from convfarm.config import RunConfig, load_config  # noqa: E402
from convfarm.settings import Settings  # noqa: E402

T = TypeVar("T")
EXAMPLE = REPO / "examples" / "example.json"
WORDS = ("bridge leaf camera village pocket promise garden mirror river candle ladder forest island tunnel "
         "planet market engine button bear room light wave energy motion speed field charge heat mass force "
         "music paper cloud stone apple window kettle harbor blanket compass lantern meadow orchard "
         "pepper ribbon saddle teapot violin wagon anchor barrel castle desert feather glacier hammer "
         "jacket kitchen lemon magnet needle ocean pillow rabbit shadow thunder valley whistle bottle "
         "canyon dragon fossil garlic helmet insect jungle kite lobster marble nest oyster parrot "
         "quilt rocket spider tiger umbrella saucer tractor walnut yacht zebra beacon cactus dolphin "
         "falcon").split()  # 96: --e2e-words up to 96
SIZES = (1, 2, 4, 8, 16)
PER_SEQUENCE = "per-sequence"
# both sides decode freely: grammar runs differ between the two paths by design
FREE = {"structure": "free"}


@dataclass
class Side:
    name: str
    tok_s: list[float] = field(default_factory=list)
    steady_tok_s: list[float] = field(default_factory=list)  # engines: steps with every slot busy
    conv_s: list[float] = field(default_factory=list)
    tokens: int = 0

    @property
    def mean_tok_s(self) -> float:
        return statistics.mean(self.tok_s) if self.tok_s else 0.0

    @property
    def mean_steady_tok_s(self) -> float:
        return statistics.mean(self.steady_tok_s) if self.steady_tok_s else 0.0


def on_own_thread(work: Callable[[], T]) -> T:
    """Run ``work`` on a thread that ends with it.

    llama.cpp's CPU backend (built with OpenMP, the default) decodes ~2.7× slower on a thread
    while *another* live thread of the process keeps an OpenMP team (measured on this machine:
    11 ms vs 30 ms a token; docs/batched-decoding.md). A worker decodes on one thread only (the
    engine's); so that each side here measures what a worker gets, every side decodes on a
    thread of its own that is gone before the next side starts, and each engine is created for
    its side and closed after it (its decode thread ends with it).
    """
    box: list[T] = []
    thread = threading.Thread(target=lambda: box.append(work()))
    thread.start()
    thread.join()
    if not box:
        raise RuntimeError("the benchmark side failed (see the traceback above)")
    return box[0]


def engine_rows(args: argparse.Namespace) -> tuple[Side, dict[int | str, Side]]:
    from convfarm.engine import GenerationRequest, ResidentModel, default_threads
    from convfarm.engine.batched import BatchedEngine

    config, _ = load_config(EXAMPLE, max_tokens=args.max_tokens, **FREE)
    words = (WORDS[:35] * 4)[: args.requests]  # the first tables' requests: 35 words, then repeats
    requests = [GenerationRequest(config=config, word=w, seed=1000 + i) for i, w in enumerate(words)]
    model = ResidentModel(config.model, n_ctx=config.n_ctx, n_gpu_layers=0, n_threads=args.threads)
    shapes: dict[int | str, tuple[int, bool]] = {n: (n, True) for n in args.sizes}
    baseline = Side("one at a time")
    sides: dict[int | str, Side] = {n: Side(f"engine N={n}") for n in args.sizes}
    if args.per_sequence:  # the exact-equality layout beside the default at the same N
        shapes[PER_SEQUENCE] = (args.per_sequence, False)
        sides[PER_SEQUENCE] = Side(f"N={args.per_sequence} per-seq")

    def one_at_a_time() -> list[Any]:
        return batched(1, False)

    steady: list[float] = []  # the last engine side's tok/s over the steps with every slot busy

    def batched(n: int, unified: bool) -> list[Any]:
        engine = model._engine = BatchedEngine(model.llama._model.model, n_slots=n, n_ctx_per_seq=config.n_ctx,
                                               n_threads=args.threads or default_threads(), kv_unified=unified)
        try:
            return list(model.generate(requests, score=False))  # generate() goes through model._engine
        finally:
            steady[:] = [engine.full_completion_tokens / engine.full_seconds if engine.full_seconds else 0.0]
            engine.close()
            model._engine = None

    on_own_thread(lambda: list(model.generate(requests[:2], score=False)))  # warm-up (page the weights in)
    model.engine.close()  # the warm-up's engine: each side below makes its own
    model._engine = None
    for round_no in range(args.rounds):
        order: list[int | str | None] = [None, *shapes]
        if round_no % 2:
            order.reverse()  # alternate the order: drift on a shared machine hits every side alike
        for key in order:
            started = time.perf_counter()
            if key is None:
                outcomes = on_own_thread(one_at_a_time)
            else:
                n, unified = shapes[key]
                outcomes = on_own_thread(lambda n=n, unified=unified: batched(n, unified))
            seconds = time.perf_counter() - started
            tokens = sum(o.completion_tokens for o in outcomes)
            side = baseline if key is None else sides[key]
            side.tok_s.append(tokens / seconds)
            if key is not None:
                side.steady_tok_s.extend(steady)
            side.conv_s.append(sum(o.reason is None for o in outcomes) / seconds)
            side.tokens = tokens
            busy = f" (all slots busy: {steady[0]:6.1f} tok/s)" if key is not None and steady else ""
            print(f"  round {round_no + 1}: {side.name:14s} {tokens:5d} tokens in {seconds:6.1f}s = "
                  f"{tokens / seconds:6.1f} tok/s{busy}", flush=True)
    model.close()
    return baseline, sides


def batched_bench(path: str | None, model_path: Path, threads: int, extra_buffers: bool) -> dict[int, float]:
    """llama.cpp's own figure: S_TG t/s of ``llama-batched-bench -npp 40 -ntg 128 -npl 1,2,4,8,16``."""
    binary = path or os.environ.get("LLAMA_BATCHED_BENCH") or shutil.which("llama-batched-bench")
    if not binary or not Path(binary).exists():
        return {}
    out = subprocess.run([binary, "-m", str(model_path), "-c", "8192", "-b", "512", "-ub", "512", "-npp", "40",
                          "-ntg", "128", "-npl", ",".join(map(str, SIZES)), "-t", str(threads), "-kvu",
                          *([] if extra_buffers else ["-nr"])],  # AMX CPUs: as the worker loads the model
                         capture_output=True, text=True, timeout=1800).stdout
    figures: dict[int, float] = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[0].isdigit():
            # |    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
            figures[int(cells[2])] = float(cells[7])
    return figures


def producer_run(config: Path, batch_size: int | None, tmp: Path, label: str) -> tuple[float, float, int]:
    """``producer run`` as a user calls it, private Redis: (accepted/s over the command, over the run, accepted)."""
    out = tmp / label
    env = {k: v for k, v in os.environ.items() if k not in ("CONVFARM_BROKER_URL", "REDIS_URL")}
    command = [sys.executable, "-m", "producer.cli", "run", str(config), "--out", str(out), "--embedded-redis"]
    if batch_size is not None:
        command += ["--batch-size", str(batch_size)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"producer run failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
    (run_dir,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    accepted = int(manifest["counts"].get("accepted", 0)) if "counts" in manifest else _accepted(run_dir)
    records = [json.loads(line) for shard in run_dir.glob("conversations-*.jsonl") for line in shard.open()]
    run_seconds = _run_span(records) or seconds
    return accepted / seconds, accepted / run_seconds, accepted


def _accepted(run_dir: Path) -> int:
    return sum(1 for shard in run_dir.glob("conversations-*.jsonl") for _ in shard.open())


def _run_span(records: list[dict]) -> float:
    """First record's generation start to last record's creation: the run without start-up and shutdown."""
    from datetime import datetime

    if not records:
        return 0.0
    ends = [datetime.fromisoformat(r["created_at"]).timestamp() for r in records]
    starts = [e - r["generation_seconds"] for e, r in zip(ends, records, strict=True)]
    return max(ends) - min(starts)


def e2e_rows(args: argparse.Namespace, tmp: Path) -> dict[str, tuple[float, float, int]]:
    _config, _ = load_config(EXAMPLE, max_tokens=args.max_tokens)
    data = json.loads(EXAMPLE.read_text())
    if args.e2e_words > len(WORDS):
        raise SystemExit(f"--e2e-words: at most {len(WORDS)}")
    data.update(name="e2e", words=list(WORDS[: args.e2e_words]), max_tokens=args.max_tokens, max_attempts=1)
    path = tmp / "e2e.json"
    path.write_text(json.dumps(data))
    default = Settings().batch_size
    rows: dict[str, list[tuple[float, float, int]]] = {f"N={default} (default)": [], "N=1": []}
    for round_no in range(args.e2e_rounds):
        for label, size in ((f"N={default} (default)", None), ("N=1", 1))[:: 1 if round_no % 2 == 0 else -1]:
            figures = producer_run(path, size, tmp, f"n{size or 'default'}-{round_no}")
            rows[label].append(figures)
            print(f"  round {round_no + 1}: producer run {label:14s} {figures[2]} accepted, "
                  f"{figures[0]:.2f} conv/s (command), {figures[1]:.2f} conv/s (run)", flush=True)
    return {label: (statistics.mean(f[0] for f in runs), statistics.mean(f[1] for f in runs), runs[-1][2])
            for label, runs in rows.items()}


def pipeline_rows(args: argparse.Namespace) -> tuple[float, float]:
    """``pipeline_throughput.py --embedded`` in a fresh process, so that nothing the engine left in
    this one (llama.cpp's threads and memory) weighs on it: the figures are the script's own."""
    n = str(args.pipeline_n)
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "pipeline_throughput.py"), "--embedded",
                             "--records", n, "--words", n], cwd=REPO, capture_output=True, text=True, timeout=3600)
    words = re.search(r"enqueue: .*?([\d,]+) words/s", result.stdout)
    records = re.search(r"collector: .*?([\d,]+) records/s", result.stdout)
    if not (words and records):
        raise RuntimeError(f"pipeline_throughput.py failed: {result.stdout[-500:]}{result.stderr[-1000:]}")
    return float(records[1].replace(",", "")), float(words[1].replace(",", ""))


def rss_rows(args: argparse.Namespace) -> tuple[list[tuple[int, float]], str]:
    """``benchmarks/worker_memory.py`` at the default batch size: (tasks, MiB) samples."""
    rounds = max(2, args.rss_tasks // 50)
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "worker_memory.py"), "--rounds", str(rounds),
                             "--words", "50", "--max-tokens", "24"], cwd=REPO, capture_output=True, text=True,
                            timeout=3600)
    samples = [(int(m.group(1)), float(m.group(2)))
               for m in re.finditer(r"after\s+(\d+) tasks: worker RSS\s+([\d.]+) MiB", result.stdout)]
    return samples, result.stdout + result.stderr[-1000:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests, rounds and tasks")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="engine batch sizes, e.g. 1,8")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--per-sequence", type=int, default=8, help="also this N with the per-sequence KV layout (0: not)")
    # 96 words: a 32-word run at N=8 lasts ~25 s, of which ~2.5 s are start-up and shutdown and
    # ~4 s the last wave's tail, both fixed costs that a farm-sized run does not see
    parser.add_argument("--e2e-words", type=int, default=96, help="words of the producer run rows (<= 96)")
    parser.add_argument("--e2e-rounds", type=int, default=1)
    parser.add_argument("--pipeline-n", type=int, default=20_000)
    parser.add_argument("--rss-tasks", type=int, default=1000)
    parser.add_argument("--batched-bench", default=None, help="path of llama.cpp's llama-batched-bench")
    parser.add_argument("--skip", default="", help="comma-separated: engine,e2e,pipeline,rss")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds, args.e2e_words, args.e2e_rounds = 24, 1, 16, 1
        args.pipeline_n, args.rss_tasks = 5000, 200
    skip = set(filter(None, args.skip.split(",")))
    args.sizes = tuple(int(n) for n in str(args.sizes).split(","))
    from convfarm.engine import default_threads
    from convfarm.model_files import resolve_model

    threads = args.threads or default_threads()
    config: RunConfig = load_config(EXAMPLE)[0]
    print(f"machine: {os.cpu_count()} CPUs ({threads} threads for llama.cpp), model {config.model}, "
          f"max_tokens {args.max_tokens}", flush=True)
    lines = ["| measure | figure | vs baseline | target |", "|---|---:|---:|---|"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "engine" not in skip:
            print(f"engine: {args.requests} requests, {args.rounds} round(s)", flush=True)
            baseline, sides = engine_rows(args)
            from convfarm.engine.cpu_buffers import use_extra_buffers

            bench = batched_bench(args.batched_bench, resolve_model(config.model), threads,
                                  use_extra_buffers(Settings().cpu_extra_buffers))
            lines.append(f"| one-at-a-time worker path (create_completion) | {baseline.mean_tok_s:.1f} tok/s | 1.00× | |")
            for n, side in sides.items():
                if n == PER_SEQUENCE:
                    lines.append(f"| batched engine N={args.per_sequence}, per-sequence KV | {side.mean_tok_s:.1f} tok/s | "
                                 f"**{side.mean_tok_s / baseline.mean_tok_s:.2f}×** | |")
                    continue
                ratio = side.mean_tok_s / baseline.mean_tok_s
                target = "≥ 2× at N=8" if n == 8 else ""
                llama = f"; llama-batched-bench {bench[n]:.1f} tok/s ({side.mean_tok_s / bench[n]:.2f}×)" \
                    if n in bench else ("; llama-batched-bench not built" if n == 8 and not bench else "")
                busy = side.mean_steady_tok_s
                lines.append(f"| batched engine N={n} | {side.mean_tok_s:.1f} tok/s (all slots busy: {busy:.1f}){llama} | "
                             f"**{ratio:.2f}×** (all busy {busy / baseline.mean_tok_s:.2f}×) | {target} |")
        if "e2e" not in skip:
            print(f"producer run: {args.e2e_words} words, {args.e2e_rounds} round(s) per side", flush=True)
            e2e = e2e_rows(args, tmp)
            (default_label, (d_cmd, d_run, _)), (_, (one_cmd, one_run, _)) = e2e.items()
            row = f"| producer run ({args.e2e_words} words)"
            lines.append(f"{row}, N=1 | {one_cmd:.2f} conv/s (run only: {one_run:.2f}) | 1.00× | |")
            lines.append(f"{row}, {default_label} | {d_cmd:.2f} conv/s (run only: {d_run:.2f}) | "
                         f"**{d_cmd / one_cmd:.2f}×** (run only {d_run / one_run:.2f}×) | ≥ 1.8× |")
        if "pipeline" not in skip:
            print(f"pipeline: {args.pipeline_n} records / words", flush=True)
            records_s, words_s = pipeline_rows(args)
            lines.append(f"| collector | {records_s:,.0f} records/s | | ≥ 5,000 |")
            lines.append(f"| enqueue | {words_s:,.0f} words/s | | ≥ 5,000 |")
        if "rss" not in skip:
            print(f"worker RSS: {args.rss_tasks} tasks at the default batch size", flush=True)
            samples, text = rss_rows(args)
            if len(samples) >= 2:
                mid = samples[len(samples) // 2]
                lines.append(f"| batched worker RSS | {samples[0][1]:.1f} MiB after {samples[0][0]} tasks, "
                             f"{mid[1]:.1f} after {mid[0]}, {samples[-1][1]:.1f} after {samples[-1][0]} | | flat |")
            else:
                lines.append(f"| batched worker RSS | failed: {text[-300:]!r} | | flat |")
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
