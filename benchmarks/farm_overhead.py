"""Farm overhead (target ≥ 0.95×): `producer run` against plain llama-cpp-python loops, back to back.

Same model, words, generation parameters and per-word seeds on every side; one attempt per
word (``max_attempts: 1``) so every side generates exactly one conversation per word.

* ``plain``      — the simplest script: load once, ``create_completion`` per word, no rules.
* ``in-process`` — the farm's own generation code (streaming rules, early stop, the relevance
                   judge's scoring of accepted conversations), no farm.
* ``farm``       — ``producer run`` as a user calls it (a subprocess: worker start-up,
                   Redis round trips, the collector writing shards included).
* ``farm-warm``  — the same farm with its workers already up and the model loaded:
                   enqueue -> run complete, i.e. the per-conversation cost of the farm.
* ``seed``       — the seed's shape: a new process per word that loads the model again.

Ratios compare conversations/s (and tokens/s) against ``plain`` and ``in-process``. Since
the worker scores what it accepts, ``plain`` (no rules, no judge) is no longer like for like:
``in-process`` is the side that does the farm's work without the farm.
Usage::

    python benchmarks/farm_overhead.py [--words N] [--max-tokens T] [--rounds R] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from convfarm.config import RunConfig, load_config  # noqa: E402
from convfarm.engine import GenerationRequest, ResidentModel, default_threads  # noqa: E402
from convfarm.messages import task_seed  # noqa: E402
from convfarm.model_files import resolve_model  # noqa: E402
from convfarm.runstate import run_id_for  # noqa: E402

EXTRA_WORDS = ["river", "lamp", "cloud", "seed", "window", "garden", "engine", "mirror", "ladder", "market",
               "island", "candle", "violin", "desert", "magnet", "harbor", "planet", "tunnel", "button", "forest"]


def bench_config(words: int, max_tokens: int) -> RunConfig:
    base, _ = load_config(REPO / "examples" / "example.json")
    wordlist = (base.words + EXTRA_WORDS)[:words]
    return base.model_copy(update={"name": "bench", "words": wordlist, "max_tokens": max_tokens, "max_attempts": 1,
                                   "n_threads": default_threads()})


def seeds(config: RunConfig) -> dict[str, int]:
    run = run_id_for(config)
    return {w: task_seed(config.seed, run, w, 0) for w in config.words}


def run_plain(config: RunConfig) -> dict:
    from llama_cpp import Llama

    started = time.perf_counter()
    from convfarm.engine.cpu_buffers import model_defaults, use_extra_buffers

    with model_defaults(use_extra_bufts=use_extra_buffers("auto")):  # AMX CPUs crash otherwise
        llm = Llama(str(resolve_model(config.model)), n_ctx=config.n_ctx, n_threads=config.n_threads,
                    n_threads_batch=config.n_threads, verbose=False)
    tokens = 0
    for word, seed in seeds(config).items():
        out = llm.create_completion(config.prompt_for(word), max_tokens=config.max_tokens, temperature=config.temperature,
                                    top_p=config.top_p, top_k=config.top_k, repeat_penalty=config.repeat_penalty,
                                    seed=seed)
        tokens += out["usage"]["completion_tokens"]
    return {"seconds": time.perf_counter() - started, "conversations": len(config.words), "tokens": tokens}


def run_in_process(config: RunConfig) -> dict:
    started = time.perf_counter()
    model = ResidentModel(config.model, n_ctx=config.n_ctx, n_gpu_layers=0, n_threads=config.n_threads)
    requests = [GenerationRequest(config=config, word=w, seed=s) for w, s in seeds(config).items()]
    outcomes = list(model.generate(requests))  # scored by the relevance judge, as the farm's worker scores
    return {"seconds": time.perf_counter() - started, "conversations": len(outcomes),
            "tokens": sum(o.completion_tokens for o in outcomes),
            "accepted": sum(1 for o in outcomes if o.reason is None)}


def run_farm(config: RunConfig, workdir: Path) -> dict:
    path = workdir / "bench.json"
    path.write_text(config.model_dump_json())
    out = workdir / f"out-{time.time_ns()}"
    env = {**os.environ}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "producer.cli", "run", str(path), "--out", str(out), "--embedded-redis"],
                            cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"producer run failed:\n{result.stdout}\n{result.stderr}")
    run_dir = out / run_id_for(config)
    records = [json.loads(line) for shard in run_dir.glob("*-*.jsonl") for line in shard.read_text().splitlines()]
    return {"seconds": seconds, "conversations": len(records), "tokens": sum(r["tokens"]["completion"] for r in records),
            "accepted": sum(1 for r in records if r["status"] == "accepted"),
            # machine time adds up under batching; summed latency would count each batch once per conversation
            "machine_seconds": sum(r.get("machine_seconds") or r["generation_seconds"] for r in records)}


def run_farm_warm(config: RunConfig, workdir: Path) -> dict:
    from convfarm.broker import celery_client, redis_client
    from convfarm.messages import queue_for_model
    from convfarm.runstate import RunStore, run_key
    from convfarm.settings import Settings
    from producer.enqueue import enqueue
    from producer.local import local_farm

    out = workdir / f"warm-{time.time_ns()}"
    with local_farm(queue_for_model(config.model), out, embedded_redis=True) as (url, _farm):
        settings = Settings(broker_url=url)
        client, celery = redis_client(settings), celery_client(settings)

        def timed(cfg: RunConfig) -> float:
            started = time.perf_counter()
            info, _ = enqueue(cfg, client=client, celery=celery, out_dir=out)
            while client.hget(run_key(info.run), "status") != b"complete":
                time.sleep(0.02)
            return time.perf_counter() - started

        timed(config.model_copy(update={"name": "warmup", "words": config.words[:1]}))  # workers up, model loaded
        seconds = timed(config)
        counts = RunStore(client).counts(run_id_for(config))
    return {"seconds": seconds, "conversations": counts.accepted + counts.rejected,
            "tokens": counts.completion_tokens, "accepted": counts.accepted}


SEED_STYLE = """
import sys, time
from llama_cpp import Llama
from convfarm.engine.cpu_buffers import model_defaults, use_extra_buffers
path, prompt, max_tokens, seed, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
with model_defaults(use_extra_bufts=use_extra_buffers("auto")):
    llm = Llama(path, n_ctx=2048, n_threads=threads, verbose=False)
