"""The judge's bookkeeping, table-driven: who scores, the bar, the score counters, the distribution."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from convfarm.config import load_config
from convfarm.judge import method_for
from convfarm.judge.distribution import describe_scores, score_counters, score_summary
from convfarm.judge.scoring import judged_by_generator, off_topic
from convfarm.messages import ConversationRecord, ModelIdentity, TokenCounts
from convfarm.rules import OFF_TOPIC, REASONS
from tests.conftest import EXAMPLE


def config_with(**fields: object):
    return load_config(EXAMPLE, **fields)[0]


@pytest.mark.fast
@pytest.mark.parametrize(("judge", "scores", "expected"), [
    (None, {"relevance": 0.1}, None),  # no bar: nothing is off topic
    ({"min_relevance": 0.5}, {"relevance": 0.49}, "relevance 0.490 < judge.min_relevance 0.5"),
    ({"min_relevance": 0.5}, {"relevance": 0.5}, None),  # at the bar: kept
    ({"min_relevance": 0.5}, {}, "no relevance score, judge.min_relevance is 0.5"),  # not shown to clear it
    ({"min_relevance": 0.0}, {"relevance": 0.0}, None),
])
def test_the_bar(judge: dict | None, scores: dict, expected: str | None) -> None:
    assert off_topic(config_with(judge=judge), scores) == expected


@pytest.mark.fast
def test_off_topic_is_a_documented_reason() -> None:
    assert OFF_TOPIC == "off_topic" and OFF_TOPIC in REASONS
    assert "`off_topic`" in (Path(__file__).parent.parent / "docs" / "rules-and-modes.md").read_text()


@pytest.mark.fast
@pytest.mark.parametrize(("judge", "generator_scores"), [
    (None, True), ({"min_relevance": 0.3}, True), ({"model": "smollm2-135m"}, True),  # the generator itself
    ({"model": "gemma3-270m"}, False),
])
def test_who_scores(judge: dict | None, generator_scores: bool) -> None:
    config = config_with(model="smollm2-135m", judge=judge)
    assert judged_by_generator(config) is generator_scores


def record(score: float | None, status: str = "accepted") -> ConversationRecord:
    return ConversationRecord(id="x", run="r", word="w", attempt=0, status=status,
                              model=ModelIdentity(name="m", file="m.gguf", sha256="", size=0), params={}, seed=0,
                              worker="w", tokens=TokenCounts(), generation_seconds=0.0,
                              scores={} if score is None else {"relevance": score})


@pytest.mark.fast
def test_counters_and_summary() -> None:
    # (score, accepted): two on topic, one accepted below the bar, one off_topic rejection, one unscored rule rejection
    pairs = [(record(0.95), True), (record(0.5), True), (record(0.2), True), (record(0.05, "rejected"), False),
             (record(None, "rejected"), False)]
    counters = score_counters(pairs, bar=0.5)
    assert counters == {"score:scored": 4, "score:bin:9": 1, "score:bin:5": 1, "score:bin:2": 1, "score:bin:0": 1,
                        "score:sum_milli": 1700, "score:on_topic": 2}
    summary = score_summary({k.removeprefix("score:"): v for k, v in counters.items()}, attempts=5, bar=0.5)
    assert summary == {"scored": 4, "mean": 0.425, "histogram": [1, 0, 1, 0, 0, 1, 0, 0, 0, 1], "on_topic_bar": 0.5,
                       "on_topic": 2, "attempts": 5, "on_topic_yield": 0.4}
    assert describe_scores(summary).startswith("4 scored · mean 0.42 · 0 ")
    assert "on-topic yield 0.40 (2 of 5 attempts ≥ 0.5)" in describe_scores(summary)
    assert score_counters([(record(1.0), True)], bar=0.5)["score:bin:9"] == 1  # 1.0 is in the last tenth
    assert score_summary({}, attempts=0, bar=0.5)["on_topic_yield"] is None
    assert describe_scores(score_summary({}, attempts=3, bar=0.5)) == "no relevance score yet"



@pytest.mark.fast
@pytest.mark.parametrize(("judge", "method"), [
    (None, "subject-choice"), ({}, "subject-choice"), ({"method": "subject-choice"}, "subject-choice"),
    ({"method": "yes-no-few-shot"}, "yes-no-few-shot"),
    ({"method": "yes-no-few-shot+likelihood", "min_relevance": 0.5}, "yes-no-few-shot+likelihood"),
])
def test_the_config_names_the_method(judge: dict | None, method: str) -> None:
    config = config_with(judge=judge)
    chosen = method_for(config)
    assert chosen.name == method
    # the subject choice chooses among the run's own words
    assert getattr(chosen, "words", tuple(config.words)) == tuple(config.words)


@pytest.mark.fast
def test_a_method_left_unset_keeps_the_run_id_and_an_unknown_one_is_refused(tmp_path: Path) -> None:
    # judge.method came after runs with a judge section existed: unset, the config's hash is what it was
    before = config_with(judge={"min_relevance": 0.5})
    assert '"method"' not in before.canonical_json()
    same = config_with(judge={"min_relevance": 0.5, "method": None})
    named = config_with(judge={"min_relevance": 0.5, "method": "yes-no-few-shot+likelihood"})
    assert same.config_hash() == before.config_hash() != named.config_hash()
    data = json.loads(Path(EXAMPLE).read_text())
    data["judge"] = {"method": "ask-a-friend"}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    result = subprocess.run([sys.executable, "-m", "producer.cli", "enqueue", str(path), "--dry-run"],
                            capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "judge.method" in lines[0], result.stderr
