"""Shard files, the one writer and reader: no reader ever sees a partial shard (docs/design.md, "Run directory").

A collector appends records to a hidden *open* file of its own
(``.open-conversations-<collector>.jsonl``), fsyncing every batch before it acknowledges
the batch: what is acknowledged is on disk. When the open file holds ``shard_size``
records (or the run is over, or it sat idle), it is *sealed*:

1. a shard number is taken from Redis (unique across collectors);
2. the open file is renamed to ``.sealing-<kind>-<n>.jsonl`` (atomic);
3. the final ``<kind>-<n>.jsonl`` appears by rename (or, compressed, by writing
   ``.zst`` to a temporary name, fsync, rename);
4. the shard (records, bytes, sha256) is recorded for the manifest.

A crash at any step leaves either the open file or a ``.sealing`` file, which
:meth:`ShardSet.recover` completes on the next start; a torn last line in an open file
(a crash mid-write) is cut off, because its batch was never acknowledged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import zstandard

from convfarm.rundir.files import fsync_dir, make_dirs
from convfarm.rundir.layout import KINDS, SEALING, SHARD, open_name, sealing_name, shard_name

_WRITERS: ThreadPoolExecutor | None = None


def _writers() -> ThreadPoolExecutor:
    global _WRITERS
    if _WRITERS is None:
        _WRITERS = ThreadPoolExecutor(max_workers=len(KINDS), thread_name_prefix="convfarm-shard-writer")
    return _WRITERS


class ShardRegistry(Protocol):
    """Where shard numbers come from and sealed shards are recorded (Redis for collectors)."""

    def next_shard_number(self, run: str, kind: str) -> int: ...
    def add_shard(self, run: str, name: str, entry: dict[str, Any]) -> None: ...
    def shards(self, run: str) -> dict[str, dict[str, Any]]: ...


@dataclass
class LocalShardRegistry:
    """A registry for one process writing a whole run directory alone (``producer filter``)."""

    numbers: Counter[str] = field(default_factory=Counter)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def next_shard_number(self, run: str, kind: str) -> int:
        self.numbers[kind] += 1
        return self.numbers[kind] - 1

    def add_shard(self, run: str, name: str, entry: dict[str, Any]) -> None:
        self.entries[name] = entry

    def shards(self, run: str) -> dict[str, dict[str, Any]]:
        return dict(sorted(self.entries.items()))


class ShardCorrupt(ValueError):
    """A line inside a shard (not its torn tail) is not a record: one line for the user, nothing cut."""


def _lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Whole lines and the tail after the last line break.

    Only ``\n`` ends a record: JSON writes U+2028, U+2029 and U+0085 raw inside strings, and
    ``str.splitlines()`` would split a record there. Decoding is per line, so a
    UTF-8 character torn by a crash mid-write is confined to the tail.
    """
    *whole, tail = data.split(b"\n")
    return whole, tail


def _parse(line: bytes) -> dict | None:
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # RecursionError: nested too deeply
        return None
    return value if isinstance(value, dict) else None


def parse_lines(data: bytes, name: str = "shard") -> tuple[list[dict], int]:
    """Records of a shard's bytes and how many bytes they span (the torn tail excluded).

    Every batch is appended as whole lines, so a crash mid-write can only leave a tail
    without its line break: that tail is dropped unless it is a whole record. Any other
    line that is not a record is corruption and raises :class:`ShardCorrupt` (naming the
    line) instead of silently ending the shard there.
    """
    whole, tail = _lines(data)
    records: list[dict] = []
    offset = 0
    for number, line in enumerate(whole, 1):
        record = _parse(line)
        if record is None:
            if not line.strip():
                offset += len(line) + 1
                continue
            raise ShardCorrupt(f"{name}: line {number} is not a JSON record")
        records.append(record)
        offset += len(line) + 1
    if tail and (record := _parse(tail)) is not None:
        records.append(record)  # a whole last record whose line break was not written
        offset += len(tail)
    return records, offset


def read_records(path: Path) -> Iterator[dict]:
    """Records of a shard (plain or .zst) or of an open file, skipping a torn last line.

    Streamed line by line (a .zst shard is decompressed as it is read, never whole), with the
    same rules as :func:`parse_lines`: a binary file's lines end at ``\\n`` only.
    """
    with path.open("rb") as raw:
        source = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw)) if path.suffix == ".zst" else raw
        for number, line in enumerate(source, 1):
            if not line.endswith(b"\n"):  # the tail: a whole record whose line break was not written, or torn
                if (record := _parse(line)) is not None:
                    yield record
                return
            record = _parse(line[:-1])
            if record is not None:
                yield record
            elif line.strip():
                raise ShardCorrupt(f"{path}: line {number} is not a JSON record")


