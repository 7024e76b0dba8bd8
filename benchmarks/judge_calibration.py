"""Relevance judge calibration: every method over the hand-labelled set, on each model; AUC, accuracy, cost.

    PYTHONPATH=. .venv/bin/python benchmarks/judge_calibration.py [--models smollm2-135m gemma3-270m]
        [--threads 2] [--generate 8] [--json FILE]

The set is ``tests/data/judge_labelled.jsonl``: hand-written and hand-labelled conversations (physics,
cooking, biology) and real SmolLM2 ones, each with ``on_topic`` and a ``kind``; ``split`` is ``dev``
(physics and cooking: methods, prompts and fitted constants were chosen on these) or ``held-out``
(biology and the real generations: reported, never tuned on).

Per model and method: AUC (Mann-Whitney: the chance an on-topic conversation scores above an
off-topic one, ties half) on all, dev and held-out; accuracy at the method's threshold (0.5 for
probabilities; the logistic fitted on dev for likelihood scores and blends); judge seconds per
conversation (the method's prefills, one at a time, on this process's model: requests that read
only next-token candidates run on a Llama without ``logits_all``, as the engine would; the methods
run back to back per conversation and a prefix shared with the previous request is served from the
KV cache, so for the candidates these seconds are a lower bound — the default method is timed again
alone, with an empty cache, on ``--timing-rows`` conversations); mean score per kind.
``--generate N`` also generates N conversations per config with the worker's engine
(``ResidentModel.generate``, batched, the example and physics configs) in the same run, so the
ratio judge seconds ÷ generation seconds per accepted conversation compares like with like; it
then scores the accepted ones with the default method on that engine, as the worker does (the
judge preamble's KV cache kept, and again decoded whole): ``engine_judge_over_generation_*``.
Population-level rank averages are printed as diagnostics (no per-record score exists for them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a file from anywhere: the repository's packages, not an installed copy

from convfarm.judge.calibration import (  # noqa: E402
    auc,
    best_threshold,
    bos_token,
    fit_logistic,
    load_labelled,
    open_llama,
    rank_average,
    run_words,
)
from convfarm.judge.methods import (  # noqa: E402
    CHATML,
    FEW_SHOT,
    FEW_SHOT_8,
    GEMMA_CHAT,
    ConditionalLikelihood,
    ConversationLikelihood,
    LogisticBlend,
    SubjectChoice,
    SummaryLikelihood,
    WeightedRating,
    YesNoQuestion,
    default_method,
    few_shot_question,
    logit,
    with_run_words,
)
from convfarm.judge.relevance import ScoreReading, ScoreRequest, method_for, read_with_llama, relevance  # noqa: E402

SET = REPO / "tests" / "data" / "judge_labelled.jsonl"
TEMPLATES = {"smollm2-135m": CHATML, "gemma3-270m": GEMMA_CHAT}
NEUTRAL = ConditionalLikelihood.neutral
OTHER = "another word"


def candidate_methods(model: str) -> dict[str, Any]:
    """The methods compared, in the order they run on each conversation: those that share a prefix
    (the transcript, then another question) back to back, so the KV cache serves the shared part."""
    template = TEMPLATES.get(model, CHATML)
    return {
        "yes/no, plain, topic, question after": YesNoQuestion(),
        "yes/no, plain, no topic, question after": YesNoQuestion(use_topic=False),
        "yes/no, plain, topic, few-shot (4 examples, other topics)": YesNoQuestion(few_shot=FEW_SHOT),
        "yes/no, plain, topic, few-shot (8 examples, other topics)": YesNoQuestion(few_shot=FEW_SHOT_8),
        "yes/no, plain, no topic, few-shot (4 examples)": YesNoQuestion(few_shot=FEW_SHOT, use_topic=False),
        "rating 1-5 (weighted), topic": WeightedRating(),
        "rating 1-5 (weighted), no topic": WeightedRating(use_topic=False),
        "yes/no, plain, topic, question before and after": YesNoQuestion(question_first=True),
        "yes/no, chat template, topic": YesNoQuestion(template=template),
        "summary PMI (topic and word after the conversation vs alone)": SummaryLikelihood(),
        "PMI lesson header vs neutral, answer turns": ConditionalLikelihood(),
        "Superfiltering ratio (lesson header vs none)": ConditionalLikelihood(neutral="", name="ifd-ratio"),
        # cheap ones tried after the first table (one or two prefills; the two likelihoods are the PMI's own
        # prefills read alone, so they cost nothing more beside it)
        "contrastive PMI: lesson header for the word vs for another word": ConditionalLikelihood(
            name="pmi-contrast", neutral=f"The following is a {{topic}} lesson that explains the meaning of {OTHER}.\n\n",
            neutral_no_topic=f"The following is a lesson that explains the meaning of {OTHER}.\n\n"),
        "answer likelihood after the question (neutral header)": ConversationLikelihood(
            name="likelihood-question", header=NEUTRAL, header_no_topic=NEUTRAL),
        "answer likelihood after the lesson header": ConversationLikelihood(),
        # tried on 2026-12-06: two multiple choices after the conversation, one prefill (the default since)
        "subject and word choice (one prefill)": SubjectChoice(),
    }


class Reader:
    """Serves requests once each (a cache: blends and variants share prefills) and times every prefill."""

    def __init__(self, model: str, threads: int | None, n_ctx: int = 2048, store: Path | None = None) -> None:
        self.spans = open_llama(model, n_threads=threads, logits_all=True, n_ctx=n_ctx)
        self.last = open_llama(model, n_threads=threads, logits_all=False, n_ctx=n_ctx)
        self.bos = bos_token(self.last)
        self.cache: dict[ScoreRequest, tuple[ScoreReading, float]] = {}
        # --store: every reading appended as it is made, read back on the next start (a long run resumes)
        self.stored: dict[str, tuple[ScoreReading, float]] = {}
        self.store = None
        if store is not None:
            if store.exists():
                for line in store.read_text().splitlines():
                    row = json.loads(line)
                    probes = tuple(tuple(p) for p in row.get("probes", ()))
                    self.stored[row["key"]] = (ScoreReading(tuple(row["candidates"]), tuple(row["span"]), probes),
                                               row["seconds"])
            self.store = store.open("a")
        self.model = model
        self.words: dict[str, tuple[str, ...]] = {}  # row id -> its run's words (run_words)

    def key(self, request: ScoreRequest) -> str:
        text = json.dumps([self.model, request.tokens, request.candidates, request.span_start, request.probes])
        return hashlib.sha256(text.encode()).hexdigest()

    def tokenize(self, text: str) -> list[int]:
        return self.last.tokenize(text.encode(), add_bos=False, special=True)

    def read(self, request: ScoreRequest, *, fresh: bool = False) -> tuple[ScoreReading, float]:
        """The reading and its seconds; ``fresh``: no cache and an empty KV cache (what one request alone costs)."""
        if not fresh and request not in self.cache and (stored := self.stored.get(self.key(request))):
            self.cache[request] = stored
        if fresh or request not in self.cache:
            llama = self.spans if request.span_start is not None or request.probes else self.last
            if fresh:
                llama.reset()
            started = time.perf_counter()
            reading = read_with_llama(llama, request)
            spent = time.perf_counter() - started
            if fresh:
                return reading, spent
            self.cache[request] = (reading, spent)
            if self.store is not None:
                self.store.write(json.dumps({"key": self.key(request), "candidates": reading.candidates,
                                             "span": reading.span, "probes": reading.probes,
                                             "seconds": spent}) + "\n")
                self.store.flush()
        return self.cache[request]

    def readings(self, method: Any, row: dict[str, Any], *, fresh: bool = False) -> tuple[list[ScoreReading], float]:
        method = with_run_words(method, self.words.get(row["id"], ()))  # a method that chooses among this row's run's words
        requests = method.requests(topic=row["topic"], word=row["word"], turns=row["turns"],
                                   tokenize=self.tokenize, bos=self.bos)
        read = [self.read(r, fresh=fresh) for r in requests]
        return [r for r, _ in read], sum(s for _, s in read)

    def close(self) -> None:
        self.spans.close()
        self.last.close()


def report(name: str, scores: Sequence[float], rows: Sequence[dict[str, Any]], threshold: float,
           seconds: float) -> dict[str, Any]:
    labels = [r["on_topic"] for r in rows]
    dev = [i for i, r in enumerate(rows) if r["split"] == "dev"]
    held = [i for i, r in enumerate(rows) if r["split"] == "held-out"]
    pick = lambda xs, idx: [xs[i] for i in idx]  # noqa: E731
    correct = [(s >= threshold) == y for s, y in zip(scores, labels, strict=True)]
    by_kind: dict[str, list[float]] = defaultdict(list)
    for s, r in zip(scores, rows, strict=True):
        by_kind[r["kind"]].append(s)
    return {
        "method": name,
        "auc": round(auc(scores, labels), 3),
        "auc_dev": round(auc(pick(scores, dev), pick(labels, dev)), 3),
        "auc_held_out": round(auc(pick(scores, held), pick(labels, held)), 3),
        "threshold": round(threshold, 3),
        "accuracy": round(sum(correct) / len(correct), 3),
        "accuracy_held_out": round(sum(pick(correct, held)) / max(len(held), 1), 3),
        "judge_s": round(seconds, 3),
        "mean_by_kind": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_kind.items())},
    }


def fitted_likelihood(method: Any, pmi: Sequence[float], rows: Sequence[dict[str, Any]]
                      ) -> Any:
    """The method with ``center``/``scale`` from a logistic fitted on the dev split (the threshold 0.5 moves with it)."""
    dev = [(p, r["on_topic"]) for p, r in zip(pmi, rows, strict=True) if r["split"] == "dev"]
    (scale,), bias = fit_logistic([[p] for p, _ in dev], [y for _, y in dev])
    return replace(method, scale=round(scale, 3), center=round(-bias / scale, 4))


def fitted_choice(method: SubjectChoice, choices: Sequence[tuple[float, float]], rows: Sequence[dict[str, Any]]
                  ) -> SubjectChoice:
    """The method with its two weights and bias from a logistic fitted on the dev split (0.5 its boundary;
    a unit L2 penalty, as the dev split nearly separates on the subject alone), and the subject a run
    without a topic counts: the mean subject reading of the dev split's on-topic conversations."""
    dev = [(c, r["on_topic"]) for c, r in zip(choices, rows, strict=True) if r["split"] == "dev" and r["topic"]]
    (topic_weight, word_weight), bias = fit_logistic([list(c) for c, _ in dev], [y for _, y in dev], l2=1.0)
    typical = [c[0] for c, y in dev if y]  # the subject reading of an on-topic conversation: a topic-less run's
    return replace(method, topic_weight=round(topic_weight, 3), word_weight=round(word_weight, 3), bias=round(bias, 3),
                   subject_without_topic=round(sum(typical) / len(typical), 3))


