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

import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from convfarm.commit import Batch, Checkpoints, Item, LocalLedger, commit_stages, run_stages
from convfarm.config import RunConfig
from convfarm.judging import rules_stamp
from convfarm.messages import ConversationRecord
from convfarm.rundir.layout import MANIFEST, SHARD
from convfarm.rundir.manifest import manifest, write_manifest
from convfarm.rundir.reader import read_manifest, read_run
from convfarm.rundir.shards import LocalShardRegistry, ShardCorrupt, ShardSet
from convfarm.runstate import RunInfo

WORD_NOT_IN_CONFIG = "word_not_in_config"
# in every directory producer filter writes: what --force may replace (nothing else)
MARKER = ".convfarm-filter"
BATCH = 1000  # records per append (each is fsync'd, as the collector's)


class FilterError(ValueError):
    """Bad input to ``producer filter`` (one line, for the CLI)."""


@dataclass
class FilterResult:
    out_dir: Path
    kept: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    shards: list[dict[str, Any]] = field(default_factory=list)


def refilter(config: RunConfig, run_dir: Path, out_dir: Path, *, words: list[str] | None = None,
             force: bool = False, records: Iterable[dict[str, Any]] | None = None) -> FilterResult:
    """The collector's commit stages (convfarm.commit), with the books kept in memory and the
    shards numbered locally: one format and one verdict order for every run directory.

    ``records``: what to filter in place of ``run_dir``'s conversations (``producer judge``'s re-scored ones)."""
    _clear_output(run_dir, out_dir, force)
    allowed = {w.casefold() for w in (words or config.words)}
    detail = f"producer filter with config {config.name} ({config.config_hash()[:8]})"
    registry, ledger = LocalShardRegistry(), LocalLedger()
    writer = ShardSet(registry, out_dir.name, out_dir, "filter", shard_size=config.shard_size,
                      compression=config.compression)
    info = RunInfo(run=out_dir.name, config=config, out_dir="", queue="", status="complete", created_at=0.0,
                   total_words=len(allowed))
    stages = commit_stages(ledger, Checkpoints(), recheck_detail=detail)
    stamp = rules_stamp(config)
    records = _records(run_dir) if records is None else _validated(records, run_dir)
    while True:
        # never more than fits in the open shards: every shard holds exactly shard_size records
        room = min(config.shard_size - shard.records for shard in writer.open.values())
        items = [_item(record, allowed, detail) for record in islice(records, max(1, min(room, BATCH)))]
        if not items:
            break
        run_stages(stages, Batch(info, stamp, writer, items))
    writer.seal_all()
    counts = ledger.run_counts()
    result = FilterResult(out_dir, kept=counts.accepted, by_reason=Counter(counts.by_reason),
                          shards=list(registry.shards(out_dir.name).values()))
    source = read_manifest(run_dir)
    write_manifest(out_dir, manifest(
        run=out_dir.name, config=config, status="complete", model=source.get("model", {"name": config.model}),
        counts=counts, words_total=len(allowed), words_done=ledger.words_done(out_dir.name),
        short=sorted(w for w in allowed if w not in {k.casefold() for k in ledger.kept_words}),
        per_word=config.per_word, shards=result.shards,
        filtered_from={"path": str(run_dir.resolve()), "run": source.get("run"), "config_hash": source.get("config_hash")},
    ))
    return result


def _validated(records: Iterable[dict[str, Any]], run_dir: Path) -> Iterator[ConversationRecord]:
    """Each record checked as the stages read it: a hand-edited shard is one line that names the record, not a traceback."""
    for number, record in enumerate(records, 1):
        try:
            yield ConversationRecord.model_validate(record)
        except ValidationError as exc:
            where = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "record"
            word = record.get("word") if isinstance(record, dict) else None
            named = f" (word {str(word)[:60]!r})" if isinstance(word, str) else ""
            raise FilterError(f"{run_dir}: conversation record {number}{named} is not a record: field '{where}': "
                              f"{exc.errors()[0]['msg']}") from None


def _item(record: ConversationRecord, allowed: set[str], detail: str) -> Item:
    """A source record on its way through the stages; one whose word the config no longer has is rejected first."""
    if record.word.casefold() not in allowed:
        why = f"rule {WORD_NOT_IN_CONFIG}: {record.word!r} is not among the config's words; {detail}"
        record = record.model_copy(update={"status": "rejected", "reason": WORD_NOT_IN_CONFIG, "detail": why})
    return Item.arrived(record)


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


def _records(run_dir: Path) -> Iterator[ConversationRecord]:
    try:
        yield from _validated(read_run(run_dir), run_dir)
    except ShardCorrupt as exc:  # a line inside a shard that is not a record: the user's one line, no traceback
        raise FilterError(str(exc)) from None
