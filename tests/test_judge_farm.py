"""The relevance judge in a real farm: a worker scores what it accepts, ``min_relevance`` rejects.

Real processes: a batched generation worker and a collector (the ``farm`` fixture), the bundled
model, small ``max_tokens``. The generating worker scores each conversation it accepts on the
model it holds (docs/design.md "Relevance judge"); the scores land in the records, the
manifest and ``producer status``; under ``judge.min_relevance`` a conversation is rejected as
``off_topic`` with its score kept, and the attempt is retried like any other rejection.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import redis

from convfarm.runstate import run_key
from tests.conftest import producer, wait_for, write_config
from tests.runfiles import records

FARM_ENV = {"CONVFARM_BATCH_SIZE": "4"}
TOPIC = "everyday life"


def run_to_completion(farm: dict, rclient: redis.Redis, config: Path) -> tuple[str, Path]:
    result = producer("enqueue", str(config), env=farm["env"])
    assert result.returncode == 0, result.stderr
    run = re.search(r"run (\S+): sent", result.stdout).group(1)
    wait_for(lambda: rclient.hget(run_key(run), "status") == b"complete", 900, f"run {run} to complete")
    run_dir = farm["out"] / run
    wait_for(lambda: (run_dir / "manifest.json").exists(), 60, "the manifest")
    return run, run_dir


def status_json(farm: dict, run: str) -> dict:
    result = producer("status", run, "--json", env=farm["env"])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_accepted_records_carry_their_relevance_and_the_judge(farm: dict, rclient: redis.Redis, tmp_path: Path) -> None:
    words = ["bridge", "leaf", "camera", "garden"]
    config = write_config(tmp_path / "scored.json", name="judgescored", max_tokens=32, max_attempts=1, words=words,
                          topic=TOPIC, judge={})  # the judge runs when the config asks for it
    run, run_dir = run_to_completion(farm, rclient, config)
    accepted, rejected = records(run_dir, "conversations"), records(run_dir, "rejected")
    assert accepted, [r["reason"] for r in rejected]
    for record in accepted:
        assert 0.0 <= record["scores"]["relevance"] <= 1.0
        assert record["judge"]["model"]["file"] == record["model"]["file"]  # the model that wrote it
        assert record["judge"]["method"] and record["judge"]["version"] >= 1
    assert all(r["scores"] == {} and r["judge"] is None for r in rejected)  # a rule's rejection is not scored
    manifest = json.loads((run_dir / "manifest.json").read_text())
    relevance = manifest["relevance"]
    assert relevance["scored"] == len(accepted) and sum(relevance["histogram"]) == len(accepted)
    assert relevance["attempts"] == len(words)
    on_topic = sum(r["scores"]["relevance"] >= relevance["on_topic_bar"] for r in accepted)
    assert relevance["on_topic"] == on_topic and relevance["on_topic_yield"] == round(on_topic / len(words), 3)
    assert status_json(farm, run)["relevance"] == relevance
    # producer judge re-scores the run directory with the config's judge: the same records, near the same scores
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.iterdir())
    scored = producer("judge", str(config), str(run_dir), "--json", env=farm["env"])
    assert scored.returncode == 0, scored.stderr
    lines = [json.loads(line) for line in scored.stdout.splitlines()]
    stored = {r["id"]: r["scores"]["relevance"] for r in accepted}
    assert {line["id"] for line in lines} == set(stored)
    # the same records and method; the scores move a little with what shared the engine's batch (the unified
    # cache: docs/judge.md), so near, not equal (the default few-shot question; the blend moves more: docs/judge.md)
    assert all(abs(line["relevance"] - stored[line["id"]]) < 0.15 for line in lines), (lines, stored)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.iterdir()) == before  # the run is not touched
    # --out: a re-scored copy through producer filter's steps; a bar nothing clears drops every one as off_topic
    strict = write_config(tmp_path / "strict.json", name="judgescored", max_tokens=32, words=words, topic=TOPIC,
                          judge={"min_relevance": 0.999})
    out = tmp_path / "rescored"
    copied = producer("judge", str(strict), str(run_dir), "--out", str(out), env=farm["env"])
    assert copied.returncode == 0, copied.stderr
    assert f"kept 0, dropped {len(accepted)} (off_topic {len(accepted)})" in copied.stdout
    assert {r["id"] for r in records(out, "rejected")} == set(stored)
    assert all(r["reason"] == "off_topic" and r["scores"]["relevance"] < 0.999 for r in records(out, "rejected"))


def test_min_relevance_rejects_off_topic_keeps_the_score_and_retries(farm: dict, rclient: redis.Redis,
                                                                     tmp_path: Path) -> None:
    """A bar no conversation of this tiny model clears: every conversation the rules accept is
    rejected as off_topic, its score kept; each such attempt is retried up to max_attempts."""
    words = ["bridge", "leaf", "pocket"]
    config = write_config(tmp_path / "strict.json", name="judgestrict", max_tokens=32, max_attempts=2, words=words,
                          topic=TOPIC, judge={"min_relevance": 0.999})
    run, run_dir = run_to_completion(farm, rclient, config)
    assert records(run_dir, "conversations") == []
    rejected = records(run_dir, "rejected")
    off_topic = [r for r in rejected if r["reason"] == "off_topic"]
    assert off_topic, [r["reason"] for r in rejected]
    for record in off_topic:
        assert 0.0 <= record["scores"]["relevance"] < 0.999 and record["judge"]["method"]
        assert record["detail"].startswith("relevance ") and "min_relevance 0.999" in record["detail"]
    # retried like any other rejection: every word had its max_attempts
    assert sorted((r["word"], r["attempt"]) for r in rejected) == sorted((w, a) for w in words for a in range(2))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["counts"]["by_reason"]["off_topic"] == len(off_topic)
    assert manifest["relevance"]["scored"] == len(off_topic)
    assert manifest["relevance"]["on_topic"] == 0 and manifest["relevance"]["on_topic_yield"] == 0.0
    assert status_json(farm, run)["conversations"]["by_reason"]["off_topic"] == len(off_topic)
    shown = producer("status", run, env=farm["env"])
    assert "rejected: off_topic" in shown.stdout and f"{len(off_topic)} scored" in shown.stdout
