"""``producer filter``: re-apply a config's rules to a finished run (the seed's filter script).

Useful after tightening ``exclude`` or the turn limits: the run's accepted conversations are
judged again with the *current* config and written as a new run directory (shards +
manifest) that ``producer export`` reads like any other. The source run is not touched.

Like the seed's ``filter-conversations.py``, a conversation whose word is no longer in the
config's words (or in ``--words FILE``) is dropped (``word_not_in_config``); then every rule
of :func:`workers.rules.evaluate` runs on its turns. The dropped conversations go to the new
directory's ``rejected-*`` shards with their reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from producer.config import RunConfig
from producer.messages import Turn
from producer.rundir import read_manifest, read_run
from workers.generation import rule_context
from workers.rules import evaluate

WORD_NOT_IN_CONFIG = "word_not_in_config"


class FilterError(ValueError):
    """Bad input to ``producer filter`` (one line, for the CLI)."""


@dataclass
class FilterResult:
    out_dir: Path
    kept: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    shards: list[dict[str, Any]] = field(default_factory=list)


def refilter(config: RunConfig, run_dir: Path, out_dir: Path, *, words: list[str] | None = None,
             force: bool = False) -> FilterResult:
    if out_dir.resolve() == run_dir.resolve():
        raise FilterError(f"{out_dir}: the output must not be the run itself")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise FilterError(f"{out_dir}: exists and is not empty (use --force to replace it)")
        shutil.rmtree(out_dir)
    allowed = {w.casefold() for w in (words or config.words)}
    result = FilterResult(out_dir)
    writer = _ShardWriter(out_dir, config.shard_size, config.compression)
    for record in read_run(run_dir):
        reason = WORD_NOT_IN_CONFIG if record["word"].casefold() not in allowed else None
        if reason is None:
            reason = evaluate(rule_context(config, record["word"]), [Turn(**t) for t in record.get("turns", [])])
        if reason is None:
            result.kept += 1
            writer.add("conversations", record)
        else:
            result.by_reason[reason] += 1
            writer.add("rejected", {**record, "status": "rejected", "reason": reason,
                                    "detail": f"producer filter with config {config.name} ({config.config_hash()[:8]})"})
    result.shards = writer.close()
    source = read_manifest(run_dir)
    manifest = {
        "run": out_dir.name,
        "filtered_from": {"path": str(run_dir.resolve()), "run": source.get("run"), "config_hash": source.get("config_hash")},
        "name": config.name,
        "status": "complete",
        "config_hash": config.config_hash(),
        "config": config.model_dump(mode="json"),
        "model": source.get("model", {"name": config.model}),
        "counts": {"accepted": result.kept, "rejected": sum(result.by_reason.values()),
                   "by_reason": dict(sorted(result.by_reason.items()))},
        "shards": result.shards,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return result


class _ShardWriter:
    """Shards of ``shard_size`` records, each written to a temporary name and renamed when complete."""

    def __init__(self, directory: Path, shard_size: int, compression: str) -> None:
        self.directory = directory
        self.shard_size = shard_size
        self.compression = compression
        self.pending: dict[str, list[str]] = {"conversations": [], "rejected": []}
        self.numbers: Counter[str] = Counter()
        self.shards: list[dict[str, Any]] = []
        directory.mkdir(parents=True, exist_ok=True)

    def add(self, kind: str, record: dict[str, Any]) -> None:
        self.pending[kind].append(json.dumps(record, ensure_ascii=False))
        if len(self.pending[kind]) >= self.shard_size:
            self._flush(kind)

    def close(self) -> list[dict[str, Any]]:
        for kind in self.pending:
            self._flush(kind)
        return self.shards

    def _flush(self, kind: str) -> None:
        lines = self.pending[kind]
        if not lines:
            return
        self.pending[kind] = []
        data = "".join(line + "\n" for line in lines).encode()
        name = f"{kind}-{self.numbers[kind]:05d}.jsonl"
        self.numbers[kind] += 1
        if self.compression == "zstd":
            name += ".zst"
            data = zstandard.ZstdCompressor(level=10).compress(data)
        tmp = self.directory / f".tmp-{name}"
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / name)
        self.shards.append({"file": name, "kind": kind, "records": len(lines), "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()})
