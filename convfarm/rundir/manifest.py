"""``manifest.json``: what a run directory holds (docs/design.md, "Run directory"), rewritten atomically.

:func:`manifest` is the one place its keys are spelled: a collector's run (:func:`build_manifest`,
from the run's state in Redis) and a ``producer filter`` output (from its local counts) have the
same keys.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from convfarm.config import RunConfig
from convfarm.depth import depth_and_cost
from convfarm.judge.distribution import run_scores
from convfarm.rundir.files import atomic_write
from convfarm.rundir.layout import MANIFEST, SHARD
from convfarm.runstate import RunCounts, RunInfo, RunStore


def manifest(*, run: str, config: RunConfig, status: str, model: dict[str, Any], counts: RunCounts,
             words_total: int, words_done: int, short: list[str], per_word: int, forever: bool = False,
             round_: int = 1, dead_letters: int = 0, shards: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "run": run,
        "name": config.name,
        "status": status,
        "config_hash": config.config_hash(),
        "config": config.model_dump(mode="json"),
        "model": model,
        "words": {"total": words_total, "done": words_done, "short": short},
        "per_word": per_word,  # the quota now: grows each round in forever mode
        "forever": {"enabled": forever, "round": round_},
        "counts": {
            "accepted": counts.accepted,
            "rejected": counts.rejected,
            "by_reason": counts.by_reason,
            "dropped": counts.dropped,  # never ran: the run was cancelled or the word covered
        },
        "depth_and_cost": depth_and_cost(counts),  # mean turns; tokens and seconds per accepted conversation
        "relevance": run_scores(counts, config),  # the judge's score histogram and the on-topic yield
        "dead_letters": dead_letters,
        "shards": shards,
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }


def build_manifest(store: RunStore, info: RunInfo) -> dict[str, Any]:
    """A collector's run, from its state in Redis."""
    meta = store.meta(info.run, "status", "target", "forever", "round")
    return manifest(
        run=info.run, config=info.config, status=meta["status"] or info.status,
        model=store.model_identity(info.run) or {"name": info.config.model}, counts=store.counts(info.run),
        words_total=info.total_words, words_done=store.words_done(info.run), short=store.short_words(info.run),
        per_word=int(meta["target"] or info.config.per_word), forever=meta["forever"] == "1",
        round_=int(meta["round"] or 1), dead_letters=store.dead_letters.count(info.run),
        incarnation=info.incarnation,  # whose directory this is (claim_directory)
        shards=list(store.shard_index.shards(info.run).values()),
    )


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
    if directory.is_dir() and any(SHARD.match(p.name) for p in directory.iterdir()) and not store.shard_index.shards(info.run):
        raise ForeignOutput(f"{directory} holds shards that run {info.run} never wrote (no manifest); {advice}")


def write_manifest(directory: Path, document: dict[str, Any]) -> Path:
    return atomic_write(directory / MANIFEST, json.dumps(document, indent=2, sort_keys=True) + "\n")
