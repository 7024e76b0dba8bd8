"""Relevance scoring: requests, readings, and the method that turns them into a score.

The contract between the judge and whatever runs the model:

* :class:`ScoreRequest` is one prefill: ``tokens``, and what to read back after it —
  the log-probability of each of ``candidates`` as the *next* token after all of ``tokens``,
  and/or the log-probability of every token from ``span_start`` on, each given those before it;
* :class:`ScoreReading` is what came back, in the same order;
* a :class:`JudgeMethod` makes the requests for one conversation and turns the readings into a
  score in [0, 1]. Its ``name`` and ``version`` are stamped on every record it scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from convfarm.messages import Turn

# text -> token ids, without BOS (the method adds it where it wants one)
Tokenize = Callable[[str], list[int]]


@dataclass(frozen=True)
class ScoreRequest:
    tokens: tuple[int, ...]
    candidates: tuple[int, ...] = ()  # read log P(candidate | tokens) at the last position
    span_start: int | None = None  # read log P(tokens[i] | tokens[:i]) for every i >= span_start (i >= 1)


@dataclass(frozen=True)
class ScoreReading:
    candidates: tuple[float, ...] = ()
    span: tuple[float, ...] = field(default_factory=tuple)


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


@dataclass(frozen=True)
class YesNoQuestion:
    """Ask the model, in plain text, whether the transcript teaches the word; read P(" yes") vs P(" no").

    A plain-text prompt, not the chat template: on SmolLM2-135M the template's question scored
    at chance and the plain one well (docs/judge.md).
    """

    name: str = "yes-no-plain"
    version: int = 1

    def question(self, topic: str | None, word: str, turns: Sequence[Turn]) -> str:
        subject = f"the {topic} term \"{word}\"" if topic else f"\"{word}\""
        return (f"Conversation:\n{transcript(turns)}\n\n"
                f"Question: Does this conversation explain {subject} correctly and stay on that subject? "
                "Answer yes or no.\nAnswer:")

    def requests(self, *, topic: str | None, word: str, turns: Sequence[Turn], tokenize: Tokenize,
                 bos: int | None) -> list[ScoreRequest]:
        tokens = ([bos] if bos is not None else []) + tokenize(self.question(topic, word, turns))
        yes, no = tokenize(" yes")[0], tokenize(" no")[0]
        return [ScoreRequest(tokens=tuple(tokens), candidates=(yes, no))]

    def score(self, readings: Sequence[ScoreReading]) -> float:
        log_yes, log_no = readings[0].candidates
        return yes_probability(log_yes, log_no)


def default_method() -> JudgeMethod:
    return YesNoQuestion()


def _log_softmax_row(row: Any) -> Any:
    import numpy as np

    row = np.asarray(row, dtype=np.float64)
    top = row.max()
    return row - top - math.log(float(np.exp(row - top).sum()))


def read_with_llama(llama: Any, request: ScoreRequest) -> ScoreReading:
    """Serve one request on a ``llama_cpp.Llama`` created with ``logits_all=True`` (one at a time)."""
    llama.reset()
    llama.eval(list(request.tokens))
    scores = llama.scores  # (n_ctx, n_vocab): row i = logits after tokens[: i + 1]
    n = len(request.tokens)
    candidates: tuple[float, ...] = ()
    if request.candidates:
        last = _log_softmax_row(scores[n - 1])
        candidates = tuple(float(last[c]) for c in request.candidates)
    span: tuple[float, ...] = ()
    if request.span_start is not None:
        span = tuple(float(_log_softmax_row(scores[i - 1])[request.tokens[i]])
                     for i in range(max(1, request.span_start), n))
    return ScoreReading(candidates=candidates, span=span)


def relevance(method: JudgeMethod, readings: Sequence[ScoreReading]) -> float:
    """The method's score, clamped to [0, 1] (a NaN is 0: a record the judge could not read is not on topic)."""
    value = method.score(readings)
    if value != value:  # NaN
        return 0.0
    return min(1.0, max(0.0, value))