@dataclass
class OpenShard:
    """The open file of one kind of one run, owned by one collector."""

    directory: Path
    kind: str
    owner: str
    records: int = 0

    @property
    def path(self) -> Path:
        return self.directory / open_name(self.kind, self.owner)

    def mark(self) -> tuple[int, int]:
        """Where the file ends now (bytes, records): what :meth:`roll_back` returns to."""
        try:
            return self.path.stat().st_size, self.records
        except FileNotFoundError:
            return 0, self.records

    def roll_back(self, mark: tuple[int, int]) -> None:
        """Cut what was appended since ``mark`` (a commit refused after the write), fsync'd."""
        size, records = mark
        try:
            with self.path.open("rb+") as fh:
                fh.truncate(size)
                fh.flush()
                os.fsync(fh.fileno())
        except FileNotFoundError:
            pass
        self.records = records

    def append(self, lines: list[str]) -> None:
        created = not self.path.exists()  # one owner per open file: nobody else creates it meanwhile
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())
        if created:  # the new file's directory entry too: fsync'd bytes in a file a crash unlinks are lost
            fsync_dir(self.directory)
        self.records += len(lines)


class ShardSet:
    """The shards one writer (a collector, or ``producer filter``) writes for one run."""

    def __init__(self, store: ShardRegistry, run: str, directory: Path, owner: str, *, shard_size: int,
                 compression: str, checkpoint: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.checkpoint = checkpoint or (lambda _point: None)  # named steps a test may watch (Checkpoints)
        self.run = run
        self.directory = directory
        self.shard_size = shard_size
        self.compression = compression
        self.owner = owner
        make_dirs(self.directory)  # a new run directory is fsync'd in its parent
        self.open = {kind: OpenShard(directory, kind, owner) for kind in KINDS}

    # --- recovery ---------------------------------------------------------------------------
    def recover(self) -> list[dict]:
        """Finish interrupted seals, cut torn lines; returns the records of our open files."""
        for path in sorted(self.directory.glob(".sealing-*.jsonl")):
            match = SEALING.match(path.name)
            if match:
                self._finish_seal(path, match["kind"], int(match["number"]))
        known = self.store.shards(self.run)
        for path in sorted(self.directory.iterdir()):
            if (match := SHARD.match(path.name)) and path.name not in known:
                self._register(path, match["kind"])  # sealed, not yet recorded
        recovered: list[dict] = []
        for shard in self.open.values():
            if not shard.path.exists():
                continue
            records = self.cut_torn_tail(shard.path)
            shard.records = len(records)
            recovered.extend(records)
        return recovered

    @staticmethod
    def cut_torn_tail(path: Path) -> list[dict]:
        """Cut what a crash mid-write left after the last whole record, whatever its bytes.

        Only the tail after the last line break is ever cut: every acknowledged batch ends with
        one (it was fsync'd whole), so nothing acknowledged is lost. A line that is not a record
        before that point raises :class:`ShardCorrupt` and the file is left as it is.
        """
        records: list[dict] = []
        keep = 0  # bytes of whole records (and blank lines) from the start
        unbroken = False  # the last record is whole but lacks its line break
        with path.open("rb+") as fh:  # line by line, as parse_lines splits: never the whole file at once
            for number, line in enumerate(fh, 1):
                if not line.endswith(b"\n"):  # the tail
                    if (record := _parse(line)) is not None:
                        records.append(record)
                        keep += len(line)
                        unbroken = True
                    break
                record = _parse(line[:-1])
                if record is None and line.strip():
                    raise ShardCorrupt(f"{path}: line {number} is not a JSON record")
                if record is not None:
                    records.append(record)
                keep += len(line)
            size = fh.seek(0, os.SEEK_END)
            if keep == size and not unbroken:
                return records
            if keep < size:
                fh.truncate(keep)
            if unbroken:
                fh.seek(keep)
                fh.write(b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        return records

    # --- writing ------------------------------------------------------------------------------
    def append(self, kind: str, lines: list[str]) -> None:
        if lines:
            self.open[kind].append(lines)

    def append_kinds(self, lines: dict[str, list[str]]) -> dict[str, tuple[int, int]]:
        """:meth:`append` for several kinds at once; returns when every file is written and fsync'd,
        with where each file ended before (for :meth:`roll_back`).

        The files are written and fsync'd on threads at the same time: two fsyncs together take
        about as long as one (the journal commits once), which was a tenth of a batch's time."""
        jobs = [(self.open[kind], kind_lines) for kind, kind_lines in lines.items() if kind_lines]
        undo = {shard.kind: shard.mark() for shard, _ in jobs}
        try:
            if len(jobs) < 2:
                for shard, kind_lines in jobs:
                    shard.append(kind_lines)
                return undo
            futures = [_writers().submit(shard.append, kind_lines) for shard, kind_lines in jobs]
            wait(futures)  # all of them, also when one failed: nothing is left writing behind us
            for future in futures:
                future.result()
        except OSError:
            # a write or fsync that failed (a full disk) leaves bytes that may not be durable: cut
            # them, so recovery never takes an unacknowledged, perhaps lost batch for written
            with contextlib.suppress(OSError):
                self.roll_back(undo)
            raise
        return undo

    def roll_back(self, undo: dict[str, tuple[int, int]]) -> None:
        """Cut what :meth:`append_kinds` appended (its return value): the commit was refused."""
        for kind, mark in undo.items():
            self.open[kind].roll_back(mark)

    def seal_full(self) -> list[str]:
        return [name for kind, shard in self.open.items() if shard.records >= self.shard_size
                for name in [self.seal(kind)] if name]

    def seal_all(self) -> list[str]:
        return [name for kind in KINDS if (name := self.seal(kind))]

    def seal(self, kind: str) -> str | None:
        shard = self.open[kind]
        if shard.records == 0 or not shard.path.exists():
            return None
        name = self.seal_file(shard.path, kind)
        shard.records = 0
        return name

    def seal_file(self, path: Path, kind: str) -> str | None:
        """Seal an open file of this run (ours, or one a dead collector left): take a shard number,
        rename to the sealing name (atomic: of two sealers one wins; None if the file is gone),
        finish the seal. Returns the shard's name."""
        number = self.store.next_shard_number(self.run, kind)
        while any((self.directory / shard_name(kind, number, compressed=z)).exists() for z in (False, True)):
            number = self.store.next_shard_number(self.run, kind)  # Redis lost its counter
        sealing = self.directory / sealing_name(kind, number)
        try:
            os.replace(path, sealing)
        except FileNotFoundError:
            return None
        return self._finish_seal(sealing, kind, number)

    def _finish_seal(self, sealing: Path, kind: str, number: int) -> str:
        """Two writers may finish one seal at once (a collector opening the run finds a
        ``.sealing`` file another is still compressing): each compresses to a temporary name of
        its own, both rename the same bytes to the final name, and whoever finds the sealing
        file gone finds the final shard in its place (docs/design.md, "Run directory")."""
        final = self.directory / shard_name(kind, number, compressed=self.compression == "zstd")
        try:
            if self.compression == "zstd":
                if not final.exists():
                    tmp = final.with_name(f".tmp-{self.owner}-{os.getpid()}-{final.name}")
                    try:
                        with sealing.open("rb") as src, tmp.open("wb") as dst:
                            zstandard.ZstdCompressor(level=10).copy_stream(src, dst)
                            dst.flush()
                            os.fsync(dst.fileno())
                        self.checkpoint("before_seal_rename")
                        os.replace(tmp, final)
                    finally:
                        tmp.unlink(missing_ok=True)
                sealing.unlink(missing_ok=True)
            else:
                os.replace(sealing, final)
        except FileNotFoundError:
            if not final.exists():  # nobody finished it: a real loss, not a race
                raise
        fsync_dir(self.directory)
        self._register(final, kind, parse=False)
        return final.name

    def _register(self, path: Path, kind: str, *, parse: bool = True) -> None:
        """Record a sealed shard for the manifest. ``parse=False``: a shard just sealed from an
        open file, which holds whole records one per line (appended whole, its torn tail cut
        before sealing), so its lines are counted instead of parsed (parsing every record again
        was a tenth of the collector's time). Streamed: a shard may be gigabytes, never in memory."""
        digest, size = hashlib.sha256(), 0
        with path.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
                size += len(block)
        if parse:
            records = sum(1 for _ in read_records(path))
        else:
            with path.open("rb") as raw:
                source = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw)) \
                    if path.suffix == ".zst" else raw
                records = sum(1 for line in source if line.strip())
        self.store.add_shard(self.run, path.name, {
            "file": path.name, "kind": kind, "records": records, "bytes": size, "sha256": digest.hexdigest(),
        })
