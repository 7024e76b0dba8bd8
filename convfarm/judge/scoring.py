"""How the farm uses the relevance judge: who scores a run's records, with which tokens, and the bar.

* :func:`judged_by_generator`: without another judge model named in the config, the worker
  that generated a conversation scores it on the model it holds (docs/design.md "Relevance judge");
* :func:`llama_tokenizer`: the ``tokenize``/``bos`` pair a method's requests are built with, the same
  for the engine, ``producer judge`` and calibration, so a score does not depend on who computed it;
* :func:`off_topic`: the verdict of ``judge.min_relevance`` on a record's scores;
* :func:`score_one_at_a_time`: a method's score on a ``llama_cpp.Llama``, request by request
  (``producer judge`` without the engine, and the reference the engine is tested against).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from convfarm.config import RunConfig
from convfarm.judge.relevance import JudgeMethod, Tokenize, read_with_llama, relevance
from convfarm.messages import Turn

RELEVANCE = "relevance"  # the score's name in a record's ``scores``


def judged_by_generator(config: RunConfig) -> bool:
    """True unless the config names a judge model other than its generator."""
    return config.judge is None or config.judge.model in (None, config.model)


def llama_tokenizer(llama: Any) -> tuple[Tokenize, int | None]:
    """A ``llama_cpp.Llama``'s text -> tokens (no BOS, special tokens as text) and its BOS when the model adds one."""

    def tokenize(text: str) -> list[int]:
        return llama.tokenize(text.encode(), add_bos=False, special=False)

    bos = llama.token_bos()
    return tokenize, bos if bos != -1 and llama._model.add_bos_token() else None


def off_topic(config: RunConfig, scores: dict[str, float]) -> str | None:
    """Why a record falls under ``judge.min_relevance`` (the detail of an ``off_topic`` rejection), or None.

    A record without a relevance score under a bar is off topic too: the bar was not shown to be cleared.
    """
    bar = config.judge.min_relevance if config.judge else None
    if bar is None:
        return None
    score = scores.get(RELEVANCE)
    if score is None:
        return f"no relevance score, judge.min_relevance is {bar:g}"
    return f"relevance {score:.3f} < judge.min_relevance {bar:g}" if score < bar else None


def score_one_at_a_time(llama: Any, method: JudgeMethod, *, topic: str | None, word: str,
                        turns: Sequence[Turn]) -> float:
    """The method's relevance for one conversation on a ``Llama(logits_all=True)``, one request at a time."""
    tokenize, bos = llama_tokenizer(llama)
    requests = method.requests(topic=topic, word=word, turns=turns, tokenize=tokenize, bos=bos)
    return relevance(method, [read_with_llama(llama, request) for request in requests])

