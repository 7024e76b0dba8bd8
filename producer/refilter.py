"""``producer filter``: re-apply a config's rules to a finished run (the seed's filter script).

Useful after tightening ``exclude`` or the turn limits: the run's accepted conversations are
judged again with the *current* config and written as a new run directory (shards +
manifest) that ``producer export`` reads like any other. The source run is not touched.

Like the seed's ``filter-conversations.py``, a conversation whose word is no longer in the
config's words (or in ``--words FILE``) is dropped (``word_not_in_config``); then every rule
of :func:`convfarm.rules.evaluate` runs on its turns. The dropped conversations go to the new
directory's ``rejected-*`` shards with their reason.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import regex

from convfarm.config import RunConfig
from convfarm.judging import rule_context
from convfarm.messages import Turn
from convfarm.rules import EXCLUDED, REASONS, evaluate, rule_verdicts
from convfarm.rundir.layout import MANIFEST, SHARD
from convfarm.rundir.manifest import write_manifest
from convfarm.rundir.reader import read_manifest, read_run
from convfarm.rundir.shards import LocalShardRegistry, ShardCorrupt, ShardSet

WORD_NOT_IN_CONFIG = "word_not_in_config"
# in every directory producer filter writes: what --force may replace (nothing else)
MARKER = ".convfarm-filter"


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
    _clear_output(run_dir, out_dir, force)
    allowed = {w.casefold() for w in (words or config.words)}
    result = FilterResult(out_dir)
    # the collector's own shard writer, numbering shards locally: one format for every run directory
    registry = LocalShardRegistry()
    writer = ShardSet(registry, out_dir.name, out_dir, "filter", shard_size=config.shard_size,
                      compression=config.compression)
    pending: dict[str, list[str]] = {"conversations": [], "rejected": []}

    def flush() -> None:  # appends are fsync'd: batch them, as the collector does
        for kind, lines in pending.items():
            writer.append(kind, lines)
            lines.clear()
        writer.seal_full()

    for record in _records(run_dir):
        reason = WORD_NOT_IN_CONFIG if record["word"].casefold() not in allowed else None
        turns = [Turn(**t) for t in record.get("turns", [])]
        if reason is None:
            reason = evaluate(rule_context(config, record["word"]), turns)
        if reason is None:
            result.kept += 1
            pending["conversations"].append(json.dumps(record, ensure_ascii=False))
        else:
            result.by_reason[reason] += 1
            detail = (f"{explain(config, record['word'], turns, reason)}; producer filter with config "
                      f"{config.name} ({config.config_hash()[:8]})")
            pending["rejected"].append(json.dumps({**record, "status": "rejected", "reason": reason, "detail": detail},
                                                  ensure_ascii=False))
        if any(len(lines) >= min(config.shard_size - writer.open[kind].records, 1000) for kind, lines in pending.items()):
            flush()  # exactly shard_size records per shard, as the collector writes them
    flush()
    writer.seal_all()
    result.shards = list(registry.shards(out_dir.name).values())
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
    write_manifest(out_dir, manifest)
    return result


def explain(config: RunConfig, word: str, turns: list[Turn], reason: str) -> str:
    """Which rule dropped a conversation, where, and for ``excluded`` which pattern matched what
    (docs/rules-and-modes.md, "producer filter")."""
    if reason == WORD_NOT_IN_CONFIG:
        return f"rule {reason}: {word!r} is not among the config's {len(config.words)} words"
    failed = next((v for v in rule_verdicts(rule_context(config, word), turns) if v.reason == reason), None)
    where = f" in turn {failed.turn + 1}" if failed is not None and failed.turn is not None else ""
    if reason == EXCLUDED and failed is not None and failed.turn is not None:
        line = turns[failed.turn]
        for pattern in config.exclude:  # each pattern alone: the joined one cannot say which matched
            compiled = regex.compile(pattern, regex.IGNORECASE | regex.VERSION0)
            try:
                match = compiled.search(line.text, timeout=0.25) or compiled.search(line.speaker, timeout=0.25)
            except TimeoutError:
                return f"rule {reason}{where}: pattern {pattern!r} took too long on the line"
            if match:
                return f"rule {reason}{where}: pattern {pattern!r} matches {match.group(0)!r}"
    return f"rule {reason}{where}: {REASONS.get(reason, reason)}"


def check_same_run(config: RunConfig, run_dir: Path, words: list[str] | None) -> str | None:
    """Why ``config`` is plainly not this run's (no word in common: every conversation would be
    dropped as ``word_not_in_config``), or None. Read from the manifest's config."""
    source_words = (read_manifest(run_dir).get("config") or {}).get("words")
    if not source_words:
        return None
    wanted = {w.casefold() for w in (words or config.words)}
    if wanted & {str(w).casefold() for w in source_words}:
        return None
    name = (read_manifest(run_dir).get("config") or {}).get("name", "?")
    return (f"{run_dir} was made with config {name!r}, which shares no word with {config.name!r}: every "
            f"conversation would be dropped as {WORD_NOT_IN_CONFIG}")


def _clear_output(run_dir: Path, out_dir: Path, force: bool) -> None:
    """Make ``out_dir`` ready for a new filtered run; ``--force`` replaces only a directory that
    ``producer filter`` wrote (its marker file) and that holds nothing but what it writes."""
    source, target = run_dir.resolve(), out_dir.resolve()
    if target == source or target in source.parents:
        raise FilterError(f"{out_dir}: the output must not be the run itself or a directory that holds it")
    if out_dir.exists() and not out_dir.is_dir():
        raise FilterError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise FilterError(f"{out_dir}: exists and is not empty (use --force to replace it)")
        if not (out_dir / MARKER).is_file():
            raise FilterError(f"{out_dir}: --force replaces only an output of producer filter, and this "
                              f"directory has no {MARKER} marker; choose another --out or remove it yourself")
        foreign = sorted(p.name for p in out_dir.iterdir() if not _written_by_filter(p))
        if foreign:
            raise FilterError(f"{out_dir}: holds files producer filter did not write ({', '.join(foreign[:3])}); "
                              "not replacing it")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text("written by producer filter; --force may replace this directory\n")


def _written_by_filter(path: Path) -> bool:
    name = path.name
    return path.is_file() and (name in (MARKER, MANIFEST) or bool(SHARD.match(name))
                               or name.startswith((".open-", ".sealing-")) or name.endswith(".tmp"))


def _records(run_dir: Path) -> Iterator[dict[str, Any]]:
    try:
        yield from read_run(run_dir)
    except ShardCorrupt as exc:  # a line inside a shard that is not a record: the user's one line, no traceback
        raise FilterError(str(exc)) from None
