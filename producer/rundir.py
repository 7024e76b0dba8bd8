"""Reading a run directory (``OUT/<run>/``) from the user's side: exports and re-filtering.

A run directory holds sealed shards ``conversations-NNNNN.jsonl[.zst]`` and
``rejected-NNNNN.jsonl[.zst]`` and a ``manifest.json`` (SPEC §4). Hidden open files of a
collector still writing are not read: only what is sealed is output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workers.shards import read_records

_SHARD = re.compile(r"^(?P<kind>conversations|rejected)-(?P<number>\d+)\.jsonl(?:\.zst)?$")


class NotARun(ValueError):
    """The path is not a run directory (one line, for the CLI)."""


def shard_files(run_dir: Path, kind: str = "conversations") -> list[Path]:
    """The sealed shards of one kind, in shard order."""
    found = [(int(m["number"]), p) for p in run_dir.iterdir() if (m := _SHARD.match(p.name)) and m["kind"] == kind]
    return [path for _, path in sorted(found)]


def check_run_dir(path: Path) -> Path:
    if not path.exists():
        raise NotARun(f"{path}: no such directory")
    if not path.is_dir():
        raise NotARun(f"{path}: not a run directory (it is a file)")
    if not (path / "manifest.json").is_file() and not any(_SHARD.match(p.name) for p in path.iterdir()):
        raise NotARun(f"{path}: not a run directory (no manifest.json and no conversations-*.jsonl shards)")
    return path


def read_run(run_dir: Path, kind: str = "conversations") -> Iterator[dict[str, Any]]:
    for path in shard_files(run_dir, kind):
        yield from read_records(path)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise NotARun(f"{path}: unreadable manifest ({exc})") from None
