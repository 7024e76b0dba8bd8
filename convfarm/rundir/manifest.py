"""``manifest.json``: what a run directory holds (docs/design.md, "Run directory"), rewritten atomically."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from convfarm.depth import depth_and_cost
from convfarm.rundir.files import atomic_write
from convfarm.rundir.layout import MANIFEST, SHARD
from convfarm.runstate import RunInfo, RunStore


def build_manifest(store: RunStore, info: RunInfo) -> dict[str, Any]:
    counts = store.counts(info.run)
    meta = store.meta(info.run, "status", "target", "forever", "round")
    return {
        "run": info.run,
        "incarnation": info.incarnation,  # whose directory this is (claim_directory)
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
        "dead_letters": store.dead_letter_count(info.run),
        "shards": list(store.shards(info.run).values()),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class ForeignOutput(RuntimeError):
    """The run directory holds the output of another incarnation of the run (purged since)."""


def claim_directory(store: RunStore, info: RunInfo, directory: Path) -> None:
    """Check that ``directory`` may take this incarnation's records, or raise
    :class:`ForeignOutput`: its manifest names another incarnation (the run was purged and
    enqueued again), or it holds sealed shards this run never recorded (docs/design.md, "Run
    directory"). Every manifest the collector writes names the incarnation."""
    path = directory / MANIFEST
    advice = ("move it away (or export it) first: appending would mix two runs' records under one "
              "manifest; then `producer enqueue CONFIG` again")
    if path.is_file():
        try:
            theirs = json.loads(path.read_text(encoding="utf-8")).get("incarnation", "")
        except (OSError, ValueError, AttributeError):
            theirs = None
        if theirs != info.incarnation:
            raise ForeignOutput(f"{directory} holds the output of an earlier incarnation of run {info.run} "
                                f"(manifest incarnation {theirs or 'unnamed'}, this one {info.incarnation or 'unnamed'}); "
                                f"{advice}")
        return
    if directory.is_dir() and any(SHARD.match(p.name) for p in directory.iterdir()) and not store.shards(info.run):
        raise ForeignOutput(f"{directory} holds shards that run {info.run} never wrote (no manifest); {advice}")


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    return atomic_write(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
