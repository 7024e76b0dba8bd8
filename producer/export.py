"""``producer export``: a run's accepted conversations in the formats people train with.

* ``seed-text``  the seed's file: ``SPEAKER: text`` lines, ``TERM: word`` after the first
  line, a blank line after each conversation;
* ``symbols``    the seed's training format (its ``format.py``): the two speakers' lines and
  the TERM line only, a trailing line of the opening speaker (a question nobody answers)
  dropped, ``STUDENT:``/``TEACHER:``/``TERM:`` replaced by ``=``/``#``/``~`` (configurable);
* ``openai``     JSONL ``{"id", "word", "messages": [{"role", "content"}, ...]}``;
* ``sharegpt``   JSONL ``{"id", "word", "conversations": [{"from": "human"|"gpt", "value"}, ...]}``;
* ``parquet``    one row per conversation, every field of the record (``params`` as JSON,
  ``created_at`` a timestamp), named after the run by default.

Speaker -> role: the speaker who opens is ``user``, the other ``assistant``, unless a mapping
says otherwise. One rule for every format (docs/design.md, "Messages and the record"):
messages end on an assistant turn (a trailing question nobody answers is dropped, as the
seed's ``format.py`` did); ``turns`` (seed-text, parquet's ``turns``) keep every line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from convfarm.messages import Turn
from convfarm.rules import training_messages
from convfarm.rundir.files import atomic_path, atomic_write
from convfarm.rundir.layout import shard_files
from convfarm.rundir.shards import ShardCorrupt, read_records
from producer.terminal import visible

FORMATS: dict[str, str] = {"seed-text": "txt", "symbols": "txt", "openai": "jsonl", "sharegpt": "jsonl", "parquet": "parquet"}
SHAREGPT_FROM = {"user": "human", "assistant": "gpt", "system": "system"}


class ExportError(ValueError):
    """Bad export options (one line, for the CLI)."""


@dataclass(frozen=True)
class ExportOptions:
    roles: dict[str, str] | None = None  # speaker -> role; default: opener user, other assistant
    symbols: tuple[str, str, str] = ("=", "#", "~")  # user, assistant, TERM


def parse_roles(text: str | None) -> dict[str, str] | None:
    """``"STUDENT=user,TEACHER=assistant"`` -> mapping."""
    if not text:
        return None
    mapping: dict[str, str] = {}
    for item in text.split(","):
        speaker, sep, role = item.partition("=")
        if not sep or not speaker.strip() or not role.strip():
            raise ExportError(f"--roles: {item!r} is not SPEAKER=ROLE (e.g. STUDENT=user,TEACHER=assistant)")
        mapping[speaker.strip()] = role.strip()
    return mapping


def parse_symbols(text: str | None) -> tuple[str, str, str]:
    """``"=,#,~"`` -> the prefixes for the user's lines, the assistant's lines and the TERM line."""
    if not text:
        return ExportOptions.symbols
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(parts):
        raise ExportError(f"--symbols: {text!r} must be three non-empty prefixes USER,ASSISTANT,TERM (default '=,#,~')")
    return parts[0], parts[1], parts[2]


def _turns(record: dict[str, Any]) -> list[Turn]:
    return [Turn(**t) for t in record.get("turns", [])]


def _training_messages(record: dict[str, Any], options: ExportOptions) -> list[dict[str, str]]:
    return training_messages(_turns(record), options.roles)  # a question nobody answers teaches nothing


def seed_text(records: Iterable[dict[str, Any]], options: ExportOptions) -> Iterator[str]:
    for record in records:
        turns = _turns(record)
        for i, turn in enumerate(turns):
            yield f"{turn.speaker}: {turn.text}\n"
            if i == 0:
                yield f"TERM: {record['word']}\n"
        yield "\n"


def symbols_text(records: Iterable[dict[str, Any]], options: ExportOptions) -> Iterator[str]:
    user, assistant, term = options.symbols
    prefix = {"user": user, "assistant": assistant}
    for record in records:
        messages = _training_messages(record, options)
        if not messages:
            continue
        for i, message in enumerate(messages):
            if message["role"] in prefix:  # the seed kept only STUDENT, TEACHER and TERM lines
                yield f"{prefix[message['role']]} {message['content']}\n"
            if i == 0:
                yield f"{term} {record['word']}\n"
        yield "\n"


def openai_lines(records: Iterable[dict[str, Any]], options: ExportOptions) -> Iterator[str]:
    for record in records:
        if messages := _training_messages(record, options):
            # id and word: a row can be traced back to its record (and to `producer show`)
            yield json.dumps({"id": record.get("id"), "word": record.get("word"), "messages": messages},
                             ensure_ascii=False) + "\n"


def sharegpt_lines(records: Iterable[dict[str, Any]], options: ExportOptions) -> Iterator[str]:
    for record in records:
        if messages := _training_messages(record, options):
            turns = [{"from": SHAREGPT_FROM.get(m["role"], m["role"]), "value": m["content"]} for m in messages]
            yield json.dumps({"id": record.get("id"), "word": record.get("word"), "conversations": turns},
                             ensure_ascii=False) + "\n"


TEXT_WRITERS = {"seed-text": seed_text, "symbols": symbols_text, "openai": openai_lines, "sharegpt": sharegpt_lines}


PARQUET_BATCH = 2000  # rows per row group: memory stays flat however large the run


def _parquet_schema() -> Any:
    import pyarrow as pa

    turn = pa.struct([("speaker", pa.string()), ("text", pa.string())])
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    model = pa.struct([("name", pa.string()), ("file", pa.string()), ("sha256", pa.string()), ("size", pa.int64())])
    return pa.schema([
        ("id", pa.string()), ("run", pa.string()), ("word", pa.string()), ("attempt", pa.int64()),
        ("turns", pa.list_(turn)), ("messages", pa.list_(message)), ("raw", pa.string()), ("ended_by", pa.string()),
        ("model", model), ("params", pa.string()), ("seed", pa.int64()), ("worker", pa.string()),
        ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("generation_seconds", pa.float64()),
        ("created_at", pa.timestamp("ms", tz="UTC")),
    ])


def _parquet_row(r: dict[str, Any], options: ExportOptions) -> dict[str, Any]:
    return {
        "id": r["id"], "run": r["run"], "word": r["word"], "attempt": r.get("attempt", 0),
        "turns": r.get("turns", []), "messages": training_messages(_turns(r), options.roles), "raw": r.get("raw", ""),
        "ended_by": r.get("ended_by", ""), "model": r.get("model"), "params": json.dumps(r.get("params", {})),
        "seed": r.get("seed"), "worker": r.get("worker"), "prompt_tokens": r.get("tokens", {}).get("prompt"),
        "completion_tokens": r.get("tokens", {}).get("completion"),
        "generation_seconds": r.get("generation_seconds"), "created_at": _timestamp(r.get("created_at")),
    }


def _timestamp(text: str | None) -> datetime | None:
    """The record's ISO 8601 ``created_at`` as a datetime (a Parquet timestamp, not a string)."""
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def default_name(run_dir: Path, fmt: str) -> str:
    """The export's file name under RUN_DIR/exports/: Parquet is named after the run (a file that
    travels alone says what it holds); the text formats after their format."""
    return f"{run_dir.name}.parquet" if fmt == "parquet" else f"{fmt}.{FORMATS[fmt]}"


