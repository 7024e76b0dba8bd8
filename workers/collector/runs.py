"""The runs a collector has open: each run's shard writer and what the idle sealing needs."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convfarm.commit import commit_counters, committed_status
from convfarm.judging import rules_stamp
from convfarm.messages import ConversationRecord
from convfarm.rundir.manifest import claim_directory
from convfarm.rundir.shards import ShardSet
from convfarm.runstate import RunInfo, RunStore

log = logging.getLogger("workers.collector")


@dataclass
class RunHandle:
    info: RunInfo
    shards: ShardSet
    stamp: str = ""  # rules_stamp of the run's config: hashing a big config per batch cost ~1 ms
    last_write: float = field(default_factory=time.monotonic)
    first_open_write: float | None = None
    sealed_idle: bool = True

    @property
    def words(self) -> frozenset[str]:
        """The run's words, as its stored config names them (the door lets no other word in)."""
        return frozenset(self.info.config.words)

    def wrote(self) -> None:
        self.last_write = time.monotonic()
        self.first_open_write = self.first_open_write or self.last_write
        self.sealed_idle = False


class OpenRuns:
    """Run id -> :class:`RunHandle`, opened on a run's first result (recovering our open files)."""

    def __init__(self, store: RunStore, owner: str, out_root: Path, checkpoint: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.checkpoint = checkpoint
        self.owner = owner
        self.out_root = out_root
        self._handles: dict[str, RunHandle] = {}

    def __contains__(self, run: str) -> bool:
        return run in self._handles

    def __getitem__(self, run: str) -> RunHandle:
        return self._handles[run]

    def __iter__(self) -> Iterator[RunHandle]:
        return iter(list(self._handles.values()))

    def run_dir(self, info: RunInfo) -> Path:
        """``OUT/<run>`` on this collector's host: a relative ``--out`` is under CONVFARM_OUT_DIR
        (docs/design.md, "Run directory"), an absolute one is taken as it is; a relative one that
        leads outside CONVFARM_OUT_DIR, or a run id that is not one path component, is refused."""
        base = Path(self.out_root) / (info.out_dir or "")
        path = base / info.run
        if Path(info.run).name != info.run or info.run in ("", ".", ".."):
            raise ValueError(f"run id {info.run!r} is not a directory name")
        if not Path(info.out_dir or "").is_absolute() and \
                not path.resolve().is_relative_to(Path(self.out_root).resolve()):
            raise ValueError(f"the run's output directory {path} is outside the output root {self.out_root}")
        return path

    def handle(self, run: str) -> RunHandle | None:
        if run in self._handles:
            return self._handles[run]
        if not self.store.is_listed(run):  # a run id no enqueue created (docs/design.md, "Run state")
            return None
        info = self.store.get(run)
        if info is None:
            return None
        claim_directory(self.store, info, self.run_dir(info))  # never another incarnation's directory
        self.store.record_output(run, host=socket.gethostname(), path=str(self.run_dir(info).resolve()))
        shards = ShardSet(self.store.shard_index, run, self.run_dir(info), self.owner,
                          shard_size=info.config.shard_size, compression=info.config.compression,
                          checkpoint=self.checkpoint)
        recovered = shards.recover()
        if recovered:  # our open file survived a crash: those ids are written already
            self.mark_written(run, recovered)
        # a recovered open file is sealed when idle like any other (forget_all re-opens runs mid-way)
        self._handles[run] = handle = RunHandle(info, shards, rules_stamp(info.config), sealed_idle=not recovered)
        return handle

    def mark_written(self, run: str, records: list[dict[str, Any]], writer: str | None = None) -> None:
        """Records found in ``writer``'s open file (ours by default) are committed where nobody
        committed them yet and no live collector but the writer claimed them, except those under
        their word's floor: counted long ago in a forever run, their entries trimmed for good."""
        below = self.store.below_floor(run, [(r["word"], r["attempt"]) for r in records])
        statuses = {r["id"]: committed_status(r["status"], r.get("reason"))
                    for r, under in zip(records, below, strict=True) if not under}
        settled = self.store.settle_records(run, statuses, writer or self.owner)
        if settled and (info := self.store.get(run)) is not None:
            # their counters were never added (the writer died or stalled before its commit mark):
            # added now, once, with the ids that this call committed
            found = [ConversationRecord.model_validate(r) for r in records if r["id"] in settled]
            counters, model_identity = commit_counters(found, statuses, info.config)
            self.store.add_counters(run, counters, model_identity)

    def drop(self, run: str) -> None:
        self._handles.pop(run, None)

    def fail(self, run: str, reason: str) -> None:
        """The run can no longer progress here: ``failed`` with the reason (status, ``--wait``)."""
        log.error("convfarm collector: run %s failed: %s", run, reason)
        self.store.fail_run(run, reason)
        self.drop(run)

    def forget_all(self) -> None:
        """After a Redis error mid-batch the shard is the truth: records may be on disk (appended,
        fsync'd) without their ids in ``committed`` (the write failed, or a restarted Redis lost its
        last second). Re-opening a run re-reads our open file and marks its ids committed before
        any redelivered entry is judged, so none is appended twice (exactly-once output)."""
        self._handles.clear()
