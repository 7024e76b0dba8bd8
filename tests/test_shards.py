"""Shard files: the reader splits on "\\n" only, recovery cuts a torn tail whatever its bytes and
never a record that was acknowledged, shards rotate at shard_size and seal with zstd.

In-process: a ShardSet on a local registry, or on the session's Redis through a RunStore.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convfarm.rundir.layout import open_name
from convfarm.rundir.manifest import build_manifest, write_manifest
from convfarm.rundir.reader import read_run
from convfarm.rundir.shards import LocalShardRegistry, ShardCorrupt, ShardSet, read_records
from producer.export import ExportOptions, export_run
from tests.inprocess import make_record

pytestmark = pytest.mark.fast

SEPARATORS = ["\u2028", "\u2029", "\u0085", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]


def shard_set(directory: Path, *, shard_size: int = 1000, compression: str = "none",
              registry: LocalShardRegistry | None = None) -> ShardSet:
    return ShardSet(registry or LocalShardRegistry(), "run", directory, "c1", shard_size=shard_size,
                    compression=compression)


def lines_of(texts: list[str]) -> list[str]:
    return [make_record("run", "leaf", i, text=text).to_json() for i, text in enumerate(texts)]


def test_records_with_unicode_line_separators_are_read_whole(tmp_path: Path) -> None:
    """Three records, the second with U+2028 — all three are read, recovered and sealed."""
    shards = shard_set(tmp_path)
    texts = ["plain", "one\u2028two\u2029three\u0085four\rfive", "last"]
    shards.append("conversations", lines_of(texts))
    open_file = tmp_path / open_name("conversations", "c1")
    assert [r["turns"][1]["text"] for r in read_records(open_file)] == texts
    again = shard_set(tmp_path)
    assert len(again.recover()) == 3
    assert len(list(read_records(open_file))) == 3  # recovery cut nothing
    [name] = again.seal_all()
    assert [r["raw"] for r in read_records(tmp_path / name)] == texts


@pytest.mark.parametrize("tail", [
    "é".encode()[:1],  # a two-byte character torn after its first byte
    "€".encode()[:2],  # three-byte, torn after two
    b'{"id": "x", "raw": "caf\xc3',  # a record torn inside a character
    b"\xff\xfe\x00garbage",  # bytes that are no UTF-8 at all
    b"\x00" * 4096,  # a block the filesystem extended but never wrote
])
def test_recovery_cuts_a_torn_tail_whatever_bytes_it_holds(tmp_path: Path, tail: bytes) -> None:
    """A crash mid-write left a torn UTF-8 character; reading must not raise on every batch."""
    shards = shard_set(tmp_path)
    shards.append("conversations", lines_of(["first", "second"]))
    open_file = tmp_path / open_name("conversations", "c1")
    whole = open_file.read_bytes()
    open_file.write_bytes(whole + tail)
    assert len(list(read_records(open_file))) == 2
    again = shard_set(tmp_path)
    assert len(again.recover()) == 2
    assert open_file.read_bytes() == whole  # the tail, and only the tail, is gone
    again.append("conversations", lines_of(["third"]))
    assert [r["raw"] for r in read_records(open_file)] == ["first", "second", "third"]


def test_a_whole_last_record_without_its_line_break_is_kept(tmp_path: Path) -> None:
    open_file = tmp_path / open_name("conversations", "c1")
    tmp_path.mkdir(exist_ok=True)
    open_file.write_text("\n".join(lines_of(["a", "b"])), encoding="utf-8")
    shards = shard_set(tmp_path)
    assert len(shards.recover()) == 2
    shards.append("conversations", lines_of(["c"]))
    assert [r["raw"] for r in read_records(open_file)] == ["a", "b", "c"]


def test_a_bad_line_before_acknowledged_records_is_never_cut(tmp_path: Path) -> None:
    """Corruption inside the file is reported, not 'repaired' by truncating acknowledged records."""
    open_file = tmp_path / open_name("conversations", "c1")
    good = lines_of(["a", "b"])
    open_file.write_bytes((good[0] + "\n{not json\n" + good[1] + "\n").encode())
    before = open_file.read_bytes()
    with pytest.raises(ShardCorrupt, match="line 2"):
        shard_set(tmp_path).recover()
    assert open_file.read_bytes() == before


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
                      | st.sampled_from(SEPARATORS).map(lambda c: f"a{c}b"), min_size=1, max_size=6),
       compression=st.sampled_from(["none", "zstd"]))
def test_any_unicode_text_round_trips(tmp_path_factory: pytest.TempPathFactory, texts: list[str],
                                      compression: str) -> None:
    """Property: writer -> reader -> recover -> seal -> export keeps every record and its text."""
    directory = tmp_path_factory.mktemp("shards")
    registry = LocalShardRegistry()
    shards = shard_set(directory, shard_size=4, compression=compression, registry=registry)
    records = [make_record("run", "leaf", i, text=text) for i, text in enumerate(texts)]
    shards.append("conversations", [r.to_json() for r in records])
    recovered = shard_set(directory, shard_size=4, compression=compression, registry=registry)
    assert [r["raw"] for r in recovered.recover()] == texts
    recovered.seal_all()
    assert [r["raw"] for r in read_run(directory)] == texts
    assert sum(e["records"] for e in registry.shards("run").values()) == len(texts)
    out = directory / "export.jsonl"
    assert export_run(directory, "openai", out, ExportOptions()) == len(texts)
    exported = [json.loads(line) for line in out.read_bytes().decode("utf-8").split("\n") if line]
    assert [r["messages"][-1]["content"] for r in exported] == texts


def test_shards_rotate_at_shard_size_and_seal_with_zstd(tmp_path: Path) -> None:
    registry = LocalShardRegistry()
    shards = shard_set(tmp_path, shard_size=3, compression="zstd", registry=registry)
    texts = [f"text {i}" for i in range(8)]
    for start in range(0, 8, 2):
        shards.append("conversations", lines_of(texts[start:start + 2]))
        shards.seal_full()
    sealed = sorted(p.name for p in tmp_path.glob("conversations-*"))
    assert sealed == ["conversations-00000.jsonl.zst", "conversations-00001.jsonl.zst"]  # 4 and 4 records
    assert [e["records"] for e in registry.shards("run").values()] == [4, 4]
    assert not list(tmp_path.glob(".open-*")) and not list(tmp_path.glob(".sealing-*"))
    assert [r["raw"] for r in read_run(tmp_path)] == texts
    for entry in registry.shards("run").values():
        assert hashlib.sha256((tmp_path / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]


def test_a_seal_interrupted_after_the_rename_is_finished_by_recovery(tmp_path: Path) -> None:
    registry = LocalShardRegistry()
    shards = shard_set(tmp_path, compression="zstd", registry=registry)
    shards.append("conversations", lines_of(["a\u2028b", "c"]))
    (tmp_path / open_name("conversations", "c1")).rename(tmp_path / ".sealing-conversations-00000.jsonl")
    shard_set(tmp_path, compression="zstd", registry=registry).recover()
    assert [p.name for p in tmp_path.iterdir()] == ["conversations-00000.jsonl.zst"]
    assert registry.shards("run")["conversations-00000.jsonl.zst"]["records"] == 2


@pytest.mark.parametrize("compression", ["zstd", "none"])
@pytest.mark.parametrize("when", ["before it reads the sealing file", "before its final rename"])
def test_a_second_writer_finishing_a_seal_in_progress_breaks_neither(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    compression: str, when: str) -> None:
    """Collector b opens the run while a is sealing: b's recovery finishes the same ``.sealing``
    file. Neither raises (a's FileNotFoundError used to fail the run), the shard is whole."""
    from convfarm.rundir import shards as shards_module

    registry = LocalShardRegistry()
    a = ShardSet(registry, "run", tmp_path, "a", shard_size=1000, compression=compression)
    a.append("conversations", lines_of(["one", "two", "three"]))
    real_replace, real_open = shards_module.os.replace, Path.open
    interrupted: list[str] = []

    def b_finishes_it() -> None:
        if not interrupted:
            interrupted.append(when)
            ShardSet(registry, "run", tmp_path, "b", shard_size=1000, compression=compression).recover()

    def replace(src, dst):
        if Path(dst).name.startswith("conversations-") and when == "before its final rename":
            b_finishes_it()
        return real_replace(src, dst)

    def opening(self: Path, *args, **kwargs):
        if self.name.startswith(".sealing-") and when == "before it reads the sealing file":
            b_finishes_it()
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(shards_module.os, "replace", replace)
    monkeypatch.setattr(Path, "open", opening)
    sealed = a.seal_all()
    if compression == "none" and when == "before it reads the sealing file":
        assert not interrupted  # an uncompressed seal is one rename: nothing to race with
        return
    assert interrupted
    assert sealed == [f"conversations-00000.jsonl{'.zst' if compression == 'zstd' else ''}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sealed  # no .tmp or .sealing left behind
    assert [r["raw"] for r in read_run(tmp_path)] == ["one", "two", "three"]


def test_the_manifest_counts_what_was_written(farm_state, tmp_path: Path) -> None:
    """Through the Redis shard index: the manifest counts the 3 records written, not 1."""
    info = farm_state.create_run()
    shards = ShardSet(farm_state.store.shard_index, info.run, tmp_path, "c1", shard_size=10, compression="none")
    shards.append("conversations", [make_record(info.run, "leaf", i, text=t).to_json()
                                    for i, t in enumerate(["x", "y\u2028z", "w"])])
    shards.seal_all()
    manifest = build_manifest(farm_state.store, info)
    write_manifest(tmp_path, manifest)
    assert sum(s["records"] for s in manifest["shards"]) == 3


def test_both_kinds_of_a_batch_are_written_and_fsyncd_before_append_kinds_returns(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The collector appends a batch's accepted and rejected records at once (their fsyncs run
    together): each file holds its lines, and a failed fsync of one file is raised, never lost,
    with the batch cut from both files (it was never acknowledged, and may not be on disk)."""
    import convfarm.rundir.shards as shards_module

    shards = shard_set(tmp_path, shard_size=3)
    synced: list[int] = []
    real_fsync = shards_module.os.fsync
    monkeypatch.setattr(shards_module.os, "fsync", lambda fd: (real_fsync(fd), synced.append(shards_module.os.fstat(fd).st_ino)))
    shards.append_kinds({"conversations": lines_of(["a", "b"]), "rejected": lines_of(["c"])})
    files = {(tmp_path / open_name(kind, "c1")).stat().st_ino for kind in ("conversations", "rejected")}
    assert files <= set(synced) and len([i for i in synced if i in files]) == 2  # each file once (and their directory)
    assert [r["raw"] for r in read_records(tmp_path / open_name("conversations", "c1"))] == ["a", "b"]
    assert [r["raw"] for r in read_records(tmp_path / open_name("rejected", "c1"))] == ["c"]

    def failing(fd: int) -> None:
        if "rejected" in Path(f"/proc/self/fd/{fd}").resolve().name:
            raise OSError(5, "injected EIO")
        real_fsync(fd)

    monkeypatch.setattr(shards_module.os, "fsync", failing)
    with pytest.raises(OSError, match="injected EIO"):
        shards.append_kinds({"conversations": lines_of(["d"]), "rejected": lines_of(["e"])})
    assert [r["raw"] for r in read_records(tmp_path / open_name("conversations", "c1"))] == ["a", "b"]
    assert [r["raw"] for r in read_records(tmp_path / open_name("rejected", "c1"))] == ["c"]
    assert shards.seal_full() == []  # still 2 records: not full
    monkeypatch.setattr(shards_module.os, "fsync", real_fsync)
    shards.append_kinds({"conversations": lines_of(["d"]), "rejected": lines_of(["e"])})
    assert shards.seal_full() == ["conversations-00000.jsonl"]  # 3 records: full


# --- new files and directories survive a crash: their entries are fsync'd in the parent ----------------------
def _fsynced_inodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on os.fsync (the real one still runs): the inode of every file descriptor fsync'd."""
    import os

    seen: list[int] = []
    real = os.fsync

    def spy(fd: int) -> None:
        seen.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


@pytest.mark.fast
def test_a_new_run_directory_and_open_file_are_fsynced_in_their_directory(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from convfarm.rundir.shards import LocalShardRegistry, ShardSet

    synced = _fsynced_inodes(monkeypatch)
    run_dir = tmp_path / "root" / "run-1"
    shards = ShardSet(LocalShardRegistry(), "run-1", run_dir, "c1", shard_size=10, compression="none")
    # each new directory's entry lives in its parent: both parents were fsync'd after the mkdirs
    assert {(tmp_path).stat().st_ino, (tmp_path / "root").stat().st_ino} <= set(synced)
    synced.clear()
    shards.append("conversations", ['{"id": "a"}'])
    open_file = shards.open["conversations"].path
    assert synced == [open_file.stat().st_ino, run_dir.stat().st_ino], "the new open file's entry was not fsync'd"
    synced.clear()
    shards.append("conversations", ['{"id": "b"}'])
    assert synced == [open_file.stat().st_ino]  # an existing file: its bytes only, no directory fsync per batch


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_sealing_a_big_shard_streams_it(tmp_path: Path, compression: str) -> None:
    """Sealing (compress, count, hash) holds a few MB whatever the shard's size (a shard may be
    gigabytes at the allowed shard_size; the collector pod has 4 GiB)."""
    import tracemalloc

    registry = LocalShardRegistry()
    shards = shard_set(tmp_path, compression=compression, registry=registry)
    line = lines_of(["x" * 900])[0]
    count = 40_000  # ~40 MB
    with (tmp_path / open_name("conversations", "c1")).open("w") as fh:
        fh.write((line + "\n") * count)
    shards.open["conversations"].records = count
    tracemalloc.start()
    try:
        (name,) = shards.seal_all()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert registry.shards("run")[name]["records"] == count
    assert peak < 8 * 2**20, f"sealing held {peak / 2**20:.0f} MB"
