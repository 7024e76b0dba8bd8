"""Reading a run directory (``OUT/<run>/``) from the user's side: exports and re-filtering.

A run directory holds sealed shards ``conversations-NNNNN.jsonl[.zst]`` and
``rejected-NNNNN.jsonl[.zst]`` and a ``manifest.json`` (docs/design.md, "Run directory"). Hidden open files of a
collector still writing are not read: only what is sealed is output.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from convfarm.rundir.layout import MANIFEST, SHARD, shard_files
from convfarm.rundir.shards import read_records


class NotARun(ValueError):
    """The path is not a run directory (one line, for the CLI)."""


def check_run_dir(path: Path) -> Path:
    if not path.exists():
        raise NotARun(f"{path}: no such directory")
    if not path.is_dir():
        raise NotARun(f"{path}: not a run directory (it is a file)")
    if not (path / MANIFEST).is_file() and not any(SHARD.match(p.name) for p in path.iterdir()):
        raise NotARun(f"{path}: not a run directory (no manifest.json and no conversations-*.jsonl shards)")
    return path


def read_run(run_dir: Path, kind: str = "conversations") -> Iterator[dict[str, Any]]:
    for path in shard_files(run_dir, kind):
        yield from read_records(path)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise NotARun(f"{path}: unreadable manifest ({exc})") from None
    except RecursionError:  # json's parser recurses once per nesting level
        raise NotARun(f"{path}: unreadable manifest (nested too deeply)") from None
