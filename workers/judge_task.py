"""The judge task: ``convfarm.judge(record)`` on ``convfarm.judge.<judge model>``.

When a config names a judge model other than its generator (docs/design.md "Relevance
judge"), the generation task does not publish a conversation it accepted: it sends it here, to
the judge model's queue. A judge worker (``celery -A workers worker -Q convfarm.judge.<slug>``)
scores it with the model it holds, applies ``judge.min_relevance``, and appends the record to
the results stream, where the collector takes it as from any worker.

Delivery is the generation task's: acks late (the message goes back if the judge worker dies),
the attempt's lease extended while it scores (a lost message comes back as a new attempt
issue), and the record keeps its id, so the collector writes it once whichever copy arrives
first — a re-scored copy included.
"""

from __future__ import annotations

import logging

from celery import Task

from convfarm.config import RunConfig
from convfarm.engine import model_lease
from convfarm.judge import method_for
from convfarm.judge.scoring import RELEVANCE, off_topic
from convfarm.messages import JUDGE_TASK, ConversationRecord, JudgeIdentity
from convfarm.rules import OFF_TOPIC
from convfarm.runstate import RunInfo
from convfarm.settings import get_settings
from workers.app import app
from workers.tasks import _lease_kept, _run_info, _store, publish, report_worker, worker_name

log = logging.getLogger(__name__)


def judge_config(info: RunInfo) -> RunConfig:
    """The run's config with its judge model in place of the generator (the resident model to hold)."""
    assert info.config.judge is not None and info.config.judge.model is not None
    return info.config.model_copy(update={"model": info.config.judge.model})


@app.task(name=JUDGE_TASK, bind=True, ignore_result=True)
def judge(self: Task, record_json: str) -> str | None:
    record = ConversationRecord.model_validate_json(record_json)
    info = _run_info(record.run)
    if info is None:
        log.error("convfarm: unknown run %s (judge task %s dropped)", record.run, self.request.id)
        return None
    if _store().has_outcome(record.run, record.word, record.attempt):
        return "duplicate: this attempt's outcome is counted already"
    _store().leases.extend(record.run, record.word, record.attempt, worker=worker_name(self))
    method = method_for(info.config)
    try:
        with _lease_kept(record.run, record.word, record.attempt), model_lease(judge_config(info)) as model:
            record.scores = {**record.scores, RELEVANCE: model.relevance(method, topic=info.config.topic,
                                                                      word=record.word, turns=record.turns)}
            record.judge = JudgeIdentity(model=model.identity, method=method.name, version=method.version)
    except ValueError as exc:  # a transcript plus the judge's question longer than the context: unscored
        log.warning("convfarm: could not score %s: %s", record.id, exc)
    except Exception as exc:
        if self.request.retries < get_settings().max_deliveries:
            raise self.retry(exc=exc, countdown=2 ** (self.request.retries + 1)) from exc
        raise
    if record.status == "accepted" and (why := off_topic(info.config, record.scores)):
        record.status, record.reason, record.detail = "rejected", OFF_TOPIC, why
    report_worker(record)  # before publishing: the figures may travel with the record
    publish(record)
    verdict = record.status if record.status == "accepted" else f"rejected ({record.reason})"
    return f"{verdict}: relevance {record.scores.get(RELEVANCE, float('nan')):.3f}"
