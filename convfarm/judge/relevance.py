"""Relevance scoring: requests, readings, and the method that turns them into a score.

The contract between the judge and whatever runs the model:

* :class:`ScoreRequest` is one prefill: ``tokens``, and what to read back after it —
  the log-probability of each of ``candidates`` as the *next* token after all of ``tokens``,
  and/or the log-probability of every token from ``span_start`` on, each given those before it,
  and/or ``probes``: candidates read at earlier positions (several choices in one prefill);
  ``shared`` says how many leading tokens every conversation's request repeats (a cacheable preamble);
* :class:`ScoreReading` is what came back, in the same order;
* a :class:`JudgeMethod` makes the requests for one conversation and turns the readings into a
  score in [0, 1]. Its ``name`` and ``version`` are stamped on every record it scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from convfarm.messages import Turn

# text -> token ids, without BOS (the method adds it where it wants one)
Tokenize = Callable[[str], list[int]]


@dataclass(frozen=True)
class ScoreRequest:
    tokens: tuple[int, ...]
    candidates: tuple[int, ...] = ()  # read log P(candidate | tokens) at the last position
    span_start: int | None = None  # read log P(tokens[i] | tokens[:i]) for every i >= span_start (i >= 1)
    # tokens[:shared] are the same for many requests (a method's fixed preamble: worked examples): an engine
    # may keep their KV cache and decode only the rest (docs/judge.md, "The judge's cost"); a hint, the
    # readings do not depend on it
    shared: int = 0
    # (i, candidates): read log P(candidate | tokens[: i + 1]) for each, at a position inside the prompt (a
    # choice asked mid-text, the text then going on with the true answer: several choices, one prefill)
    probes: tuple[tuple[int, tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class ScoreReading:
    candidates: tuple[float, ...] = ()
    span: tuple[float, ...] = field(default_factory=tuple)
    probes: tuple[tuple[float, ...], ...] = ()  # one tuple per request probe, in its order


class JudgeMethod(Protocol):
    name: str
    version: int

    def requests(self, *, topic: str | None, word: str, turns: Sequence[Turn], tokenize: Tokenize,
                 bos: int | None) -> list[ScoreRequest]: ...

    def score(self, readings: Sequence[ScoreReading]) -> float: ...


def transcript(turns: Sequence[Turn]) -> str:
    return "\n".join(f"{turn.speaker}: {turn.text}" for turn in turns)


def yes_probability(log_yes: float, log_no: float) -> float:
    """P(yes) normalised over yes and no: a reranker's relevance, from two log-probabilities."""
    top = max(log_yes, log_no)
    yes, no = math.exp(log_yes - top), math.exp(log_no - top)
    return yes / (yes + no)


def default_method() -> JudgeMethod:
    """The method chosen by measurement (docs/judge.md, "The method"); imported here, not at the top,
    because the methods build on this module's requests and readings."""
    from convfarm.judge.methods import default_method as chosen

    return chosen()


def method_for(config: Any) -> JudgeMethod:
    """The method a run's config names (``judge.method``), or the default (a config is a
    convfarm.config.RunConfig; typed loosely here, where the methods' contract lives)."""
    from convfarm.judge.methods import named_method

    judge = getattr(config, "judge", None)
    return named_method(judge.method if judge is not None else None, getattr(config, "words", ()))


def _log_softmax_row(row: Any) -> Any:
    row = np.asarray(row, dtype=np.float64)
    top = row.max()
    return row - top - math.log(float(np.exp(row - top).sum()))


def _shared_prefix(before: Sequence[int], tokens: Sequence[int], *, limit: int) -> int:
    kept = 0
    while kept < min(len(before), limit) and before[kept] == tokens[kept]:
        kept += 1
    return kept


def read_with_llama(llama: Any, request: ScoreRequest) -> ScoreReading:
    """Serve one request on a ``llama_cpp.Llama``, one at a time.

    A request that reads a span needs the Llama created with ``logits_all=True``; one that reads only
    next-token candidates works on either, and without ``logits_all`` the prefill computes the output
    layer for its last position only (what a scoring prefill costs in the engine). Consecutive requests
    that start alike (one transcript, several questions after it) reuse the shared prefix's KV cache.
    """
    n = len(request.tokens)
    # the KV cache keeps what the previous request shares with this one (the same transcript before another
    # question): evaluate only the rest, at least the last TWO tokens. A single token decoded alone takes
    # llama.cpp's one-row path, whose logits differ from a prefill's (0.35 nats on a yes/no reading of
    # SmolLM2, measured): with two or more the reading is the prefill's, as the engine's is
    kept = _shared_prefix(llama.input_ids[:llama.n_tokens], request.tokens, limit=max(0, n - 2))
    llama.n_tokens = kept
    llama.eval(list(request.tokens[kept:]))
    logits_all = bool(getattr(llama, "_logits_all", True))
    if (request.span_start is not None or request.probes) and not logits_all:
        raise ValueError("a span or probe reading needs a Llama created with logits_all=True")
    candidates: tuple[float, ...] = ()
    if request.candidates:
        if logits_all:
            last_row = llama.scores[n - 1]  # (n_ctx, n_vocab): row i = logits after tokens[: i + 1]
        else:
            last_row = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(llama.n_vocab(),))
        last = _log_softmax_row(last_row)
        candidates = tuple(float(last[c]) for c in request.candidates)
    span: tuple[float, ...] = ()
    if request.span_start is not None:
        start = max(1, request.span_start)
        rows = np.asarray(llama.scores[start - 1:n - 1], dtype=np.float64)  # row i-1 predicts tokens[i]
        top = rows.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
        picked = rows[np.arange(len(rows)), list(request.tokens[start:n])]
        span = tuple(float(x) for x in picked - log_norm)
    probes = tuple(tuple(float(v) for v in _log_softmax_row(llama.scores[i])[list(ids)]) for i, ids in request.probes)
    return ScoreReading(candidates=candidates, span=span, probes=probes)


def relevance(method: JudgeMethod, readings: Sequence[ScoreReading]) -> float:
    """The method's score, clamped to [0, 1] (a NaN is 0: a record the judge could not read is not on topic)."""
    value = method.score(readings)
    if value != value:  # NaN
        return 0.0
    return min(1.0, max(0.0, value))


def __getattr__(name: str) -> Any:
    """The first method was defined here: ``from convfarm.judge.relevance import YesNoQuestion`` still works
    (the methods now live in convfarm/judge/methods.py, which builds on this module)."""
    if name == "YesNoQuestion":
        from convfarm.judge.methods import YesNoQuestion

        return YesNoQuestion
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
