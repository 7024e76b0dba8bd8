"""``manifest.json``: what a run directory holds (docs/design.md, "Run directory"), rewritten atomically."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from convfarm.depth import depth_and_cost
from convfarm.judge.distribution import run_scores
from convfarm.rundir.files import atomic_write
from convfarm.rundir.layout import MANIFEST
from convfarm.runstate import RunInfo, RunStore


def build_manifest(store: RunStore, info: RunInfo) -> dict[str, Any]:
    counts = store.counts(info.run)
    meta = store.meta(info.run, "status", "target", "forever", "round")
    return {
        "run": info.run,
        "name": info.config.name,
        "status": meta["status"] or info.status,
        "config_hash": info.config.config_hash(),
        "config": info.config.model_dump(mode="json"),
        "model": store.model_identity(info.run) or {"name": info.config.model},
        "words": {
            "total": info.total_words,
            "done": store.words_done(info.run),
            "short": store.short_words(info.run),
        },
        "per_word": int(meta["target"] or info.config.per_word),  # the quota now: grows each round in forever mode
        "forever": {"enabled": meta["forever"] == "1", "round": int(meta["round"] or 1)},
        "counts": {
            "accepted": counts.accepted,
            "rejected": counts.rejected,
            "by_reason": counts.by_reason,
            "dropped": counts.dropped,  # never ran: the run was cancelled or the word covered
        },
        "depth_and_cost": depth_and_cost(counts),  # mean turns; tokens and seconds per accepted conversation
        "relevance": run_scores(counts, info.config),  # the judge's score histogram and the on-topic yield
        "dead_letters": store.dead_letter_count(info.run),
        "shards": list(store.shards(info.run).values()),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    return atomic_write(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