out = llm.create_completion(prompt, max_tokens=max_tokens, seed=seed)
print(out["usage"]["completion_tokens"])
"""


def run_seed_style(config: RunConfig) -> dict:
    path = str(resolve_model(config.model))
    started = time.perf_counter()
    tokens = 0
    for word, seed in seeds(config).items():
        out = subprocess.run([sys.executable, "-c", SEED_STYLE, path, config.prompt_for(word), str(config.max_tokens),
                              str(seed), str(config.n_threads)], capture_output=True, text=True, check=True, cwd=REPO)
        tokens += int(out.stdout.split()[-1])
    return {"seconds": time.perf_counter() - started, "conversations": len(config.words), "tokens": tokens}


def rates(result: dict) -> dict:
    seconds = result["seconds"]
    return {**result, "conv_per_s": result["conversations"] / seconds, "tok_per_s": result["tokens"] / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--words", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the sides this many times")
    parser.add_argument("--skip-seed", action="store_true", help="skip the slow process-per-word side")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = bench_config(args.words, args.max_tokens)
    results: dict[str, list[dict]] = {"plain": [], "in-process": [], "farm": [], "farm-warm": [], "seed": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            results["plain"].append(rates(run_plain(config)))
            results["in-process"].append(rates(run_in_process(config)))
            results["farm"].append(rates(run_farm(config, Path(tmp))))
            results["farm-warm"].append(rates(run_farm_warm(config, Path(tmp))))
            if not args.skip_seed:
                results["seed"].append(rates(run_seed_style(config)))
    summary = {side: {"conv_per_s": sum(r["conv_per_s"] for r in rs) / len(rs),
                      "tok_per_s": sum(r["tok_per_s"] for r in rs) / len(rs)} for side, rs in results.items() if rs}
    print(f"{len(config.words)} words, max_tokens {config.max_tokens}, {config.n_threads} threads, {args.rounds} round(s)")
    print(f"{'side':<11} {'conv/s':>8} {'tok/s':>8} {'conv/s vs plain':>16} {'vs in-process':>14}")
    for side, s in summary.items():
        print(f"{side:<11} {s['conv_per_s']:8.3f} {s['tok_per_s']:8.1f} "
              f"{s['conv_per_s'] / summary['plain']['conv_per_s']:15.2f}x "
              f"{s['conv_per_s'] / summary['in-process']['conv_per_s']:13.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"config": {"words": len(config.words), "max_tokens": config.max_tokens},
                                         "runs": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
