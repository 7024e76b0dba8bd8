"""The commit's stages, in the order :func:`commit_stages` lists them (docs/design.md,
"Delivery guarantees"): committed check -> rules re-check -> judge threshold -> dedup ->
write -> mark -> seal -> outcomes. Each reads and writes the :class:`Batch` and counts what it did."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from convfarm.commit.batch import Batch, Checkpoints, Item, Stage, committed_status
from convfarm.commit.ledger import Ledger
from convfarm.config import RunConfig
from convfarm.coverage import mentioned_words
from convfarm.judge.distribution import on_topic_bar, score_counters
from convfarm.judge.scoring import RELEVANCE, off_topic
from convfarm.judging import explain_rejection, rule_context
from convfarm.messages import ConversationRecord
from convfarm.rules import evaluate
from convfarm.runstate import Fenced, RunInfo

OFF_TOPIC = "off_topic"  # a judge scored the record's relevance under the config's judge.min_relevance
SendTask = Callable[[RunInfo, str, int], None]


@dataclass(eq=False)
class CommittedCheck(Stage):
    """A record id already committed is a redelivery: not written, judged or counted again; one
    under its word's floor (a forever run counted and trimmed it long ago) is left out entirely."""

    name = "committed check"

    ledger: Ledger

    def run(self, batch: Batch) -> None:
        self.ledger.look_up(batch.run, batch.items)
        seen: set[str] = set()
        for item in batch.items:
            item.fresh = False  # a batch retried record by record is looked up again
            if item.below_floor:
                self.stats["below floor"] += 1
            elif item.elsewhere:
                self.stats["claimed elsewhere"] += 1
            elif item.committed is not None:
                batch.statuses[item.record.id] = item.committed
                self.stats["redelivered"] += 1
            elif item.record.id not in seen:
                seen.add(item.record.id)
                item.fresh = True
                self.stats["fresh"] += 1


@dataclass(eq=False)
class RulesRecheck(Stage):
    """A record judged with other rules than ours (another release, another config) is judged again;
    one stamped with our own :func:`~convfarm.judging.rules_stamp` would get the same verdict."""

    name = "rules re-check"

    detail: str | None = None  # added to the records it rejects (``producer filter`` names its config)

    def run(self, batch: Batch) -> None:
        config = batch.info.config
        for item in batch.to_recheck():
            self.stats["rechecked"] += 1
            record = item.record
            if reason := evaluate(rule_context(config, record.word), record.turns):
                why = explain_rejection(config, record.word, record.turns, reason)  # which rule, turn, pattern
                batch.reject(item, reason, detail=f"{why}; {self.detail}" if self.detail else why)
                self.stats[reason] += 1


@dataclass(eq=False)
class JudgeThreshold(Stage):
    """The worker decides ``off_topic`` itself; a record re-checked here (same condition as the
    rules re-check) whose relevance score is below the config's ``judge.min_relevance`` is
    rejected ``off_topic``, its score kept. A record with no score is left as it is: it was never
    judged (an older run); ``producer judge`` scores it."""

    name = "judge threshold"

    def run(self, batch: Batch) -> None:
        config = batch.info.config
        if config.judge is None or config.judge.min_relevance is None:
            return
        for item in batch.to_recheck():
            if RELEVANCE not in item.record.scores:
                continue
            if why := off_topic(config, item.record.scores):
                batch.reject(item, OFF_TOPIC, detail=why)
                self.stats[OFF_TOPIC] += 1


@dataclass(eq=False)
class Write(Stage):
    """Append the fresh records to the run's open shard files, fsync'd before anything is acknowledged."""

    name = "write"

    checkpoints: Checkpoints

    def run(self, batch: Batch) -> None:
        lines: dict[str, list[str]] = {"conversations": [], "rejected": []}
        for item in batch.fresh:
            record = item.record
            batch.statuses[record.id] = committed_status(record.status, record.reason)
            lines["conversations" if record.status == "accepted" else "rejected"].append(_line(item, batch.stamp))
        self.checkpoints.hit("before_write")
        batch.undo = batch.shards.append_kinds(lines)
        if batch.fresh:
            self.checkpoints.hit("after_write")
            self.stats["written"] += len(batch.fresh)


def _line(item: Item, stamp: str) -> str:
    """The record's shard line: the JSON its worker sent when nothing in it changed and the worker
    runs our rules (the same release: the same JSON ``to_json`` would write again, without
    serialising it a second time); else our own serialisation."""
    record, wire = item.record, item.wire
    if wire is not None and record.status == item.arrived_as and record.rules_version == stamp and b"\n" not in wire:
        try:
            return wire.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return record.to_json()


