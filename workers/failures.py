"""The record of an attempt given up on: rejected ``generation_failed`` with the error as detail.

Published to the results stream like any record, so the collector writes it to a rejected
shard and counts it, and the run still completes. Built by the task (its delivery budget is
spent) and by the collector (a lease expired once too often).
"""

from __future__ import annotations

from convfarm.engine import generation_params
from convfarm.messages import ConversationRecord, ModelIdentity, TokenCounts, record_id, task_seed
from convfarm.runstate import RunInfo

GENERATION_FAILED = "generation_failed"


def failure_record(info: RunInfo, word: str, attempt: int, worker: str, error: str) -> ConversationRecord:
    return ConversationRecord(
        id=record_id(info.run, word, attempt),
        run=info.run,
        word=word,
        attempt=attempt,
        status="rejected",
        reason=GENERATION_FAILED,
        detail=error,
        model=ModelIdentity(name=info.config.model, file="", sha256="", size=0),
        params=generation_params(info.config),
        seed=task_seed(info.config.seed, info.run, word, attempt),
        worker=worker,
        tokens=TokenCounts(),
        generation_seconds=0.0,
    )
