"""What a dataset card reports about a run: the manifest's figures and one pass over its records.

Counts come from ``manifest.json`` (the collector's own bookkeeping, docs/design.md, "Run
directory"); the distributions (turns, tokens, time, scores) and two sample conversations come
from the sealed shards, read with the one shard reader. Only numbers are kept per record, so a
run of millions of conversations is summarised in bounded memory (a few numbers each).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from convfarm.rundir.reader import read_manifest, read_run
from producer.dataset.features import Schema

SAMPLES = 2
DEDUP_REASONS = ("duplicate", "near_duplicate")  # the collector's dedup reason codes (workers/dedup.py)


@dataclass
class RunSummary:
    run_dir: Path
    manifest: dict[str, Any]
    turns: list[int] = field(default_factory=list)  # per accepted conversation
    completion_tokens: dict[str, list[int]] = field(default_factory=lambda: {"accepted": [], "rejected": []})
    accepted_at: dict[str, list[datetime]] = field(default_factory=lambda: defaultdict(list))  # per worker
    relevance: dict[str, list[float]] = field(default_factory=lambda: {"accepted": [], "rejected": []})
    # judges that scored records: (model file, model sha256, method, version) -> records (JudgeIdentity)
    judges: Counter[tuple[str, str, str, int]] = field(default_factory=Counter)
    words_accepted: set[str] = field(default_factory=set)
    samples: list[dict[str, Any]] = field(default_factory=list)
    records: Counter[str] = field(default_factory=Counter)  # records found in the shards, by kind
    schemas: dict[str, Schema] = field(default_factory=lambda: {"conversations": Schema(), "rejected": Schema()})

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config") or {}

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest.get("counts") or {}

    @property
    def accepted(self) -> int:
        return int(self.counts.get("accepted", self.records["conversations"]))

    @property
    def rejected(self) -> int:
        return int(self.counts.get("rejected", self.records["rejected"]))

    @property
    def has_scores(self) -> bool:
        return bool(self.relevance["accepted"] or self.relevance["rejected"])

    @property
    def min_relevance(self) -> float | None:
        judge = self.config.get("judge") or {}
        return judge.get("min_relevance")


def _timestamp(text: Any) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)  # comparable with the others


def summarise(run_dir: Path) -> RunSummary:
    """The manifest and the shards of ``run_dir`` reduced to what the card shows."""
    summary = RunSummary(run_dir, read_manifest(run_dir))
    for kind, outcome in (("conversations", "accepted"), ("rejected", "rejected")):
        for record in read_run(run_dir, kind):
            summary.records[kind] += 1
            summary.schemas[kind].add(record)
            tokens = (record.get("tokens") or {}).get("completion")
            if isinstance(tokens, int):
                summary.completion_tokens[outcome].append(tokens)
            scores = record.get("scores") or {}
            if isinstance(scores.get("relevance"), int | float):
                summary.relevance[outcome].append(float(scores["relevance"]))
            if judge := record.get("judge"):
                model = judge.get("model") or {}
                summary.judges[(str(model.get("file", "")), str(model.get("sha256", "")), str(judge.get("method", "")),
                                int(judge.get("version", 0)))] += 1
            if outcome != "accepted":
                continue
            summary.turns.append(len(record.get("turns") or []))
            summary.words_accepted.add(str(record.get("word", "")))
            if (when := _timestamp(record.get("created_at"))) is not None:
                summary.accepted_at[str(record.get("worker", "?"))].append(when)
            if len(summary.samples) < SAMPLES:
                summary.samples.append(record)
    return summary
