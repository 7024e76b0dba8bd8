"""Depth and cost per accepted conversation (``convfarm/depth.py``): pure arithmetic on the run's counts."""

from __future__ import annotations

import pytest

from convfarm.depth import depth_and_cost, describe
from convfarm.runstate import RunCounts

pytestmark = pytest.mark.fast


def test_rejected_attempts_count_in_the_cost_of_an_accepted_conversation() -> None:
    # 8 conversations decoded as a batch for 8 s: 8 s of machine time, 64 s of summed latency
    counts = RunCounts.from_hash({"accepted": 4, "rejected": 4, "completion_tokens": 1000, "generation_ms": 64000,
                                  "machine_ms": 8000, "accepted_turns": 14})
    cost = depth_and_cost(counts)
    assert cost == {"mean_turns": 3.5, "tokens_per_accepted": 250.0, "machine_seconds_per_accepted": 2.0,
                    "completion_tokens": 1000, "machine_seconds": 8.0, "tokens_per_machine_second": 125.0,
                    "mean_latency_seconds": 8.0}
    assert describe(cost).startswith("3.5 turns · 250 tokens · 2.00 s machine time per accepted conversation")


def test_a_run_counted_before_machine_time_uses_its_latency() -> None:
    cost = depth_and_cost(RunCounts.from_hash({"accepted": 2, "completion_tokens": 100, "generation_ms": 3000}))
    assert cost["machine_seconds"] == 3.0 and cost["machine_seconds_per_accepted"] == 1.5


def test_nothing_accepted_yet() -> None:
    cost = depth_and_cost(RunCounts.from_hash({"accepted": 0, "rejected": 3, "completion_tokens": 90}))
    assert cost["mean_turns"] is None and cost["tokens_per_accepted"] is None
    assert describe(cost) == "no accepted conversation yet"
