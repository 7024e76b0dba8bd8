"""``manifest.json``: what a run directory holds (SPEC §4), rewritten atomically."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from convfarm.depth import depth_and_cost
from producer.runstate import RunInfo, RunStore, run_key
from workers.shards import fsync_dir

MANIFEST = "manifest.json"


def build_manifest(store: RunStore, info: RunInfo) -> dict[str, Any]:
    counts = store.counts(info.run)
    model = store.redis.hget(run_key(info.run), "model_identity")
    status, target, forever, round_ = store.redis.hmget(run_key(info.run), ["status", "target", "forever", "round"])
    return {
        "run": info.run,
        "name": info.config.name,
        "status": status.decode() if status else info.status,
        "config_hash": info.config.config_hash(),
        "config": info.config.model_dump(mode="json"),
        "model": json.loads(model) if model else {"name": info.config.model},
        "words": {
            "total": info.total_words,
            "done": store.words_done(info.run),
            "short": store.short_words(info.run),
        },
        "per_word": int(target) if target else info.config.per_word,  # the quota now: grows each round in forever mode
        "forever": {"enabled": forever == b"1", "round": int(round_ or 1)},
        "counts": {
            "accepted": counts.get("accepted", 0),
            "rejected": counts.get("rejected", 0),
            "by_reason": {k.removeprefix("reason:"): v for k, v in sorted(counts.items()) if k.startswith("reason:")},
            "dropped": counts.get("dropped", 0),  # never ran: the run was cancelled or the word covered
        },
        "depth_and_cost": depth_and_cost(counts),  # issue 12: mean turns; tokens and seconds per accepted conversation
        "dead_letters": int(store.redis.llen(run_key(info.run, "dlq"))),
        "shards": list(store.shards(info.run).values()),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    target = directory / MANIFEST
    tmp = directory / f".{MANIFEST}.{os.getpid()}.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    fsync_dir(directory)
    return target