def _write_parquet(records: Iterable[dict[str, Any]], options: ExportOptions, path: Path) -> int:
    """Row groups of PARQUET_BATCH records: never the whole run in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema, rows, written = _parquet_schema(), [], 0
    with pq.ParquetWriter(path, schema) as writer:
        for record in records:
            rows.append(_parquet_row(record, options))
            if len(rows) >= PARQUET_BATCH:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                written, rows = written + len(rows), []
        writer.write_table(pa.Table.from_pylist(rows, schema=schema))  # an empty run still gets its schema
    return written + len(rows)


def checked_records(run_dir: Path) -> Iterator[dict[str, Any]]:
    """The run's records one at a time; a line that is not a conversation object is an ExportError
    naming its shard and line (a hand-edited or foreign file), never a traceback."""
    for shard in shard_files(run_dir):
        try:
            for number, record in enumerate(read_records(shard), start=1):
                if not isinstance(record.get("turns", []), list) or "word" not in record:
                    raise ExportError(f"{shard}: line {number} is not a conversation record (a JSON object with "
                                      "'word' and 'turns')")
                yield record
        except ShardCorrupt as exc:  # a line that is not even a JSON object
            raise ExportError(f"{exc} (a JSON object with 'word' and 'turns')") from None


def export_run(run_dir: Path, fmt: str, out: Path | None, options: ExportOptions) -> int:
    """Write the export; ``out=None`` means stdout (text formats). Returns the conversations written.

    Streams: one record at a time from the shards (``.zst`` decompressed as it is read) to the
    output, so a run of any size exports in constant memory."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "parquet" and out is None:
        raise ExportError("parquet is binary: give --out FILE")
    if out is not None and out.is_dir():
        raise ExportError(f"--out {out}: is a directory; give a file name")
    written = 0
    training = fmt in ("openai", "sharegpt", "symbols")

    def counted(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        nonlocal written
        for record in records:
            try:
                if not training or _training_messages(record, options):
                    written += 1
            except (TypeError, ValueError) as exc:  # turns that are not {speaker, text}
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ExportError(f"{run_dir}: record {record.get('id', '?')!r} has malformed turns ({first})") from None
            yield record

    records = counted(checked_records(run_dir))
    try:
        if fmt == "parquet":
            assert out is not None
            with atomic_path(out) as tmp:
                return _write_parquet(records, options, tmp)
        lines = TEXT_WRITERS[fmt](records, options)
        if out is None:
            if sys.stdout.isatty():  # data for a pipe as it is; a terminal gets no raw control characters
                lines = (visible(line) for line in lines)
            sys.stdout.writelines(lines)
            sys.stdout.flush()
        else:
            atomic_write(out, (line.encode("utf-8") for line in lines))
    except BrokenPipeError:
        raise  # the reader stopped (`| head`): producer's main exits quietly
    except OSError as exc:  # an unwritable or missing place, a full disk: the user's to fix
        raise ExportError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    return written
