"""Writing files so that a reader sees the old content or the new, never half of either.

The one implementation for shards' manifests, ``producer filter``, ``producer export`` and
``producer config new``: write a hidden temporary file beside the target, fsync it, rename it
over the target, fsync the directory. On any error the temporary file is removed and the
target is untouched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (the directory entry, not just the file's bytes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> Path:
    """``mkdir -p`` whose new directories survive a crash: each one's entry is fsync'd in its parent.

    Without it a power cut after the collector acknowledged records written into a new run
    directory could lose the directory itself, and the fsync'd file with it (docs/design.md,
    "Run directory").
    """
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:  # another collector made it meanwhile: it fsyncs its own
            if not directory.is_dir():
                raise
            continue
        fsync_dir(directory.parent)
    return path


@contextmanager
def atomic_path(path: Path, *, durable: bool = True) -> Iterator[Path]:
    """A temporary path to write (by any means: a library's ``write_table``); renamed to ``path`` on success."""
    if durable:
        make_dirs(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if durable:
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
        tmp.chmod(0o644)  # mkstemp makes 0600; the result is an ordinary file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes | str | Iterable[bytes], *, durable: bool = True) -> Path:
    """Write ``data`` (bytes, text, or byte chunks streamed one by one) to ``path`` atomically."""
    with atomic_path(path, durable=durable) as tmp, tmp.open("wb") as fh:
        if isinstance(data, str):
            fh.write(data.encode("utf-8"))
        elif isinstance(data, bytes | bytearray):
            fh.write(data)
        else:
            for chunk in data:
                fh.write(chunk)
    return path
