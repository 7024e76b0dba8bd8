"""The commit's stages (convfarm/commit): the order both the collector and ``producer filter`` run,
and the judge threshold a re-checked record must clear."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from convfarm.commit import OFF_TOPIC, Batch, Checkpoints, Item, JudgeThreshold, LocalLedger, commit_stages
from convfarm.judging import rules_stamp
from convfarm.rundir.shards import LocalShardRegistry, ShardSet
from convfarm.runstate import RunInfo
from tests.inprocess import make_config, make_record

pytestmark = pytest.mark.fast

OTHER_STAMP = "rules-of-another-release"


def batch_of(tmp_path: Path, min_relevance: float | None, items: list[Item]) -> Batch:
    config = make_config(topic="animals", judge={"min_relevance": min_relevance} if min_relevance is not None else None)
    info = RunInfo(run="r", config=config, out_dir="", queue="", status="active", created_at=0.0, total_words=1)
    shards = ShardSet(LocalShardRegistry(), "r", tmp_path, "t", shard_size=10, compression="none")
    return Batch(info, rules_stamp(config), shards, items)


# min_relevance, the record's relevance, its stamp (own or another's), its status -> status, reason after the stage
CASES = [
    (0.5, 0.2, "other", "accepted", "rejected", OFF_TOPIC),
    (0.5, 0.5, "other", "accepted", "accepted", None),  # at the bar: kept
    (0.5, 0.9, "other", "accepted", "accepted", None),
    (0.5, None, "other", "accepted", "accepted", None),  # no score: untouched
    (0.5, 0.2, "own", "accepted", "accepted", None),  # judged by our own rules: the worker decided
    (None, 0.2, "other", "accepted", "accepted", None),  # no threshold configured
    (0.5, 0.2, "other", "rejected", "rejected", "too_few_turns"),  # already rejected: its reason stays
]


@pytest.mark.parametrize(("min_relevance", "relevance", "stamp", "status", "want_status", "want_reason"), CASES)
def test_the_judge_threshold_rejects_a_rechecked_record_below_the_bar(
        tmp_path: Path, min_relevance: float | None, relevance: float | None, stamp: str, status: str,
        want_status: str, want_reason: str | None) -> None:
    record = make_record("r", "bridge", 0, status=status, reason="too_few_turns" if status == "rejected" else None)
    record.scores = {"relevance": relevance} if relevance is not None else {}
    item = Item.arrived(record)
    item.fresh = True
    batch = batch_of(tmp_path, min_relevance, [item])
    record.rules_version = batch.stamp if stamp == "own" else OTHER_STAMP
    JudgeThreshold().run(batch)
    assert (record.status, record.reason) == (want_status, want_reason)
    assert record.scores == ({"relevance": relevance} if relevance is not None else {})  # the score is kept


def test_the_stage_order_is_the_same_for_every_writer() -> None:
    names = [stage.name for stage in commit_stages(LocalLedger(), Checkpoints())]
    assert names == ["committed check", "rules re-check", "judge threshold", "write", "mark", "seal", "outcomes"]


def test_a_collector_runs_the_same_order_with_dedup_before_the_write(rclient: redis.Redis, tmp_path: Path) -> None:
    """The collector's list is the filter's with the run-wide dedup between the judge threshold and
    the write: a duplicate is rejected before anything is written, and after the cheaper checks."""
    from workers.collector import Collector

    collector = Collector(rclient, "stage-order", lambda *_: None, out_root=tmp_path)
    names = [stage.name for stage in collector.committer.stages]
    assert names == ["committed check", "rules re-check", "judge threshold", "dedup", "write", "mark", "seal",
                     "outcomes"]


def test_a_redelivered_or_repeated_record_is_written_once(tmp_path: Path) -> None:
    """Two copies of one record in a batch: the first is written and counted, the second only counted."""
    ledger = LocalLedger()
    first, again = (Item.arrived(make_record("r", "bridge", 0)) for _ in range(2))
    batch = batch_of(tmp_path, None, [first, again])
    for stage in commit_stages(ledger, Checkpoints()):
        stage.run(batch)
    assert [first.fresh, again.fresh] == [True, False]
    assert (tmp_path / ".open-conversations-t.jsonl").read_text().count("\n") == 1
    assert ledger.run_counts().accepted == 1