def fitted_shift(method: YesNoQuestion, p_yes: Sequence[float], rows: Sequence[dict[str, Any]]) -> YesNoQuestion:
    """The method with ``yes_shift`` moving the dev split's best threshold on P(yes) to 0.5."""
    dev = [(p, r["on_topic"]) for p, r in zip(p_yes, rows, strict=True) if r["split"] == "dev"]
    threshold = best_threshold([p for p, _ in dev], [y for _, y in dev])
    return replace(method, yes_shift=round(method.yes_shift - logit(min(max(threshold, 1e-6), 1 - 1e-6)), 3))


def calibrate(model: str, rows: list[dict[str, Any]], threads: int | None, timing_rows: int,
              only: list[str] | None = None, n_ctx: int = 2048, store: Path | None = None) -> dict[str, Any]:
    reader = Reader(model, threads, n_ctx, store)
    reader.words = run_words(rows, json.loads((REPO / "examples" / "example.json").read_text())["words"])
    out: dict[str, Any] = {"model": model, "methods": [], "fitted": {}}
    methods = {name: m for name, m in candidate_methods(model).items() if not only or any(o in name for o in only)}
    started = time.perf_counter()
    readings: dict[str, list[list[ScoreReading]]] = {name: [] for name in methods}
    seconds: dict[str, float] = dict.fromkeys(methods, 0.0)
    for n, row in enumerate(rows):  # conversations outer: each one's prefills back to back, shared prefixes cached
        for name, method in methods.items():
            got, spent = reader.readings(method, row)
            readings[name].append(got)
            seconds[name] += spent
        if n % 10 == 9:
            print(model, f"{n + 1}/{len(rows)} conversations, {time.perf_counter() - started:.0f}s", flush=True)
    scores_by: dict[str, list[float]] = {}
    for name, method in methods.items():
        if isinstance(method, ConditionalLikelihood | ConversationLikelihood | SummaryLikelihood):
            method = methods[name] = fitted_likelihood(method, [method.pmi(r) for r in readings[name]], rows)
            out["fitted"][name] = {"center": method.center, "scale": method.scale}
        if isinstance(method, SubjectChoice):
            method = methods[name] = fitted_choice(method, [method.choices(r) for r in readings[name]], rows)
            out["fitted"][name] = {"topic_weight": method.topic_weight, "word_weight": method.word_weight,
                                   "bias": method.bias, "subject_without_topic": method.subject_without_topic}
        if isinstance(method, YesNoQuestion):
            method = methods[name] = fitted_shift(method, [method.score(r) for r in readings[name]], rows)
            out["fitted"][name] = {"yes_shift": method.yes_shift}
        scores_by[name] = [relevance(method, r) for r in readings[name]]
        out["methods"].append(report(name, scores_by[name], rows, 0.5, seconds[name] / len(rows)))
        print(model, json.dumps(out["methods"][-1]), flush=True)
    # blends: a logistic of two parts' logits, weights fitted on the dev split
    dev = [i for i, r in enumerate(rows) if r["split"] == "dev"]
    pairs = [("yes/no, plain, topic, question after", "PMI lesson header vs neutral, answer turns"),
             ("rating 1-5 (weighted), topic", "PMI lesson header vs neutral, answer turns"),
             ("yes/no, plain, topic, question after", "rating 1-5 (weighted), topic"),
             ("yes/no, plain, no topic, question after", "PMI lesson header vs neutral, answer turns"),
             ("yes/no, plain, topic, few-shot (4 examples, other topics)",
              "summary PMI (topic and word after the conversation vs alone)"),
             ("yes/no, plain, topic, few-shot (4 examples, other topics)", "PMI lesson header vs neutral, answer turns"),
             ("yes/no, plain, topic, few-shot (4 examples, other topics)",
              "contrastive PMI: lesson header for the word vs for another word"),
             ("yes/no, plain, topic, few-shot (4 examples, other topics)",
              "answer likelihood after the question (neutral header)"),
             ("PMI lesson header vs neutral, answer turns", "contrastive PMI: lesson header for the word vs for another word")]
    for a, b in [(a, b) for a, b in pairs if a in methods and b in methods]:
        weights, bias = fit_logistic([[logit(scores_by[a][i]), logit(scores_by[b][i])] for i in dev],
                                     [rows[i]["on_topic"] for i in dev])
        blend = LogisticBlend(parts=(methods[a], methods[b]), weights=tuple(round(w, 3) for w in weights),
                              bias=round(bias, 3), name=f"blend({a} + {b})")
        scores = [blend.score(ra + rb) for ra, rb in zip(readings[a], readings[b], strict=True)]
        name = f"logistic blend: {a} + {b}"
        out["fitted"][name] = {"weights": blend.weights, "bias": blend.bias}
        out["methods"].append(report(name, scores, rows, 0.5, (seconds[a] + seconds[b]) / len(rows)))
        print(model, json.dumps(out["methods"][-1]), flush=True)
        ranked = rank_average([scores_by[a], scores_by[b]])
        out["methods"].append(report(f"rank average (population only): {a} + {b}", ranked, rows,
                                     best_threshold(ranked, [r["on_topic"] for r in rows]),
                                     (seconds[a] + seconds[b]) / len(rows)))
    out["judge_wall_s"] = round(time.perf_counter() - started, 1)
    # the default method alone: its scores on every row, and its cost with an empty KV cache per request
    chosen = default_method()
    scores = [relevance(chosen, reader.readings(chosen, row)[0]) for row in rows]
    timed = [reader.readings(chosen, row, fresh=True)[1] for row in rows[:timing_rows]]
    reader.cache.clear()
    reader.stored.clear()
    for llama in (reader.spans, reader.last):
        llama.reset()
    # the same requests with the KV cache kept between conversations: what a prefix cache saves (the
    # few-shot examples are the same tokens for every conversation)
    cached = [reader.readings(chosen, row)[1] for row in rows[:timing_rows]]
    out["default"] = report(f"default_method() = {chosen.name} v{chosen.version}", scores, rows, 0.5,
                            sum(timed) / max(len(timed), 1))
    out["default"]["judge_s_prefix_cached"] = round(sum(cached[1:]) / max(len(cached) - 1, 1), 3)
    out["default"]["timed_conversations"] = len(timed)
    print(model, "default", json.dumps(out["default"]), flush=True)
    reader.close()
    return out


