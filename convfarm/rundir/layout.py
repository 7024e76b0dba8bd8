"""The names in a run directory (``OUT/<run>/``): the one place their patterns are spelled.

Sealed shards ``<kind>-NNNNN.jsonl`` (``.zst`` when compressed) and ``manifest.json`` are
the output; hidden files (``.open-*``, ``.sealing-*``, ``.*.tmp``) belong to a collector
still writing and are never read as output. See docs/design.md, "Run directory".
"""

from __future__ import annotations

import re
from pathlib import Path

KINDS = ("conversations", "rejected")
MANIFEST = "manifest.json"
SHARD = re.compile(r"^(?P<kind>conversations|rejected)-(?P<number>\d+)\.jsonl(?P<zst>\.zst)?$")
OPEN = re.compile(r"^\.open-(?P<kind>conversations|rejected)-(?P<owner>.+)\.jsonl$")
SEALING = re.compile(r"^\.sealing-(?P<kind>conversations|rejected)-(?P<number>\d+)\.jsonl$")


def shard_name(kind: str, number: int, *, compressed: bool = False) -> str:
    return f"{kind}-{number:05d}.jsonl" + (".zst" if compressed else "")


def sealing_name(kind: str, number: int) -> str:
    return f".sealing-{kind}-{number:05d}.jsonl"


def open_name(kind: str, owner: str) -> str:
    return f".open-{kind}-{owner}.jsonl"


def shard_files(run_dir: Path, kind: str = "conversations") -> list[Path]:
    """The sealed shards of one kind, in shard order."""
    found = [(int(m["number"]), p) for p in run_dir.iterdir() if (m := SHARD.match(p.name)) and m["kind"] == kind]
    return [path for _, path in sorted(found)]
