"""One bad run cannot stop the collector, a lost attempt is issued again, and a run that can
no longer progress ends ``--wait`` with the reason (tests/chaos.py builds the farm)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from convfarm.runstate import run_key
from tests.chaos import WORDS, ChaosFarm, verify
from tests.conftest import REPO, wait_for, write_config

pytestmark = pytest.mark.skipif(__import__("producer.local", fromlist=["x"]).find_redis_server() is None,
                                reason="no redis-server binary")


@pytest.fixture
def farm(tmp_path: Path):
    farm = ChaosFarm(tmp_path / "farm")
    yield farm
    farm.close()


def cli(farm: ChaosFarm, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "producer.cli", *args], cwd=REPO, env=farm.env(**env),
                          capture_output=True, text=True, timeout=timeout)


def test_bad_runs_fail_alone_while_good_runs_flow(farm: ChaosFarm, tmp_path: Path) -> None:
    """An --out the collector cannot create and a stored config that no longer loads fail their
    own runs (status, dlq, --wait exit 1 with the reason); a good run beside them completes."""
    unwritable = write_config(tmp_path / "unwritable.json", name="unwritable", words=WORDS[:2], max_tokens=24, n_threads=1)
    waiting = subprocess.Popen([sys.executable, "-m", "producer.cli", "enqueue", str(unwritable), "--out",
                                "/proc/convfarm-cannot-create-this", "--wait"], cwd=REPO, env=farm.env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: farm.client.zcard("convfarm:runs") == 1, 60, "the run to be enqueued")
    bad_run = farm.store().list_runs()[0]
    broken = farm.enqueue(WORDS[2:4], name="broken")
    # the stored config no longer validates (an older or newer producer, a hand edit)
    meta = json.loads(farm.client.hget(run_key(broken), "config"))
    farm.client.hset(run_key(broken), "config", json.dumps({**meta, "max_tokens": -1}))
    good = farm.enqueue(WORDS[4:7], name="good")
    farm.start("collector", collector=True)
    farm.start("gen0")

    _, stderr = waiting.communicate(timeout=300)
    assert waiting.returncode == 1
    assert "failed" in stderr and "cannot open the run" in stderr and "Traceback" not in stderr

    farm.wait_complete(good)
    verify(farm, good, WORDS[4:7])
    wait_for(lambda: farm.status(broken) == "failed", 120, "the broken run to fail")
    assert farm.status(bad_run) == "failed"
    status = cli(farm, "status", bad_run, "--json")
    assert json.loads(status.stdout)["error"].startswith("cannot open the run")
    letters = cli(farm, "dlq", bad_run, "--json")
    assert letters.returncode == 0 and "cannot open the run" in letters.stdout
    assert "no longer loads" in farm.store().meta(broken, "error")["error"]


def test_name_too_long_is_refused_at_enqueue(farm: ChaosFarm, tmp_path: Path) -> None:
    config = write_config(tmp_path / "long.json", name="n" * 250, words=["apple"])
    result = cli(farm, "enqueue", str(config))
    assert result.returncode == 2
    assert "name" in result.stderr and "Traceback" not in result.stderr
    assert not farm.client.exists("convfarm:runs")


def test_wait_without_a_collector_exits_1(farm: ChaosFarm, tmp_path: Path) -> None:
    config = write_config(tmp_path / "alone.json", name="alone", words=["apple"], max_tokens=24)
    result = cli(farm, "enqueue", str(config), "--wait", timeout=120, CONVFARM_STALL_SECONDS="4")
    assert result.returncode == 1
    assert "no collector" in result.stderr


def test_lost_message_is_issued_again(farm: ChaosFarm) -> None:
    """A queued task lost by the broker (a Redis without AOF, an acknowledged failure): its
    lease expires with nothing queued and nothing running, and the attempt is issued again.
    The run never stays active with words open and nothing in flight."""
    words = WORDS[:3]
    run = farm.enqueue(words)
    queue = farm.store().get(run).queue
    assert farm.client.llen(queue) == 3
    farm.client.delete(queue)  # the messages are gone; the run state still says 3 in flight
    assert len(farm.store().leases.of_run(run)) == 3
    collector = farm.start("collector", collector=True)
    farm.start("gen0")
    farm.wait_complete(run)
    verify(farm, run, words)
    assert collector.text().count("issued again") >= 3
