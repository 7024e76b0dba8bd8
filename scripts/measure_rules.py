"""Measure what the rules and modes do on a model: acceptance per attempt, and the tokens early stop saves.

    .venv/bin/python scripts/measure_rules.py [--attempts 3] [--max-tokens 256] [--model smollm2-135m]

For the example words, every (prompt, mode) gets the same seeds (``task_seed(0, "measure",
word, attempt)``), so the modes are compared on equal terms. Generation is the worker's own
code (:class:`convfarm.engine.ResidentModel`), one model load for everything.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from convfarm.config import RunConfig, load_config
from convfarm.engine import GenerationRequest, ResidentModel
from convfarm.messages import task_seed

REPO = Path(__file__).resolve().parent.parent
FREE = {"structure": "free"}  # the rows measured before grammar-constrained decoding existed
CASES = [  # (label, config file, overrides)
    ("example prompt, completion, free", "examples/example.json", FREE),
    ("example prompt, completion, grammar", "examples/example.json", {"structure": "grammar"}),
    ("example prompt, chat (prefilled transcript), free", "examples/example.json", {"mode": "chat", **FREE}),
    ("example prompt, chat (prefilled transcript), grammar", "examples/example.json", {"mode": "chat"}),
    ("example prompt, chat (plain), free", "examples/example.json", {"mode": "chat", "chat_prefill": False, **FREE}),
    ("example prompt, chat (plain), grammar", "examples/example.json", {"mode": "chat", "chat_prefill": False}),
    ("seed prompt, completion, free", "examples/seed-example.json", FREE),
    ("seed prompt, completion, grammar", "examples/seed-example.json", {"structure": "grammar"}),
    ("seed prompt, chat (prefilled transcript), free", "examples/seed-example.json", {"mode": "chat", **FREE}),
    ("seed prompt, chat (prefilled transcript), grammar", "examples/seed-example.json", {"mode": "chat"}),
]
EARLY_STOP_CASES = ["examples/example.json", "examples/seed-example.json"]  # free decoding, as documented
# free vs grammar side by side (coverage, cost, tok/s): benchmarks/structure_yield.py


def requests(config: RunConfig, attempts: int) -> list[GenerationRequest]:
    return [GenerationRequest(config=config, word=w, seed=task_seed(0, "measure", w, a))
            for a in range(attempts) for w in config.words]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    model = ResidentModel(args.model, n_ctx=2048, n_gpu_layers=0, n_threads=args.threads)
    results: dict[str, dict] = {"model": args.model, "attempts": args.attempts, "max_tokens": args.max_tokens}

    acceptance = {}
    for label, path, overrides in CASES:
        config, _ = load_config(REPO / path, model=args.model, max_tokens=args.max_tokens, **overrides)
        started = time.perf_counter()
        try:
            outcomes = list(model.generate(requests(config, args.attempts)))
        except ValueError as exc:  # chat mode on a GGUF without a chat template
            acceptance[label] = {"error": str(exc)}
            print(label, json.dumps(acceptance[label]), flush=True)
            continue
        accepted = sum(o.reason is None for o in outcomes)
        words = len({o.request.word for o in outcomes if o.reason is None})
        per_attempt = [sum(o.reason is None for o in outcomes[a * len(config.words):(a + 1) * len(config.words)])
                       for a in range(args.attempts)]
        acceptance[label] = {
            "accepted": accepted, "attempts": len(outcomes), "rate": round(accepted / len(outcomes), 3),
            "accepted_per_seed_of_8": per_attempt, "words_with_one_or_more": words,
            "mean_turns_accepted": round(sum(len(o.turns) for o in outcomes if o.reason is None) / max(accepted, 1), 2),
            "reasons": dict(Counter(o.reason for o in outcomes if o.reason).most_common()),
            "tokens": sum(o.completion_tokens for o in outcomes), "seconds": round(time.perf_counter() - started, 1),
        }
        print(label, json.dumps(acceptance[label]), flush=True)
    results["acceptance"] = acceptance

    early = {}
    for path in EARLY_STOP_CASES:
        config, _ = load_config(REPO / path, model=args.model, max_tokens=args.max_tokens, **FREE)
        batch = requests(config, args.attempts)
        row = {}
        for early_stop in (True, False):
            started = time.perf_counter()
            outcomes = list(model.generate(batch, early_stop=early_stop))
            row["with" if early_stop else "without"] = {
                "tokens": sum(o.completion_tokens for o in outcomes), "seconds": round(time.perf_counter() - started, 1),
                "accepted": sum(o.reason is None for o in outcomes),
            }
        row["tokens_saved"] = row["without"]["tokens"] - row["with"]["tokens"]
        row["saved_share"] = round(row["tokens_saved"] / max(row["without"]["tokens"], 1), 3)
        early[path] = row
        print(path, json.dumps(row), flush=True)
    results["early_stop"] = early
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
