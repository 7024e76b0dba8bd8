"""The chaos suite: real processes killed at the worst moments (tests/chaos.py builds the farm).

Every case runs on its own farm (a private redis-server with AOF and fsync always, collectors,
generation workers or records put on the stream directly, the bundled model with small
max_tokens) and asserts after recovery that nothing was lost or doubled (``verify``), and that
its fault hit work in flight: a killed worker was running a task of the run and that attempt
came back; a collector died (or stopped) between the commit steps its checkpoint names.
``benchmarks/soak.py`` repeats the same cases many times over a larger run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import CASES, WORDS, run_case

pytestmark = pytest.mark.skipif(__import__("producer.local", fromlist=["x"]).find_redis_server() is None,
                                reason="no redis-server binary")


@pytest.mark.parametrize("case", sorted(CASES))
def test_chaos(case: str, tmp_path: Path) -> None:
    # run_case verifies the run after recovery and asserts the case's proof that its fault hit work in flight
    figures = run_case(case, tmp_path / case, WORDS[:6])
    assert figures["accepted"] + figures["short"] >= 6, figures  # every word accounted for (verify names which)
