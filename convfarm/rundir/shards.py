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

import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import zstandard

from convfarm.rundir.files import fsync_dir
from convfarm.rundir.layout import KINDS, SEALING, SHARD, open_name, sealing_name, shard_name


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


def read_records(path: Path) -> Iterator[dict]:
    """Records of a shard (plain or .zst) or of an open file, skipping a torn last line."""
    # streamed line by line (a .zst shard is decompressed as it is read, never whole)
    with path.open("rb") as raw:
        source = zstandard.ZstdDecompressor().stream_reader(raw) if path.suffix == ".zst" else raw
        for line in io.TextIOWrapper(source, encoding="utf-8", newline="\n"):
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                return  # only ever the last line: the batch that contained it was never acked


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

    def append(self, lines: list[str]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())
        self.records += len(lines)


class ShardSet:
    """The shards one writer (a collector, or ``producer filter``) writes for one run."""

    def __init__(self, store: ShardRegistry, run: str, directory: Path, owner: str, *, shard_size: int,
                 compression: str) -> None:
        self.store = store
        self.run = run
        self.directory = directory
        self.shard_size = shard_size
        self.compression = compression
        self.directory.mkdir(parents=True, exist_ok=True)
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
            records = list(read_records(shard.path))
            self._rewrite(shard.path, records)
            shard.records = len(records)
            recovered.extend(records)
        return recovered

    @staticmethod
    def _rewrite(path: Path, records: list[dict]) -> None:
        """Drop a torn tail so the next append starts on a fresh line."""
        size = path.stat().st_size
        with path.open("rb+") as fh:
            data = fh.read()
            keep = len(b"".join(line + b"\n" for line in data.split(b"\n")[: len(records)]))
            if keep == size:
                return
            if keep < size:
                fh.truncate(keep)
            else:  # the last record is whole but lacks its line break
                fh.seek(0, os.SEEK_END)
                fh.write(b"\n")
            fh.flush()
            os.fsync(fh.fileno())

    # --- writing ------------------------------------------------------------------------------
    def append(self, kind: str, lines: list[str]) -> None:
        if lines:
            self.open[kind].append(lines)

    def seal_full(self) -> list[str]:
        return [name for kind, shard in self.open.items() if shard.records >= self.shard_size
                for name in [self.seal(kind)] if name]

    def seal_all(self) -> list[str]:
        return [name for kind in KINDS if (name := self.seal(kind))]

    def seal(self, kind: str) -> str | None:
        shard = self.open[kind]
        if shard.records == 0 or not shard.path.exists():
            return None
        number = self.store.next_shard_number(self.run, kind)
        while any((self.directory / shard_name(kind, number, compressed=z)).exists() for z in (False, True)):
            number = self.store.next_shard_number(self.run, kind)  # Redis lost its counter
        sealing = self.directory / sealing_name(kind, number)
        os.replace(shard.path, sealing)
        shard.records = 0
        return self._finish_seal(sealing, kind, number)

    def _finish_seal(self, sealing: Path, kind: str, number: int) -> str:
        final = self.directory / shard_name(kind, number, compressed=self.compression == "zstd")
        if self.compression == "zstd":
            if not final.exists():
                tmp = final.with_name(f".tmp-{final.name}")
                with sealing.open("rb") as src, tmp.open("wb") as dst:
                    zstandard.ZstdCompressor(level=10).copy_stream(src, dst)
                    dst.flush()
                    os.fsync(dst.fileno())
                os.replace(tmp, final)
            sealing.unlink(missing_ok=True)
        else:
            os.replace(sealing, final)
        fsync_dir(self.directory)
        self._register(final, kind)
        return final.name

    def _register(self, path: Path, kind: str) -> None:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        records = sum(1 for _ in read_records(path))
        self.store.add_shard(self.run, path.name, {
            "file": path.name, "kind": kind, "records": records,
            "bytes": path.stat().st_size, "sha256": digest,
        })
