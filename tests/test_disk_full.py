"""A full output disk pauses a run: its results stay pending (never acknowledged, never
dead-lettered), ``producer status`` says why, and the run resumes by itself when there is room
again (docs/design.md, "Delivery guarantees"). In process, with ENOSPC injected in the shard
writer's fsync and append (a real tmpfs needs mount rights the test machine does not give).
"""

from __future__ import annotations

import errno

import pytest

from convfarm.rundir import shards as shards_module
from producer.status import render, run_status
from tests.conftest import wait_for
from tests.inprocess import WORDS, FarmState, Fault, make_record, pending, push

pytestmark = pytest.mark.fast


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["fsync", "write"])
def test_a_full_disk_pauses_the_run_and_it_resumes_when_there_is_room(farm_state: FarmState, where: str) -> None:
    info = farm_state.create_run()
    client = farm_state.client
    push(client, [make_record(info.run, w, 0) for w in WORDS])
    collector = farm_state.collector()
    if where == "fsync":
        fault = Fault(shards_module.os, "fsync", exc=disk_full, times=10**6).install()
    else:
        fault = Fault(shards_module.OpenShard, "append", exc=disk_full, times=10**6).install()
    try:
        farm_state.start(collector)
        store = farm_state.store
        wait_for(lambda: fault.fired >= 2, 20, "the collector to try again after the full disk")
        assert store.status(info.run) == "active"  # never failed
        assert pending(client) == len(WORDS)  # nothing acknowledged: the texts are still in the stream
        assert not store.dead_letters.list(info.run)
        status = run_status(store, info.run)
        assert "disk full" in status["paused"]
        assert "No space left" in str(render(status).renderables[0].columns[1]._cells)
    finally:
        fault.remove()
    wait_for(lambda: store.status(info.run) == "complete", 60, "the run to resume and complete")
    assert run_status(store, info.run)["paused"] is None
    ids = farm_state.ids(info)
    assert sorted(ids) == sorted({r["id"] for r in farm_state.records(info)}) and len(ids) == len(WORDS)


def test_a_real_full_tmpfs_pauses_the_run_until_room_is_made(farm_state: FarmState, tmp_path) -> None:
    """The same on a real file system: a 512 kB tmpfs filled to the last byte (needs the right
    to mount; skipped without it)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        farm_state.out_root = disk
        info = farm_state.create_run()
        filler = disk / "filler"
        with filler.open("wb", buffering=0) as fh, pytest.raises(OSError, match="No space left"):
            while True:
                fh.write(b"\0" * 4096)
        client = farm_state.client
        push(client, [make_record(info.run, w, 0) for w in WORDS])
        farm_state.start(farm_state.collector())
        store = farm_state.store
        wait_for(lambda: store.meta(info.run, "paused")["paused"], 20, "the run to be paused")
        assert store.status(info.run) == "active"
        assert pending(client) == len(WORDS)
        filler.unlink()  # room again
        wait_for(lambda: store.status(info.run) == "complete", 60, "the run to resume and complete")
        assert store.meta(info.run, "paused")["paused"] is None
        ids = farm_state.ids(info)
        assert len(ids) == len(set(ids)) == len(WORDS)
    finally:
        farm_state.stop_all()
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
