"""``producer judge``: score the records of a run directory, or of a JSONL file, with a config's judge.

The judge is the config's (docs/design.md "Relevance judge"): ``judge.model`` or else the
generating model, the default method, the config's ``topic``. Records are read, never changed:
``--json`` prints ``{"id": ..., "relevance": ...}`` per line; ``--out DIR`` writes a re-scored run
directory the way ``producer filter`` does (its rules, and ``judge.min_relevance`` on the new scores).

Two ways to run the model, the same scores within the engine's tolerance (tests/test_judge_engine.py):
the batched engine (default: several records' prefills in one step) or, with ``--one-at-a-time``,
:func:`convfarm.judge.read_with_llama` request by request (the reference).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convfarm.config import RunConfig
from convfarm.engine import ResidentModel
from convfarm.judge import method_for
from convfarm.judge.scoring import RELEVANCE, score_one_at_a_time
from convfarm.messages import JudgeIdentity, Turn
from convfarm.rundir.reader import NotARun, check_run_dir, read_run
from convfarm.rundir.shards import ShardCorrupt

ENGINE_SLOTS = 4  # records scored together by the engine


class JudgeInputError(ValueError):
    """Bad input to ``producer judge`` (one line, for the CLI)."""


@dataclass(frozen=True)
class Scored:
    record: dict[str, Any]
    relevance: float


def read_records(path: Path, *, rejected: bool = False) -> Iterator[dict[str, Any]]:
    """A run directory's records (its conversations; ``rejected``: its rejected ones too), or a JSONL file's."""
    if path.is_file():
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise JudgeInputError(f"{path}: line {number} is not JSON ({exc.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get("word"), str) \
                        or not isinstance(record.get("turns"), list):
                    raise JudgeInputError(f"{path}: line {number} is not a record (needs 'word' and 'turns')")
                yield record
        return
    try:
        check_run_dir(path)
        yield from read_run(path)
        if rejected:
            yield from read_run(path, "rejected")
    except (NotARun, ShardCorrupt) as exc:
        raise JudgeInputError(str(exc)) from None


def judge_model(config: RunConfig, *, one_at_a_time: bool) -> ResidentModel:
    ref = config.judge.model if config.judge and config.judge.model else config.model
    return ResidentModel(ref, n_ctx=config.n_ctx, n_gpu_layers=config.n_gpu_layers, n_threads=config.n_threads,
                         batch_size=1 if one_at_a_time else ENGINE_SLOTS, logits_all=one_at_a_time)


def score_records(config: RunConfig, records: Iterator[dict[str, Any]], model: ResidentModel, *,
                  one_at_a_time: bool = False) -> Iterator[Scored]:
    """Every record with its relevance, in input order."""
    method = method_for(config)

    def score(record: dict[str, Any]) -> Scored:
        turns = [Turn(**t) for t in record.get("turns", [])]
        if one_at_a_time:
            value = score_one_at_a_time(model.llama, method, topic=config.topic, word=record["word"], turns=turns)
        else:
            value = model.relevance(method, topic=config.topic, word=record["word"], turns=turns)
        return Scored(record, value)

    if one_at_a_time:
        yield from map(score, records)
        return
    # the engine batches whatever is submitted together: ENGINE_SLOTS records in flight
    with ThreadPoolExecutor(ENGINE_SLOTS) as pool:
        yield from pool.map(score, records)


def judge_identity(config: RunConfig, model: ResidentModel) -> JudgeIdentity:
    method = method_for(config)
    return JudgeIdentity(model=model.identity, method=method.name, version=method.version)


def rescored(identity: JudgeIdentity) -> Callable[[Scored], dict[str, Any]]:
    """A record with its new relevance and judge (what ``--out`` writes before the rules and the bar)."""

    def stamp(scored: Scored) -> dict[str, Any]:
        scores = {**(scored.record.get("scores") or {}), RELEVANCE: scored.relevance}
        # no rules stamp: a re-scored record is judged again by the commit stages, the bar included
        return {**scored.record, "scores": scores, "judge": identity.model_dump(mode="json"), "rules_version": None}

    return stamp
