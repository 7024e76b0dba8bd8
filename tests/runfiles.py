"""Helpers for the run lifecycle tests: read a run's output and state as a user would see it."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import redis

from convfarm.config import load_config
from convfarm.runstate import run_id_for, run_key


def records(run_dir: Path, kind: str) -> list[dict]:
    found: list[dict] = []
    for shard in sorted(run_dir.glob(f"{kind}-*.jsonl")):
        # "\n" only ends a record: JSON keeps U+2028 and friends raw inside strings
        found.extend(json.loads(line) for line in shard.read_text(encoding="utf-8").split("\n") if line)
    return found


def accepted_per_word(run_dir: Path) -> Counter:
    return Counter(r["word"] for r in records(run_dir, "conversations"))


def run_of(config: Path) -> str:
    return run_id_for(load_config(config)[0])


def sent(stdout: str) -> int:
    match = re.search(r": sent (\d+) task", stdout)
    assert match, stdout
    return int(match.group(1))


def in_flight(client: redis.Redis, run: str) -> int:
    issued = {k: int(v) for k, v in client.hgetall(run_key(run, "issued")).items()}
    reported = {k: int(v) for k, v in client.hgetall(run_key(run, "reported")).items()}
    return sum(n - reported.get(word, 0) for word, n in issued.items())


def status_of(client: redis.Redis, run: str) -> str:
    value = client.hget(run_key(run), "status")
    return value.decode() if value else ""


def leftovers(run_dir: Path) -> list[str]:
    """Files no reader should ever see once a run is over: open or half-sealed shards."""
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith((".open-", ".sealing-", ".tmp-")))
