"""Every Redis key name of convfarm, spelled once (docs/design.md, "Run state").

A run's keys all start with ``convfarm:run:<run>`` (so retention and purge find them with one
SCAN); a few keys are shared by every run: the runs index, the lease set, the collectors'
heartbeats and the per-worker figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

RUNS_INDEX = "convfarm:runs"  # run -> created_at: ``producer runs``
# Every issued attempt with no outcome yet, scored by its lease deadline (Redis clock, epoch
# seconds); one set for all runs, so one sweep finds the expired ones (docs/design.md,
# "Delivery guarantees"). Members: run, word, attempt joined by U+001F.
LEASES = "convfarm:leases"
COLLECTORS = "convfarm:collectors"  # collector name -> last time its loop turned (epoch seconds)
PRESENCE_PREFIX = "convfarm:presence:"  # + process name (celery -n): its presence row (presence.py)
# collector name -> its fencing token: raised by a collector that takes over its pending results,
# so that its claims on record ids are void and its commit is refused (docs/design.md, "Delivery guarantees")
COLLECTOR_FENCES = "convfarm:collector_fences"
# dead letters of results the collectors could not route to a run (an unknown or unsafe run id,
# an entry that is not a record), capped like a run's
UNROUTABLE_DLQ = "convfarm:dlq:unroutable"
WORKER_PREFIX = "convfarm:worker:"  # + worker name: its figures (model, tasks, tokens)
SEP = "\x1f"  # joins run, word and attempt in fields and members (none of them holds a control character)


def run_key(run: str, part: str = "") -> str:
    return f"convfarm:run:{run}" + (f":{part}" if part else "")


def attempt_field(word: str, attempt: int) -> str:
    """The hash field of one attempt (``running``, ``deliveries``, ``outcomes``): word, unit separator, attempt."""
    return f"{word}{SEP}{attempt}"


def _family(name: str) -> Callable[[RunKeys, object], str]:
    """Keys of one family, one per member (a shard kind, a rate bucket, a dedup scheme, a retry)."""
    def key(self: RunKeys, member: object) -> str:
        return run_key(self.run, f"{name}:{member}")
    return key


def _part(name: str) -> property:
    return property(lambda self: run_key(self.run, name), doc=f"``convfarm:run:<run>:{name}``")


@dataclass(frozen=True)
class RunKeys:
    """The keys of one run, by name (what each holds: docs/design.md, "Run state")."""

    run: str

    @property
    def meta(self) -> str:
        """The run's meta hash: config, status, target, round, forever, out_dir, queue, ..."""
        return run_key(self.run)

    # per word
    accepted = _part("accepted")
    issued = _part("issued")
    reported = _part("reported")
    dropped = _part("dropped")
    covered = _part("covered")
    floor = _part("floor")
    done = _part("done")  # set of words
    short = _part("short")  # set of words
    # per attempt (attempt_field)
    outcomes = _part("outcomes")
    retries = _part("retries")
    running = _part("running")
    deliveries = _part("deliveries")
    # per record
    committed = _part("committed")
    covered_records = _part("covered_records")
    # the run's counters (RunCounts)
    counts = _part("counts")
    # dead letters (DeadLetterRegistry)
    dlq = _part("dlq")
    dlq_retried = _part("dlq:retried")
    dlq_words = _part("dlq:words")  # set: the words with a dead letter (status counts them)
    # shards (ShardIndex)
    shards = _part("shards")
    # dedup (workers/dedup.py)
    content = _part("content")
    kept = _part("kept")

    # families (the member is the argument)
    dlq_receipt = _family("dlq:retrying")  # a ``dlq --retry`` holds the letters it took (time_ns nonce)
    shard_seq = _family("shard_seq")  # per shard kind
    rate = _family("rate")  # per RATE_BUCKET seconds
    minhash = _family("minhash")  # per dedup scheme
    lsh = _family("lsh")  # per dedup scheme
