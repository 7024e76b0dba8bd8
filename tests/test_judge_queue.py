"""A judge model of its own: judge workers on ``convfarm.judge.<model>``, killed mid-task, lose nothing.

Real processes: a collector, a generation worker, and a judge worker serving the judge model's
queue (docs/design.md "Relevance judge"). The config names the bundled model's file as its
judge model (another reference than the generator's, so the generation worker does not score):
accepted conversations go from the generation worker to the judge queue, the judge worker
scores them and publishes them. SIGKILLed while it holds a judge task, its unacknowledged
message comes back to the next judge worker (after the visibility timeout), and the run
completes with every word exactly once, every accepted record scored by the judge model.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import redis

from convfarm.messages import judge_queue_for_model
from convfarm.model_files import resolve_model
from convfarm.runstate import run_key
from tests.conftest import farm_env, producer, start_worker, wait_for, write_config
from tests.runfiles import records


def test_a_judge_worker_killed_mid_task_loses_and_duplicates_nothing(redis_url: str, tmp_path: Path,
                                                                     rclient: redis.Redis) -> None:
    judge_model = str(resolve_model("smollm2-135m"))  # the same weights under another reference: another queue
    judge_queue = judge_queue_for_model(judge_model)
    out = tmp_path / "out"
    env = farm_env(redis_url, out, CONVFARM_BATCH_SIZE="2")
    # the judge workers: a short visibility timeout brings a killed one's message back soon (the
    # threads pool enforces no time limit: they only have to sit under it). They start once the
    # generation is over, so no generation task of this slow machine runs past that timeout.
    judge_env = {**env, "CONVFARM_SOFT_TIME_LIMIT": "20", "CONVFARM_HARD_TIME_LIMIT": "25",
                 "CONVFARM_VISIBILITY_TIMEOUT": "30", "CONVFARM_UNACKED_RESTORE_INTERVAL": "1"}
    logs = tmp_path / "logs"
    collector = start_worker(env, logs, "collector-jq", collector=True)
    generator = start_worker(env, logs, "gen-jq")
    judge = None
    try:
        words = ["bridge", "leaf", "camera"]
        # max_tokens 64: the accepted ones must exist for the judge to have work (at 24 tokens the three
        # conversations may all be cut before an answer and rejected, and the run completes unjudged)
        config = write_config(tmp_path / "judged.json", name="judgequeue", max_tokens=64, max_attempts=1, words=words,
                              topic="everyday life", judge={"model": judge_model})
        result = producer("enqueue", str(config), env=env)
        assert result.returncode == 0, result.stderr
        run = re.search(r"run (\S+): sent", result.stdout).group(1)
        wait_for(lambda: generator.text().count("Task convfarm.generate[") >= 2 * len(words)
                 and generator.text().count("succeeded") >= len(words), 1200, "the generation tasks to end")
        assert rclient.hget(run_key(run), "status") == b"active"  # the accepted ones wait for their judge
        generator.stop()
        judge = start_worker(judge_env, logs, "judge-jq", queue=judge_queue)
        wait_for(lambda: "Task convfarm.judge[" in judge.text(), 300, "a judge task to reach the judge worker")
        judge.kill(signal.SIGKILL)
        assert "succeeded" not in judge.text()  # killed before any judge task ended: one was mid-task
        time.sleep(1)
        judge = start_worker(judge_env, logs, "judge-jq2", queue=judge_queue)
        wait_for(lambda: rclient.hget(run_key(run), "status") == b"complete", 900, "the run to complete")
        accepted, rejected = records(out / run, "conversations"), records(out / run, "rejected")
        every = accepted + rejected
        assert sorted(r["word"] for r in every) == sorted(words)  # nothing lost
        assert len({r["id"] for r in every}) == len(words)  # nothing written twice
        scored = [r for r in every if r["judge"] is not None]
        assert scored and all(r["judge"]["model"]["name"] == judge_model for r in scored)
        assert all(0.0 <= r["scores"]["relevance"] <= 1.0 for r in scored)
        assert all(r["status"] == "accepted" for r in scored)  # no bar in this config: scored, kept
        assert {r["id"] for r in accepted} == {r["id"] for r in scored}  # every accepted one went through the judge
        assert "Task convfarm.judge[" in judge.text()  # the second judge worker took the killed one's task
        assert "relevance" not in generator.text()  # the generation worker scored nothing itself
    finally:
        if judge is not None:
            judge.stop()
        generator.stop()
        collector.stop()
