"""The GPU run's figures, called by benchmarks/gpu/run_h200.sh (README.md beside this file).

    python benchmarks/gpu/h200_bench.py table --sizes 1,8,32,64,128 --n-gpu-layers -1 \\
        --batched-bench PATH/llama-batched-bench --json table.json
    python benchmarks/gpu/h200_bench.py farm --words 300 --batch-size 64 --gpu-log gpu.csv --json farm.json
    python benchmarks/gpu/h200_bench.py summary --table table.json --farm farm.json --results results.json

table: the batched engine's aggregate completion tok/s at each N (the example config's prompt and
    sampling, free decoding as ``llama-batched-bench`` decodes, 2N requests so that every slot is
    refilled once), with flash attention off (the engine's default) and on, the per-sequence KV
    layout at the largest N, and the grammar on at the largest N; ``llama-batched-bench -npp 40
    -ntg MAX_TOKENS -kvu`` at the same N with ``-fa off`` and ``-fa on``; and a profile of the
    engine's decode thread at the largest N (where the step's time goes: ``llama_decode`` against
    the Python side of sampling, grammar and admissions).
farm: ``producer run`` as a user calls it (embedded Redis, one worker, ``--batch-size``), the
    example prompt over the first ``--words`` words of words.txt, the grammar on (the config's
    default), with ``nvidia-smi`` sampled every 250 ms during the run.
summary: one markdown table of both against the targets (engine >= 0.8x llama-batched-bench at
    every N; N = 64 >= 10x N = 1), and results.json with every figure.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(REPO), str(HERE.parent)]

from throughput import EXAMPLE, FREE, _run_span, on_own_thread  # noqa: E402

from convfarm.config import load_config  # noqa: E402

WORDS = HERE.joinpath("words.txt").read_text().split()
PROMPT_TOKENS = 40  # the example prompt with a word, as llama-batched-bench's -npp


# --- the engine table -----------------------------------------------------------------------------
def engine_side(model: Any, requests: list[Any], n: int, *, unified: bool = True, flash_attn: bool = False,
                profile: Path | None = None, threads: int | None = None) -> dict[str, float]:
    """One side: ``requests`` through a fresh engine of ``n`` slots on its own thread; its figures."""
    import llama_cpp

    from convfarm.engine import default_threads
    from convfarm.engine.batched import BatchedEngine

    n_ctx = requests[0].config.n_ctx
    engine = BatchedEngine(model.llama._model.model, n_slots=n, n_ctx_per_seq=n_ctx, n_threads=threads or default_threads(),
                           kv_unified=unified, flash_attn=flash_attn)
    profiler = cProfile.Profile() if profile else None
    if profiler:  # cProfile sees one thread: profile the engine's decode loop where it runs
        loop = engine._loop

        def profiled_loop(self: Any) -> None:
            profiler.enable()
            try:
                loop()
            finally:
                profiler.disable()

        engine._loop = types.MethodType(profiled_loop, engine)
    model._engine = engine
    # llama_decode's time, the GPU's work included: synchronised at once (the first logits read
    # right after it would wait as long); the rest of the loop is the Python side of a step
    decode, decode_seconds = llama_cpp.llama_decode, [0.0]

    def timed_decode(ctx: Any, batch: Any) -> int:
        started = time.perf_counter()
        status = decode(ctx, batch)
        llama_cpp.llama_synchronize(ctx)
        decode_seconds[0] += time.perf_counter() - started
        return status

    def work() -> list[Any]:
        llama_cpp.llama_decode = timed_decode
        try:
            return list(model.generate(requests))
        finally:
            llama_cpp.llama_decode = decode
            engine.close()
            model._engine = None

    started = time.perf_counter()
    outcomes = on_own_thread(work)
    seconds = time.perf_counter() - started
    tokens = sum(o.completion_tokens for o in outcomes)
    figures = {"n": n, "requests": len(requests), "tokens": tokens, "seconds": round(seconds, 3),
               "tok_s": round(tokens / seconds, 1), "steps": engine.steps,
               "ms_per_step": round(1000 * seconds / max(engine.steps, 1), 2),
               "decode_share": round(decode_seconds[0] / seconds, 3),
               "busy_tok_s": round(engine.full_completion_tokens / engine.full_seconds, 1) if engine.full_seconds else 0.0,
               "accepted": sum(o.reason is None for o in outcomes)}
    if profiler and profile:
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(30)
        profile.write_text(f"engine decode loop at N={n}, {requests[0].config.structure} decoding, under cProfile "
                           "(its overhead inflates the Python side)\n\n" + stream.getvalue())
    return figures


def batched_bench(binary: str, model_path: Path, sizes: list[int], max_tokens: int, n_gpu_layers: int,
                  flash_attn: str, log: Path, threads: int | None = None, extra_buffers: bool = True) -> dict[int, float]:
    """S_TG t/s of ``llama-batched-bench`` at each N (its own table, parsed)."""
    ctx = max(sizes) * (PROMPT_TOKENS + max_tokens) + 256
    command = [binary, "-m", str(model_path), "-c", str(ctx), "-b", "2048", "-ub", "512",
               "-npp", str(PROMPT_TOKENS), "-ntg", str(max_tokens), "-npl", ",".join(map(str, sizes)),
               "-ngl", str(99 if n_gpu_layers < 0 else n_gpu_layers), "-t", str(threads or os.cpu_count() or 1),
               "-fa", flash_attn, "-kvu",
               # as the worker loads the model: no CPU extra buffers on AMX CPUs (convfarm/engine/cpu_buffers.py)
               *([] if extra_buffers else ["-nr"])]
    from convfarm.engine.backends import llama_lib_dir

    # the wheel's libraries: the binary of an earlier run (LLAMA_BATCHED_BENCH) has lost its build tree
    # (libllama-common.so, which the tools link, is in the wheel's top-level lib/: site-packages/lib)
    lib_dirs = [str(llama_lib_dir()), str(llama_lib_dir().parent.parent / "lib"), os.environ.get("LD_LIBRARY_PATH", "")]
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(lib_dirs)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    log.write_text(" ".join(command) + "\n\n" + result.stdout + result.stderr)
    figures: dict[int, float] = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[0].isdigit():
            # |    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
            figures[int(cells[2])] = float(cells[7])
    if not figures:
        print(f"llama-batched-bench -fa {flash_attn}: no table (exit {result.returncode}); see {log}", flush=True)
    return figures


def table(args: argparse.Namespace) -> None:
    from convfarm.engine import GenerationRequest, ResidentModel

    sizes = [int(s) for s in args.sizes.split(",")]
    logs = Path(args.json).parent
    free, _ = load_config(EXAMPLE, max_tokens=args.max_tokens, n_gpu_layers=args.n_gpu_layers, **FREE)
    grammar, _ = load_config(EXAMPLE, max_tokens=args.max_tokens, n_gpu_layers=args.n_gpu_layers)

    def requests(config: Any, n: int) -> list[Any]:
        count = max(8, 2 * n)
        return [GenerationRequest(config=config, word=WORDS[i % len(WORDS)], seed=1000 + i) for i in range(count)]

    side = functools.partial(engine_side, threads=args.threads)
    model = ResidentModel(free.model, n_ctx=free.n_ctx, n_gpu_layers=args.n_gpu_layers, n_threads=args.threads)
    print(f"model {free.model} ({model.path.name}) loaded in {model.load_seconds:.2f}s, n_gpu_layers={args.n_gpu_layers}",
          flush=True)
    side(model, requests(free, 2)[:2], 2)  # warm-up: kernels, weights paged in
    rows: dict[str, list[dict[str, float]]] = {"engine": [], "engine_fa": []}
    for key, flash in (("engine", False), ("engine_fa", True)):
        for n in sizes:
            row = side(model, requests(free, n), n, flash_attn=flash)
            rows[key].append(row)
            print(f"  {key:10s} N={n:4d}: {row['tokens']:6d} tokens in {row['seconds']:7.2f}s = {row['tok_s']:8.1f} tok/s "
                  f"(all slots busy {row['busy_tok_s']:8.1f}; {row['ms_per_step']:.2f} ms/step, "
                  f"llama_decode {100 * row['decode_share']:.0f}%)", flush=True)
    top = max(sizes)
    extra = {
        "per_sequence": side(model, requests(free, top), top, unified=False),
        "grammar": side(model, requests(grammar, top), top),
    }
    # where a step's Python time goes (cProfile of the decode thread; its overhead inflates the
    # Python side, so the time split is the unprofiled rows' decode share, not this)
    side(model, requests(grammar, top), top, profile=logs / "profile-grammar.txt")
    for key, row in extra.items():
        print(f"  {key:14s} N={top}: {row['tok_s']:8.1f} tok/s ({row['ms_per_step']:.2f} ms/step, "
              f"llama_decode {100 * row['decode_share']:.0f}%)", flush=True)
    model_path, extra_buffers = model.path, model.extra_buffers
    model.close()
    bench: dict[str, dict[int, float]] = {}
    if args.batched_bench and Path(args.batched_bench).exists():
        for fa in ("off", "on"):
            bench[fa] = batched_bench(args.batched_bench, model_path, sizes, args.max_tokens, args.n_gpu_layers, fa,
                                      logs / f"batched-bench-fa-{fa}.log", args.threads, extra_buffers)
            print(f"  llama-batched-bench -fa {fa}: " + ", ".join(f"N={n} {t:.1f}" for n, t in bench[fa].items()),
                  flush=True)
    Path(args.json).write_text(json.dumps({"sizes": sizes, "n_gpu_layers": args.n_gpu_layers,
                                           "max_tokens": args.max_tokens, "model": str(model_path.name),
                                           "rows": rows, "extra": extra, "batched_bench": bench}, indent=1))


# --- the farm --------------------------------------------------------------------------------------
def farm(args: argparse.Namespace) -> None:
    data = json.loads(EXAMPLE.read_text())
    words = WORDS[: args.words]
    data.update(name="gpu-farm", words=words, max_tokens=args.max_tokens, n_gpu_layers=args.n_gpu_layers)
    if args.threads:
        data["n_threads"] = args.threads
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config_path = out / "farm.json"
    config_path.write_text(json.dumps(data, indent=1))
    config, _ = load_config(config_path)
    assert config.structure == "grammar", "the farm runs with the grammar on"
    env = {k: v for k, v in os.environ.items() if k not in ("CONVFARM_BROKER_URL", "REDIS_URL")}
    sampler = None
    if args.gpu_log and shutil.which("nvidia-smi"):
        sampler = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used",
                                    "--format=csv,noheader,nounits", "-lms", "250"],
                                   stdout=open(args.gpu_log, "w"), stderr=subprocess.DEVNULL)
    command = [sys.executable, "-m", "producer.cli", "run", str(config_path), "--out", str(out / "runs"),
               "--embedded-redis", "--batch-size", str(args.batch_size)]
    print(" ".join(command), flush=True)
    started = time.time()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    ended = time.time()
    if sampler:
        sampler.terminate()
        sampler.wait()
    (out / "producer-run.log").write_text(result.stdout + result.stderr)
    print(result.stdout[-3000:] + result.stderr[-2000:], flush=True)
    if result.returncode != 0:
        raise SystemExit(f"producer run failed with exit {result.returncode}")
    (run_dir,) = [p for p in (out / "runs").iterdir() if not p.name.startswith(".")]
    records = [json.loads(line) for pattern in ("conversations-*.jsonl", "rejected-*.jsonl")
               for shard in run_dir.glob(pattern) for line in shard.open() if line.strip()]
    accepted = [r for r in records if r["status"] == "accepted"]
    span = _run_span(records) or (ended - started)
    completion = sum(r["tokens"]["completion"] for r in records)
    figures: dict[str, Any] = {
        "words": len(words), "batch_size": args.batch_size, "records": len(records), "accepted": len(accepted),
        "command_seconds": round(ended - started, 2), "run_seconds": round(span, 2),
        "accepted_per_s_command": round(len(accepted) / (ended - started), 2),
        "accepted_per_s_run": round(len(accepted) / span, 2),
        "completion_tok_s_run": round(completion / span, 1),
        "generation_seconds_mean": round(statistics.mean(r["generation_seconds"] for r in records), 3) if records else 0,
        "reasons": _count(r["reason"] or "accepted" for r in records),
    }
    if args.gpu_log and Path(args.gpu_log).exists():
        figures["gpu"] = gpu_utilisation(Path(args.gpu_log), run_start=ended - span, run_end=ended)
    match = re.search(r"logs in (\S+?);?\s", result.stdout)
    figures["farm_logs"] = match[1] if match else None
    Path(args.json).write_text(json.dumps(figures, indent=1))
    print(json.dumps({k: v for k, v in figures.items() if k != "reasons"}), flush=True)


def _count(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def gpu_utilisation(log: Path, *, run_start: float, run_end: float) -> dict[str, float]:
    """Mean utilisation over the samples inside the run, and the share of samples under 10 %."""
    from datetime import datetime

    samples: list[tuple[float, float, float]] = []
    for line in log.read_text().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 3:
            continue
        try:
            stamp = datetime.strptime(cells[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            samples.append((stamp, float(cells[1]), float(cells[2])))
        except ValueError:
            continue
    inside = [s for s in samples if run_start <= s[0] <= run_end] or samples
    if not inside:
        return {}
    return {"samples": len(inside), "util_mean": round(statistics.mean(s[1] for s in inside), 1),
            "util_max": max(s[1] for s in inside), "idle_share": round(sum(s[1] < 10 for s in inside) / len(inside), 3),
            "memory_used_mib_max": max(s[2] for s in inside)}


# --- the summary -----------------------------------------------------------------------------------
def summary(args: argparse.Namespace) -> None:
    def read(name: str) -> str:
        return Path(name).read_text().strip() if name and Path(name).is_file() else ""

    table_data = json.loads(read(args.table) or "{}")
    farm_data = json.loads(read(args.farm) or "{}")
    machine = read(args.machine)
    build = read(args.build_seconds) or "(not built in this run: LLAMA_WHEEL)"
    lines = ["# GPU run (benchmarks/gpu/run_h200.sh)", "", "```", machine, f"build: {build}", "```", ""]
    if table_data:
        bench = {fa: {int(n): t for n, t in figures.items()} for fa, figures in table_data.get("batched_bench", {}).items()}
        lines += [f"## Engine table: model {table_data['model']}, n_gpu_layers={table_data['n_gpu_layers']}, "
                  f"max_tokens={table_data['max_tokens']}, free decoding", "",
                  "| N | engine tok/s (all busy) | ms/step, llama_decode share | llama-batched-bench -fa off | "
                  "ratio (target >= 0.8) | engine FA on | bench -fa on | ratio FA | engine / engine N=1 |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        base = table_data["rows"]["engine"][0]["tok_s"] or 1.0
        for row, row_fa in zip(table_data["rows"]["engine"], table_data["rows"]["engine_fa"], strict=True):
            n = row["n"]
            off, on = bench.get("off", {}).get(n), bench.get("on", {}).get(n)
            lines.append(f"| {n} | {row['tok_s']:.1f} ({row['busy_tok_s']:.1f}) | {row['ms_per_step']:.2f}, "
                         f"{100 * row['decode_share']:.0f}% | {_fmt(off)} | {_ratio(row['tok_s'], off)} | "
                         f"{row_fa['tok_s']:.1f} | {_fmt(on)} | {_ratio(row_fa['tok_s'], on)} | {row['tok_s'] / base:.2f}x |")
        lines.append("")
        for key, row in table_data["extra"].items():
            lines.append(f"- {key} at N={row['n']}: {row['tok_s']:.1f} tok/s, {row['ms_per_step']:.2f} ms/step, "
                         f"llama_decode {100 * row['decode_share']:.0f}% of the time")
        sizes = table_data["sizes"]
        if 1 in sizes and 64 in sizes:
            by_n = {r["n"]: r["tok_s"] for r in table_data["rows"]["engine"]}
            lines.append(f"- N=64 / N=1: {by_n[64] / by_n[1]:.1f}x (target >= 10x)")
        lines.append("")
    if farm_data:
        gpu = farm_data.get("gpu", {})
        lines += [f"## Farm: producer run, embedded Redis, one worker --batch-size {farm_data['batch_size']}, "
                  f"{farm_data['words']} words, grammar on", "",
                  f"- {farm_data['accepted']} accepted of {farm_data['records']} records; "
                  f"{farm_data['accepted_per_s_run']} accepted/s over the run ({farm_data['run_seconds']}s), "
                  f"{farm_data['accepted_per_s_command']} over the command ({farm_data['command_seconds']}s, start-up included)",
                  f"- completion tokens over the run: {farm_data['completion_tok_s_run']} tok/s "
                  "(against the engine table's row at the same N: the rest is the farm around the engine)",
                  f"- GPU utilisation: {gpu.get('util_mean', '-')}% mean, {gpu.get('util_max', '-')}% max, "
                  f"{100 * gpu.get('idle_share', 0):.0f}% of samples under 10%, "
                  f"{gpu.get('memory_used_mib_max', '-')} MiB max" if gpu else "- GPU utilisation: no nvidia-smi here",
                  f"- outcomes: {farm_data['reasons']}", ""]
    Path(args.results).write_text(json.dumps({"machine": machine, "build": build, "table": table_data,
                                              "farm": farm_data}, indent=1))
    print("\n".join(lines))


def _fmt(value: float | None) -> str:
    return f"{value:.1f}" if value else "-"


def _ratio(engine: float, bench: float | None) -> str:
    return f"{engine / bench:.2f}" if bench else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table")
    t.add_argument("--sizes", default="1,8,32,64,128")
    t.add_argument("--n-gpu-layers", type=int, default=-1)
    t.add_argument("--max-tokens", type=int, default=128)
    t.add_argument("--batched-bench", default=None)
    t.add_argument("--threads", type=int, default=None, help="llama.cpp CPU threads (default: all cores)")
    t.add_argument("--json", required=True)
    f = sub.add_parser("farm")
    f.add_argument("--words", type=int, default=300)
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--n-gpu-layers", type=int, default=-1)
    f.add_argument("--max-tokens", type=int, default=128)
    f.add_argument("--gpu-log", default=None)
    f.add_argument("--threads", type=int, default=None, help="the config's n_threads (default: all cores)")
    f.add_argument("--out", required=True)
    f.add_argument("--timeout", type=int, default=480)
    f.add_argument("--json", required=True)
    s = sub.add_parser("summary")
    for name in ("--table", "--farm", "--machine", "--build-seconds", "--results"):
        s.add_argument(name, required=name == "--results", default="")
    args = parser.parse_args()
    if args.command == "farm" and args.words > len(WORDS):
        parser.error(f"--words: at most {len(WORDS)} (words.txt)")
    {"table": table, "farm": farm, "summary": summary}[args.command](args)


if __name__ == "__main__":
    main()
