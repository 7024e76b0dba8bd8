"""Measuring a judge against labels: the labelled set, AUC, a threshold, a small logistic fit.

Used by the calibration benchmark and the test that holds the AUC bound (docs/judge.md,
"Calibration"). Plain arithmetic: a set of a hundred conversations needs no ML library.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from convfarm.messages import Turn


def load_labelled(path: Path) -> list[dict[str, Any]]:
    """The labelled set, one conversation per line; ``turns`` become :class:`Turn`."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            row["turns"] = [Turn(**turn) for turn in row["turns"]]
            rows.append(row)
    return rows


def run_words(rows: Sequence[dict[str, Any]], topicless: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Row id -> the word list its run would have had: the set's words of the row's topic, in the set's
    order (a physics run's words), and ``topicless`` (the example config's words) for a row without a
    topic, whose real generations came from those configs. A method that chooses among the run's words
    (``SubjectChoice``) is calibrated against these."""
    by_topic: dict[str, list[str]] = {}
    for row in rows:
        if row["topic"] and row["word"] not in by_topic.setdefault(row["topic"], []):
            by_topic[row["topic"]].append(row["word"])
    return {row["id"]: tuple(by_topic[row["topic"]]) if row["topic"] else tuple(topicless) for row in rows}


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Mann-Whitney AUC: the chance a positive scores above a negative, ties counted half; NaN without both."""
    ranked = sorted(zip(scores, labels, strict=True), key=lambda pair: pair[0])
    n_pos = sum(1 for _, y in ranked if y)
    n_neg = len(ranked) - n_pos
    if not n_pos or not n_neg:
        return math.nan
    rank_sum, i = 0.0, 0
    while i < len(ranked):  # average ranks over ties
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mid_rank = (i + 1 + j) / 2
        rank_sum += mid_rank * sum(1 for _, y in ranked[i:j] if y)
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def accuracy(scores: Sequence[float], labels: Sequence[bool], threshold: float) -> float:
    return sum((s >= threshold) == y for s, y in zip(scores, labels, strict=True)) / len(scores)


def best_threshold(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """The threshold (a midpoint between two scores) with the best accuracy; the lowest such on ties."""
    values = sorted(set(scores))
    cuts = [values[0] - 1e-9] + [(a + b) / 2 for a, b in itertools.pairwise(values)] + [values[-1] + 1e-9]
    return max(cuts, key=lambda t: (accuracy(scores, labels, t), -t))


def rank_average(columns: Sequence[Sequence[float]]) -> list[float]:
    """Each column turned into ranks in [0, 1] (ties averaged), then averaged per row: a population-level blend."""
    def ranks(column: Sequence[float]) -> list[float]:
        order = sorted(range(len(column)), key=lambda i: column[i])
        out = [0.0] * len(column)
        i = 0
        while i < len(order):
            j = i
            while j < len(order) and column[order[j]] == column[order[i]]:
                j += 1
            for k in range(i, j):
                out[order[k]] = ((i + j - 1) / 2) / max(len(column) - 1, 1)
            i = j
        return out
    ranked = [ranks(c) for c in columns]
    return [sum(values) / len(values) for values in zip(*ranked, strict=True)]


def fit_logistic(features: Sequence[Sequence[float]], labels: Sequence[bool], *, l2: float = 1e-3,
                 steps: int = 500) -> tuple[list[float], float]:
    """Weights and bias of P(y) = sigmoid(w·x + b) by Newton's method (few features, a hundred rows).

    A small L2 penalty keeps the fit finite when the dev split is separable.
    """
    import numpy as np

    x = np.column_stack([np.asarray(features, dtype=np.float64), np.ones(len(features))])
    y = np.asarray(labels, dtype=np.float64)
    w = np.zeros(x.shape[1])
    penalty = l2 * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0  # the bias is not shrunk
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (p - y) + penalty @ w
        hessian = (x.T * (p * (1 - p))) @ x + penalty
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.abs(step).max()) < 1e-10:
            break
    return [float(v) for v in w[:-1]], float(w[-1])


def open_llama(ref: str, *, n_threads: int | None, logits_all: bool, n_ctx: int = 2048) -> Any:
    """A ``llama_cpp.Llama`` for :func:`~convfarm.judge.read_with_llama`, loaded as the worker loads its model
    (without llama.cpp's extra CPU buffers where they crash: :mod:`convfarm.engine.cpu_buffers`)."""
    from llama_cpp import Llama

    from convfarm.engine.cpu_buffers import model_defaults, use_extra_buffers
    from convfarm.model_files import resolve_model
    from convfarm.settings import get_settings

    with model_defaults(use_extra_bufts=use_extra_buffers(get_settings().cpu_extra_buffers)):
        return Llama(str(resolve_model(ref)), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                     logits_all=logits_all, verbose=False)


def bos_token(llama: Any) -> int | None:
    """The BOS token when the model's tokenizer adds one (Gemma), else None (SmolLM2 adds none)."""
    return llama.token_bos() if len(llama.tokenize(b"x", add_bos=True)) > len(llama.tokenize(b"x", add_bos=False)) else None
