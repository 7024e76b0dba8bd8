"""Free vs grammar-constrained decoding: yield, coverage, depth, cost and tok/s.

    PYTHONPATH=. .venv/bin/python benchmarks/structure_yield.py [--attempts 3] [--max-tokens 256] [--threads 1]
        [--batch 8] [--chat] [--speed-requests 8] [--judge] [--min-relevance 0.5] [--outcomes FILE] [--json FILE]
    PYTHONPATH=. .venv/bin/python benchmarks/structure_yield.py --rejudge FILE [--min-relevance 0.5]

For the example config and the seed's config, every request (word × attempt, seed
``task_seed(0, "measure", word, attempt)``) is decoded twice, once with ``"structure":
"free"`` and once with ``"grammar"``, in chunks of ``--batch`` requests (one engine batch),
a free chunk and a grammar chunk back to back (the order alternating), so both structures
see the same load on a shared machine. Generation is the worker's own code
(:meth:`convfarm.engine.ResidentModel.generate`: the engine, the streaming judge, early
stop). Seconds are the wall time of the chunks, so "seconds per accepted conversation" is
what a worker pays, batching included.

Reported per config and structure: accepted per attempt, words covered within the config's
``max_attempts`` (attempts 0 … max_attempts-1, as a farm would retry after a rejection), mean
turns per accepted conversation, tokens and seconds per accepted conversation (the chunks'
wall time: machine time, as the farm's ``machine_seconds`` counts it; rejected attempts
included), reasons.

Speed: tok/s of the same requests decoded one at a time (N=1, where the sampler's share of
the time is largest) to the end (``early_stop=False``, so neither structure gets shorter
sequences for free), interleaved request by request; the target is grammar ≥ 0.9 × free.
(The high-level ``create_completion`` with its in-chain grammar, once measured here with
``--reference``, left with the one-at-a-time generation path: the farm decodes only through the
engine.) Generation only: the relevance judge's scoring is left out (``score=False``).

``--judge`` scores every accepted conversation with the relevance judge (``default_method()``
as a worker builds it, with the config's words, on the same model file, the config's ``topic`` if it has
one) and adds the **on-topic yield**:
accepted and scoring at least ``--min-relevance``, per attempt, and the mean score
(docs/judge.md). ``--speed-requests 0`` skips the tok/s runs. ``--outcomes FILE`` writes every
generated conversation (config, structure, word, attempt, reason, turns) as JSONL; ``--rejudge
FILE`` scores such a file again with the current judge and prints the on-topic yield per config
and structure, generating nothing (the judge changes faster than generation runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a file from anywhere: the repository's packages, not an installed copy

from convfarm.config import RunConfig, load_config  # noqa: E402
from convfarm.engine import GenerationOutcome, GenerationRequest, ResidentModel  # noqa: E402
from convfarm.messages import task_seed  # noqa: E402

CONFIGS = [  # (label, config file, overrides)
    ("example prompt, completion", "examples/example.json", {}),
    ("seed prompt, completion", "examples/seed-example.json", {}),
]
CHAT_CONFIGS = [
    ("example prompt, chat (prefilled)", "examples/example.json", {"mode": "chat"}),
    ("seed prompt, chat (prefilled)", "examples/seed-example.json", {"mode": "chat"}),
]
STRUCTURES = ("free", "grammar")


def requests_for(config: RunConfig, attempts: int) -> list[GenerationRequest]:
    return [GenerationRequest(config=config, word=w, seed=task_seed(0, "measure", w, a))
            for a in range(attempts) for w in config.words]


def interleaved(model: ResidentModel, configs: dict[str, RunConfig], attempts: int, *, chunk: int = 1,
                early_stop: bool = True, limit: int | None = None) -> tuple[dict[str, list[GenerationOutcome]],
                                                                            dict[str, float]]:
    """Each chunk of requests under every structure, back to back, alternating which goes first.

    Returns the outcomes and each structure's wall seconds (the chunks' generate calls)."""
    batches = {s: requests_for(c, attempts)[:limit] for s, c in configs.items()}
    out: dict[str, list[GenerationOutcome]] = {s: [] for s in configs}
    wall = dict.fromkeys(configs, 0.0)
    total = len(next(iter(batches.values())))
    for n, i in enumerate(range(0, total, chunk)):
        for structure in (list(configs) if n % 2 == 0 else list(reversed(configs))):
            started = time.perf_counter()
            out[structure].extend(model.generate(batches[structure][i:i + chunk], early_stop=early_stop, score=False))
            wall[structure] += time.perf_counter() - started
    return out, wall


class Judge:
    """The relevance judge on its own copy of the model file, one prefill at a time (convfarm/judge/)."""

    def __init__(self, model: str, threads: int | None, min_relevance: float) -> None:
        from convfarm.judge import default_method
        from convfarm.judge.calibration import bos_token, open_llama

        self.model, self.method, self.min_relevance = model, default_method(), min_relevance  # named in the results
        self.llama = open_llama(model, n_threads=threads, logits_all=True)
        self.bos = bos_token(self.llama)

    def score(self, config: RunConfig, outcome: GenerationOutcome) -> float:
        from convfarm.judge import method_for, read_with_llama, relevance

        method = method_for(config)  # the default, as a worker builds it: with the run's words
        requests = method.requests(topic=config.topic, word=outcome.request.word, turns=outcome.turns,
                                        tokenize=lambda t: self.llama.tokenize(t.encode(), add_bos=False), bos=self.bos)
        return relevance(method, [read_with_llama(self.llama, r) for r in requests])


def judged(judge: Judge | None, config: RunConfig, outcomes: list[GenerationOutcome]) -> dict[str, Any]:
    """On-topic yield: accepted and judged on topic, per attempt."""
    if judge is None:
        return {}
    scores = [judge.score(config, o) for o in outcomes if o.reason is None]
    on_topic = sum(s >= judge.min_relevance for s in scores)
    return {"on_topic": on_topic, "on_topic_per_attempt": round(on_topic / max(len(outcomes), 1), 3),
            "mean_relevance_accepted": round(sum(scores) / len(scores), 3) if scores else None,
            "judge": f"{judge.method.name} v{judge.method.version} >= {judge.min_relevance}"}


def rejudge(path: Path, judge: Judge) -> None:
    """The on-topic yield of saved outcomes, per config and structure, with the current judge."""
    from convfarm.messages import Turn

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        groups.setdefault((row["config"], row["structure"]), []).append(row)
    results = {}
    for (label, structure), rows in groups.items():
        config = load_config(REPO / rows[0]["path"], model=judge.model)[0]
        outcomes = [GenerationOutcome(request=GenerationRequest(config=config, word=r["word"], seed=r["seed"]),
                                      turns=[Turn(**t) for t in r["turns"]], reason=r["reason"]) for r in rows]
        row = {"attempts": len(rows), "accepted": sum(r["reason"] is None for r in rows)} | judged(judge, config, outcomes)
        results[f"{label}, {structure}"] = row
        print(label, structure, json.dumps(row), flush=True)
    print(json.dumps(results, indent=2))


def summarise(config: RunConfig, outcomes: list[GenerationOutcome], attempts: int, seconds: float) -> dict[str, Any]:
    accepted = [o for o in outcomes if o.reason is None]
    tokens = sum(o.completion_tokens for o in outcomes)
    n_words = len(config.words)
    within = min(config.max_attempts, attempts)
    covered = {o.request.word for o in outcomes[: within * n_words] if o.reason is None}
    return {
        "accepted": len(accepted), "attempts": len(outcomes), "rate": round(len(accepted) / max(len(outcomes), 1), 3),
        "accepted_per_attempt_round": [sum(o.reason is None for o in outcomes[a * n_words:(a + 1) * n_words])
                                       for a in range(attempts)],
        f"words_covered_within_{within}_attempts": f"{len(covered)}/{n_words}",
        "mean_turns_accepted": round(sum(len(o.turns) for o in accepted) / len(accepted), 2) if accepted else None,
        "tokens_per_accepted": round(tokens / len(accepted), 1) if accepted else None,
        "seconds_per_accepted": round(seconds / len(accepted), 2) if accepted else None,
        "reasons": dict(Counter(o.reason for o in outcomes if o.reason).most_common()),
        "structures_used": dict(Counter(o.structure for o in outcomes)),
        "tokens": tokens, "seconds": round(seconds, 2), "tok_per_s": round(tokens / seconds, 1) if seconds else None,
    }


def speed(measured: tuple[dict[str, list[GenerationOutcome]], dict[str, float]]) -> dict[str, Any]:
    outcomes, wall = measured
    row: dict[str, Any] = {}
    for structure, items in outcomes.items():
        tokens, seconds = sum(o.completion_tokens for o in items), wall[structure]
        row[structure] = {"requests": len(items), "tokens": tokens, "seconds": round(seconds, 2),
                          "tok_per_s": round(tokens / seconds, 1)}
    row["grammar_over_free"] = round(row["grammar"]["tok_per_s"] / row["free"]["tok_per_s"], 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (1 on a busy shared machine)")
    parser.add_argument("--batch", type=int, default=8, help="engine slots for the yield runs (speed runs are N=1)")
    parser.add_argument("--chat", action="store_true", help="also the prefilled chat-mode rows")
    parser.add_argument("--speed-requests", type=int, default=8, help="requests per config for the tok/s comparison")
    parser.add_argument("--judge", action="store_true", help="score accepted conversations: the on-topic yield")
    parser.add_argument("--min-relevance", type=float, default=0.5, help="the on-topic bar for --judge")
    parser.add_argument("--outcomes", type=Path, default=None, help="write every generated conversation here (JSONL)")
    parser.add_argument("--rejudge", type=Path, default=None, help="score an --outcomes file; generate nothing")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.rejudge:
        rejudge(args.rejudge, Judge(args.model, args.threads, args.min_relevance))
        return
    saved = args.outcomes.open("w", encoding="utf-8") if args.outcomes else None
    judge = Judge(args.model, args.threads, args.min_relevance) if args.judge else None
    model = ResidentModel(args.model, n_ctx=2048, n_gpu_layers=0, n_threads=args.threads, batch_size=args.batch)
    single = ResidentModel(args.model, n_ctx=2048, n_gpu_layers=0, n_threads=args.threads)  # N=1 for the speed runs
    results: dict[str, Any] = {"model": args.model, "attempts": args.attempts, "max_tokens": args.max_tokens,
                               "batch": args.batch, "threads": args.threads, "yield": {}, "speed": {}}
    for label, path, overrides in CONFIGS + (CHAT_CONFIGS if args.chat else []):
        configs = {s: load_config(REPO / path, model=args.model, max_tokens=args.max_tokens, structure=s, **overrides)[0]
                   for s in STRUCTURES}
        started = time.perf_counter()
        try:
            outcomes, wall = interleaved(model, configs, args.attempts, chunk=args.batch)
        except ValueError as exc:  # chat mode on a GGUF without a chat template
            results["yield"][label] = {"error": str(exc)}
            continue
        row = {s: summarise(configs[s], outcomes[s], args.attempts, wall[s]) | judged(judge, configs[s], outcomes[s])
               for s in STRUCTURES}
        row["wall_s"] = round(time.perf_counter() - started, 1)
        for structure in STRUCTURES if saved else ():
            for o in outcomes[structure]:
                saved.write(json.dumps({"config": label, "path": path, "structure": structure, "word": o.request.word,
                                        "seed": o.request.seed, "reason": o.reason,
                                        "turns": [t.model_dump() for t in o.turns]}) + "\n")
            saved.flush()
        results["yield"][label] = row
        print(label, json.dumps(row), flush=True)
    for label, path, overrides in CONFIGS if args.speed_requests else []:
        configs = {s: load_config(REPO / path, model=args.model, max_tokens=args.max_tokens, structure=s, **overrides)[0]
                   for s in STRUCTURES}
        row = speed(interleaved(single, configs, args.attempts, early_stop=False, limit=args.speed_requests))
        results["speed"][label] = row
        print("speed", label, json.dumps(row), flush=True)
    model.close()
    single.close()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