def commit_counters(records: list[ConversationRecord], statuses: dict[str, str],
                    config: RunConfig) -> tuple[dict[str, int], str | None]:
    """What committed records add to the run's counters, and the model identity of the first one."""
    first_model = next((r.model for r in records if r.model.sha256), None)
    counters = {  # depth and cost per accepted conversation (convfarm/depth.py), rejected attempts included
        "completion_tokens": sum(r.tokens.completion for r in records),
        "generation_ms": round(sum(r.generation_seconds for r in records) * 1000),
        # machine time, not latency: what the run cost under batching (docs/design.md)
        "machine_ms": round(sum(r.machine_time() for r in records) * 1000),
        "accepted_turns": sum(len(r.turns) for r in records if statuses[r.id] == "accepted"),
        # the relevance scores' distribution and on-topic yield (convfarm/judge/distribution.py)
        **score_counters(((r, statuses[r.id] == "accepted") for r in records), on_topic_bar(config)),
    }
    return counters, first_model.model_dump_json() if first_model else None


@dataclass(eq=False)
class Mark(Stage):
    """The fresh ids are on disk: mark them committed with what they add to the run's counters."""

    name = "mark"

    ledger: Ledger

    def run(self, batch: Batch) -> None:
        fresh = [item.record for item in batch.fresh]
        if not fresh:
            return
        statuses = {r.id: batch.statuses[r.id] for r in fresh}
        counters, model_identity = commit_counters(fresh, statuses, batch.info.config)
        try:
            self.ledger.mark_committed(batch.run, statuses, counters=counters, model_identity=model_identity,
                                       accepted=sum(r.status == "accepted" for r in fresh))
        except Fenced:  # another collector took our results over and writes them: ours must go
            batch.shards.roll_back(batch.undo)
            self.stats["rolled back"] += len(fresh)
            raise
        self.stats["marked"] += len(fresh)


@dataclass(eq=False)
class Seal(Stage):
    """Seal the shards this batch filled (a shard appears under its final name only when complete)."""

    name = "seal"

    checkpoints: Checkpoints

    def run(self, batch: Batch) -> None:
        batch.sealed = batch.shards.seal_full()
        if batch.sealed:
            self.checkpoints.hit("after_rename")
            self.stats["sealed"] += len(batch.sealed)


@dataclass(eq=False)
class Outcomes(Stage):
    """Count each attempt's outcome (mentions first, under ``skip_covered``) and send the retries
    the outcome script decides. An attempt's outcome is the last thing recorded for it, so a
    forever run may trim all of its entries once it is counted (RunStore.record_outcomes)."""

    name = "outcomes"

    ledger: Ledger
    send_task: SendTask | None = None

    def run(self, batch: Batch) -> None:
        info = batch.info
        items = [item for item in batch.items if not item.below_floor and not item.elsewhere]
        verdicts = [batch.statuses[item.record.id].partition(":") for item in items]
        done = self.ledger.words_done(batch.run) if len(items) < len(batch.items) else 0
        if info.config.skip_covered:
            for item, (status, _, _) in zip(items, verdicts, strict=True):
                if status == "accepted" and (mentioned := mentioned_words(info.config, item.record)):
                    done = max(done, self.ledger.cover(info, item.record.id, mentioned))
        counted = [(i.record.word, i.record.attempt, status, reason or None)
                   for i, (status, _, reason) in zip(items, verdicts, strict=True)]
        outcomes = self.ledger.record_outcomes(info, counted, [i.record.id for i in items]) if items else []
        for item, outcome in zip(items, outcomes, strict=True):
            done = max(done, outcome.words_done)
            if outcome.retry_attempt is not None and self.send_task is not None:
                self.send_task(info, item.record.word, outcome.retry_attempt)
                self.stats["retries sent"] += 1
        batch.words_done = done
        self.stats["counted"] += len(items)


def commit_stages(ledger: Ledger, checkpoints: Checkpoints, *, dedup: Stage | None = None,
                  send_task: SendTask | None = None, recheck_detail: str | None = None) -> list[Stage]:
    """THE order of a commit, for collectors and ``producer filter`` alike."""
    stages: list[Stage] = [CommittedCheck(ledger), RulesRecheck(recheck_detail), JudgeThreshold()]
    if dedup is not None:
        stages.append(dedup)
    stages += [Write(checkpoints), Mark(ledger), Seal(checkpoints), Outcomes(ledger, send_task)]
    return stages