def generation_seconds(model: str, threads: int | None, per_config: int) -> dict[str, Any]:
    """Seconds per accepted conversation, generated by the worker's engine (batched, grammar, early stop);
    then the default method's judge on the same engine, as the worker runs it (``ResidentModel.relevance``,
    one accepted conversation after another): with the judge preamble's KV cache kept between score jobs
    (the worker's default: the first job pays for the preamble) and with every job decoded whole."""
    from convfarm.config import load_config
    from convfarm.engine import GenerationRequest, ResidentModel
    from convfarm.messages import task_seed

    resident = ResidentModel(model, n_ctx=2048, n_gpu_layers=0, n_threads=threads, batch_size=8)
    accepted, seconds, attempts = 0, 0.0, 0
    done = []
    for path in ("examples/example.json", "examples/physics.json"):
        config = load_config(REPO / path, model=model, max_tokens=256)[0]
        requests = [GenerationRequest(config=config, word=w, seed=task_seed(0, "judge-calibration", w, 0))
                    for w in config.words[:per_config]]
        started = time.perf_counter()
        outcomes = list(resident.generate(requests))
        seconds += time.perf_counter() - started
        attempts += len(outcomes)
        accepted += sum(o.reason is None for o in outcomes)
        done += [o for o in outcomes if o.reason is None]
    engine = resident.engine
    judged: dict[str, float] = {}
    # the default method as the worker builds it (with its run's words), and the few-shot question (the
    # default before it) in the same run, so their costs compare like with like
    for name, method_of in (("", method_for), ("few_shot_", lambda config: few_shot_question())):
        for label, keep in (("kept", True), ("whole", False)):
            engine.keep_score_prefix = keep
            decoded, began = engine.scored_tokens, time.perf_counter()
            for o in done:
                resident.relevance(method_of(o.request.config), topic=o.request.config.topic, word=o.request.word,
                                   turns=o.turns)
            judged[f"{name}engine_judge_s_per_accepted_{label}"] = round(
                (time.perf_counter() - began) / max(len(done), 1), 3)
            judged[f"{name}engine_judge_tokens_per_accepted_{label}"] = round(
                (engine.scored_tokens - decoded) / max(len(done), 1), 1)
    resident.close()
    per = seconds / max(accepted, 1)
    ratios = {f"{name}engine_judge_over_generation_{label}": round(judged[f"{name}engine_judge_s_per_accepted_{label}"] / per, 3)
              for name in ("", "few_shot_") for label in ("kept", "whole")}
    return {"attempts": attempts, "accepted": accepted, "seconds": round(seconds, 1),
            "seconds_per_accepted": round(per, 3), **judged, **ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--generate", type=int, default=8, help="conversations per config to time generation (0: none)")
    parser.add_argument("--methods", nargs="*", default=None,
                        help="only the candidate methods whose name contains one of these (default: all)")
    parser.add_argument("--n-ctx", type=int, default=2048, help="context (a logits_all Llama keeps n_ctx x n_vocab floats)")
    parser.add_argument("--rows", type=int, default=None, help="only the first N conversations (a timing run)")
    parser.add_argument("--timing-rows", type=int, default=30,
                        help="conversations the default method is timed on alone (empty KV cache per request)")
    parser.add_argument("--store", type=Path, default=None,
                        help="a folder where every reading is kept (MODEL.jsonl); a run started again reuses them")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = load_labelled(SET)[:args.rows]
    results: dict[str, Any] = {"set": str(SET.relative_to(REPO)), "conversations": len(rows),
                               "on_topic": sum(r["on_topic"] for r in rows), "models": {}}
    for model in args.models:
        store = args.store / f"{model}.jsonl" if args.store else None
        result = calibrate(model, rows, args.threads, args.timing_rows, args.methods, args.n_ctx, store)
        if args.generate:
            result["generation"] = generation_seconds(model, args.threads, args.generate)
            per = result["generation"]["seconds_per_accepted"]
            result["judge_over_generation"] = {m["method"]: round(m["judge_s"] / per, 3)
                                               for m in result["methods"] + [result["default"]]}
            result["judge_over_generation"]["default, prefix cached"] = round(
                result["default"]["judge_s_prefix_cached"] / per, 3)
            print(model, "generation", json.dumps(result["generation"]), flush=True)
        results["models"][model] = result
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
