"""A batch of one run's records on its way through the stages, and what a stage is."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from convfarm.messages import ConversationRecord
from convfarm.runstate import RunInfo

if TYPE_CHECKING:
    from convfarm.rundir.shards import ShardSet


def committed_status(status: str, reason: str | None) -> str:
    """How a committed record is remembered: ``accepted`` or ``rejected:<reason>``."""
    return "accepted" if status == "accepted" else f"rejected:{reason or 'unknown'}"


@dataclass
class Item:
    """One record of the batch and what the stages learn about it."""

    record: ConversationRecord
    wire: bytes | None = None  # the JSON its worker sent (None: built here, e.g. a parked record)
    arrived_as: str = ""  # the status it arrived with
    committed: str | None = None  # the status it was written with before (a redelivery)
    below_floor: bool = False  # forever mode: counted long ago, entries trimmed: nothing to do at all
    fresh: bool = False  # written by this batch (the first copy of an id not committed before)
    elsewhere: bool = False  # another live collector claimed its id: that one writes and counts it

    @classmethod
    def arrived(cls, record: ConversationRecord, wire: bytes | None = None) -> Item:
        return cls(record, wire, record.status)


@dataclass
class Batch:
    """One run's records of one read, in order; the stages fill in the rest."""

    info: RunInfo
    stamp: str  # rules_stamp of the run's config: a record stamped otherwise is re-checked
    shards: ShardSet
    items: list[Item]
    statuses: dict[str, str] = field(default_factory=dict)  # record id -> its committed status
    sealed: list[str] = field(default_factory=list)  # shards this batch filled and sealed
    undo: dict[str, tuple[int, int]] = field(default_factory=dict)  # the open files before the write (roll_back)
    words_done: int = 0

    @property
    def run(self) -> str:
        return self.info.run

    @property
    def fresh(self) -> list[Item]:
        return [item for item in self.items if item.fresh]

    def to_recheck(self) -> list[Item]:
        """Fresh accepted records judged by other rules than ours (another release or config)."""
        return [i for i in self.fresh if i.record.status == "accepted" and i.record.rules_version != self.stamp]

    def reject(self, item: Item, reason: str, **fields: object) -> None:
        item.record.status, item.record.reason = "rejected", reason
        for name, value in fields.items():
            setattr(item.record, name, value)


class Stage:
    """One step of the commit: a short class with one :meth:`run` and its own counters."""

    name = "stage"

    @cached_property
    def stats(self) -> Counter[str]:
        return Counter()

    def run(self, batch: Batch) -> None:
        raise NotImplementedError


class Checkpoints:
    """Named points of the commit (``before_write``, ``after_write``, ``after_rename``,
    ``before_ack``; ``before_seal_rename``: a compressed seal written, not yet renamed to its
    final name) that observers may watch. Production registers none; the chaos tests register
    one that SIGKILLs (or stops) the process at a named point (tests/collector_hooks.py)."""

    POINTS = ("before_write", "after_write", "after_rename", "before_ack", "before_seal_rename")

    def __init__(self) -> None:
        self.observers: list[Callable[[str], None]] = []

    def hit(self, point: str) -> None:
        for observer in self.observers:
            observer(point)


def run_stages(stages: list[Stage], batch: Batch) -> Batch:
    for stage in stages:
        stage.run(batch)
    return batch
