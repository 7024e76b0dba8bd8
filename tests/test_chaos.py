"""The chaos suite: real processes killed at the worst moments (tests/chaos.py builds the farm).

Every case runs on its own farm (a private redis-server with AOF and fsync always, collectors,
generation workers or records put on the stream directly, the bundled model with small
max_tokens) and asserts after recovery that nothing was lost or doubled (``verify``), and that
its fault hit work in flight: a killed worker was running a task of the run and that attempt
came back; a collector died (or stopped) between the commit steps its checkpoint names.
``benchmarks/soak.py`` repeats the same cases many times over a larger run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chaos import CASES, WORDS, run_case

pytestmark = pytest.mark.skipif(__import__("producer.local", fromlist=["x"]).find_redis_server() is None,
                                reason="no redis-server binary")

Figures = dict[str, float]


def worker_hit(figures: Figures) -> None:
    assert figures["hit"] >= 1, "the worker was killed with no task of the run running"
    assert figures["hit_came_back"] >= 1, "no attempt the killed worker held was delivered again"


def finished_warm(figures: Figures) -> None:
    assert figures["at_fault"] >= 1, "the warm shutdown came with no task of the run running"
    assert figures["at_fault_written"] == figures["at_fault"], "a task running at the warm shutdown was not written"
    assert figures["at_fault_delivered_once"] == figures["at_fault"], "a task finished at the warm shutdown ran again"


def redis_hit(figures: Figures) -> None:
    assert figures["at_fault"] >= 1, "Redis failed with no task of the run running"
    assert figures["at_fault_written"] == figures["at_fault"], "a task running when Redis failed was never written"


def collector_hit(figures: Figures) -> None:
    assert figures["faults"] >= 1, "the collector never reached its checkpoint"


def counted_once(figures: Figures) -> None:
    collector_hit(figures)
    assert figures["tokens_counted"] == figures["tokens_on_disk"], "tokens counted twice or lost"


# what each case proves beyond verify() (every word has its quota or is short with a reason,
# nothing written twice, the manifest equals the shards)
PROOFS: dict[str, Callable[[Figures], None]] = {
    "pool_child_kill": worker_hit,
    "worker_kill": worker_hit,
    "batched_worker_kill": worker_hit,
    "warm_shutdown": finished_warm,
    "redis_kill": redis_hit,
    "redis_unreachable": redis_hit,
    "duplicated_results": counted_once,
    "stalled_collector_before_write": counted_once,
    "stalled_collector_after_write": counted_once,
    **{f"collector_{p}": collector_hit for p in ("before_write", "after_write", "after_rename", "before_ack")},
    "two_collectors": collector_hit,
    "seal_race": counted_once,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_chaos(case: str, tmp_path: Path) -> None:
    figures = run_case(case, tmp_path / case, WORDS[:6])
    assert figures["accepted"] + figures["short"] >= 6, figures  # every word accounted for (verify names which)
    PROOFS.get(case, lambda _: None)(figures)
