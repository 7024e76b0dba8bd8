"""The chaos suite: real processes killed at the worst moments (tests/chaos.py builds the farm).

Every case runs on its own farm (a private redis-server with AOF and fsync always, a
collector, generation workers, the bundled model with small max_tokens) and asserts after
recovery that nothing was lost or doubled (``verify``). ``benchmarks/soak.py`` repeats the
same cases many times over a larger run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import CASES, WORDS, run_case

pytestmark = pytest.mark.skipif(__import__("producer.local", fromlist=["x"]).find_redis_server() is None,
                                reason="no redis-server binary")


@pytest.mark.parametrize("case", sorted(CASES))
def test_chaos(case: str, tmp_path: Path) -> None:
    figures = run_case(case, tmp_path / case, WORDS[:6])
    assert figures["records"] >= 6
