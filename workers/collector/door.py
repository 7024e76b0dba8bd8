"""The collector's door: every field of a stream entry that a script, a key or a path uses is
checked before the entry reaches a run (docs/design.md, "Delivery guarantees", "Isolation").

A result that fails is *parked*: dead-lettered with the reason (in its run's list when the run
is known, else in the unroutable list) and acknowledged; it is never written, never counted and
never retried by the collector. A garbled entry must not stall the farm, reach a file outside the
output root, or complete a run with a word the run never asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from convfarm.commit import Item
from convfarm.messages import ConversationRecord, record_id

# a run id is `<name>-<8 hex>` with the name checked at enqueue (convfarm/config.py): these
# characters only, so it is one path component, never `..`, and no key separator
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}-[0-9a-f]{8}$")
MAX_ATTEMPT = 2**31 - 1  # the attempt counters are Lua numbers and hash fields


@dataclass
class Refused:
    """An entry the door did not let in, and why."""

    reason: str
    run: str | None = None  # the run it names, when that is a run id at all
    word: str = ""
    attempt: int = -1
    record: str | None = None


def record_problem(record: ConversationRecord) -> str | None:
    """What makes this record unusable as it is, whatever run it names (None: nothing)."""
    if not RUN_ID.match(record.run):
        return f"run id {record.run[:120]!r} is not a run id"
    if not 0 <= record.attempt <= MAX_ATTEMPT:
        return f"attempt {record.attempt} is out of range (0 to {MAX_ATTEMPT})"
    if record.id != record_id(record.run, record.word, record.attempt):
        return "record id does not match its run, word and attempt"
    return None


def refuse(item: Item, reason: str) -> Refused:
    record = item.record
    run = record.run if RUN_ID.match(record.run) else None
    return Refused(reason, run, record.word, record.attempt, record.id)
