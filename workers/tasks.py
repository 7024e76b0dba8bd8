"""The generation task: ``convfarm.generate(run, word, attempt)``.

The task reads the run's config from Redis (cached per process), generates with the
resident model, and appends the resulting record to the results stream, where the
collector picks it up. It returns nothing: results never pile up in a result backend.

Delivery is at-least-once; a redelivered task produces the same record id (and, with the
same seed, the same text), so the collector writes it once.

Leases (docs/design.md, "Delivery guarantees"): the attempt's lease is extended when the task
starts and by a small thread every third of the lease while it generates. Redis commands
are retried with backoff for a few minutes (a Redis restart is ridden out, not turned into
an acknowledged failure); if the task still ends without publishing, its lease expires and a
collector issues the attempt again.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from convfarm.broker import redis_client
from convfarm.engine import GenerationOutcome, GenerationRequest, generation_params, model_lease
from convfarm.judge.scoring import judged_by_generator
from convfarm.judging import rules_stamp
from convfarm.messages import (
    GENERATE_TASK,
    JUDGE_TASK,
    RESULTS_STREAM,
    ConversationRecord,
    Message,
    ModelIdentity,
    TokenCounts,
    judge_queue_for_model,
    record_id,
    task_seed,
)
from convfarm.rules import training_messages
from convfarm.runstate import RunInfo, RunStore, StartVerdict, dead_letter
from convfarm.runstate.processes import WorkerTally
from convfarm.settings import get_settings
from workers.app import app
from workers.failures import GENERATION_FAILED, failure_record
from workers.testhooks import TASK_CHECKPOINTS, install_test_hooks

log = logging.getLogger(__name__)

__all__ = ["GENERATION_FAILED", "generate"]
REDIS_RETRY_SECONDS = 180.0  # how long a task rides out an unreachable Redis before it gives up
install_test_hooks(TASK_CHECKPOINTS, "worker")  # tests only: nothing happens unless CONVFARM_TEST_HOOKS is set


@lru_cache(maxsize=1)
def _redis() -> redis.Redis:
    return redis_client(retry_seconds=REDIS_RETRY_SECONDS)


@lru_cache(maxsize=1)
def _store() -> RunStore:
    return RunStore(_redis())


@lru_cache(maxsize=64)
def _run_info(run: str) -> RunInfo | None:
    return _store().get(run)


def build_record(info: RunInfo, outcome: GenerationOutcome, attempt: int, worker: str,
                 model: ModelIdentity) -> ConversationRecord:
    request = outcome.request
    return ConversationRecord(
        id=record_id(info.run, request.word, attempt),
        run=info.run,
        word=request.word,
        attempt=attempt,
        status="rejected" if outcome.reason else "accepted",
        reason=outcome.reason,
        detail=outcome.detail,
        rules_version=rules_stamp(info.config),
        turns=outcome.turns,
        messages=[Message(**m) for m in training_messages(outcome.turns)],  # ends on the assistant
        raw=outcome.raw,
        ended_by=outcome.ended_by,
        model=model,
        params={**generation_params(info.config), "structure": outcome.structure},  # the structure used
        seed=request.seed,
        worker=worker,
        tokens=TokenCounts(prompt=outcome.prompt_tokens, completion=outcome.completion_tokens),
        generation_seconds=round(outcome.seconds, 4),
        scores=outcome.scores,  # the relevance judge's, when this worker scored it (docs/design.md "Relevance judge")
        judge=outcome.judge,
        machine_seconds=round(outcome.machine_seconds, 4),
    )


_TALLY = WorkerTally()


def publish(record: ConversationRecord) -> None:
    """Append the record to the results stream; this process's worker figures, when due, go in the
    same round trip (a pipeline, not a transaction: the figures are not delivery state)."""
    pipe = _redis().pipeline(transaction=False)
    pipe.xadd(RESULTS_STREAM, {"record": record.to_json()})
    _TALLY.write(pipe)
    pipe.execute()


def worker_name(task: Task) -> str:
    return task.request.hostname or socket.gethostname()


def report_worker(record: ConversationRecord) -> None:
    """Per-worker figures (model, tasks done, tokens, seconds) for ``producer status``: summed here,
    written with a later :func:`publish` (or by the flusher thread when the worker goes idle)."""
    _TALLY.add(record.worker, model=record.model.name, model_file=record.model.file,
               completion_tokens=record.tokens.completion, seconds=record.machine_time())
    _start_flusher()


@lru_cache(maxsize=1)
def _start_flusher() -> None:
    """A daemon thread that writes figures a worker gone idle still holds (once per process)."""
    def flush() -> None:
        while True:
            time.sleep(_TALLY.every)
            try:
                pipe = _redis().pipeline(transaction=False)
                if _TALLY.write(pipe):
                    pipe.execute()
            except redis.RedisError as exc:  # figures only: the next write carries on
                log.warning("convfarm: could not write worker figures: %s", exc)

    threading.Thread(target=flush, name="convfarm-figures", daemon=True).start()


def task_summary(record: ConversationRecord) -> str:
    """The task's return value: ignored by the backend, but shown by Flower as the task's result."""
    rate = record.tokens.completion / record.generation_seconds if record.generation_seconds else 0.0  # as it streamed
    # the worker's verdict is not the final one: the collector may still drop it (a duplicate)
    verdict = "passed the rules" if record.status == "accepted" else f"rejected ({record.reason})"
    return (f"sent to the collector, {verdict}: {record.tokens.completion} tokens, {rate:.0f} tok/s "
            f"on {record.model.file}")


@app.task(name=GENERATE_TASK, bind=True, ignore_result=True)
def generate(self: Task, run: str, word: str, attempt: int) -> str | None:
    info = _run_info(run)
    if info is None:
        log.error("convfarm: unknown run %s (task %s dropped)", run, self.request.id)
        return None
    # One script: the run's status, the word covered, the outcome counted, one more delivery
    # (counted outside the message: a prompt that kills the worker process is redelivered
    # forever by reject_on_worker_lost; after max_deliveries it is given up), and the lease
    # extended, the attempt shown as running (convfarm/runstate/task_start.lua).
    start = _store().start_task(info, word, attempt, worker=worker_name(self),
                                max_deliveries=get_settings().max_deliveries)
    if start.verdict is StartVerdict.DROP:
        # counted as dropped (not in flight, no budget spent): a later enqueue re-issues it
        _store().record_outcome(info, word, attempt, "dropped", None)
        return f"dropped: {start.why}"
    if start.verdict is StartVerdict.DUPLICATE:  # a redelivered or re-issued copy (or counted and trimmed: a forever run)
        return "duplicate: this attempt's outcome is counted already"
    deliveries = start.deliveries
    if start.verdict is StartVerdict.GIVE_UP:
        _publish_failure(info, word, attempt, self, f"gave up after {deliveries - 1} deliveries")
        return None
    TASK_CHECKPOINTS.hit("before_generate", word)
    request = GenerationRequest(config=info.config, word=word, seed=task_seed(info.config.seed, run, word, attempt))
    try:
        # How tasks reach the batch. A batched worker runs ``-P threads -c N``
        # (CONVFARM_BATCH_SIZE=N): each task thread hands its one request to the process's
        # engine and blocks on its own outcome, while the engine's thread decodes the N
        # requests together. Each message stays an ordinary Celery task: acked late, one at a
        # time, only after its own record is published; a worker killed mid-batch leaves its N
        # messages unacked in Redis, which hands them out again (same run/word/attempt: same
        # seed, same record id), and the attempts' leases bring them back if a message is lost.
        # Why not "one task takes N messages" (prefetch N and a consumer of our own): acks,
        # retries, time limits, dead letters and Flower's view all stay per conversation with
        # threads, and nothing in Celery changes. The cost: the model lives in the worker
        # process itself (no prefork child), so a killed worker comes back through the
        # visibility timeout rather than reject_on_worker_lost, and the threads pool has no time
        # limits: the engine enforces the soft limit per request.
        with _lease_kept(run, word, attempt), model_lease(info.config) as model:
            outcome = next(model.generate([request], time_limit=get_settings().soft_time_limit))
            identity = model.identity
    except (SoftTimeLimitExceeded, TimeoutError):  # TimeoutError: the engine's own soft limit
        _publish_failure(info, word, attempt, self, "soft time limit exceeded")
        return None
    except Exception as exc:
        if deliveries < get_settings().max_deliveries:
            raise self.retry(exc=exc, countdown=2 ** deliveries) from exc
        _publish_failure(info, word, attempt, self, f"{type(exc).__name__}: {exc}")
        return None
    record = build_record(info, outcome, attempt, worker_name(self), identity)
    report_worker(record)  # before publishing: the figures may travel with the record
    if record.status == "accepted" and not judged_by_generator(info.config):
        send_to_judge(info, record)  # the judge task publishes it, scored (workers/judge_task.py)
    else:
        publish(record)
    return task_summary(record)


def send_to_judge(info: RunInfo, record: ConversationRecord) -> None:
    """Hand an accepted conversation to the run's judge model's queue (docs/design.md "Relevance judge")."""
    assert info.config.judge is not None and info.config.judge.model is not None
    app.send_task(JUDGE_TASK, args=[record.to_json()], task_id=f"judge:{record.id}",
                  queue=judge_queue_for_model(info.config.judge.model))


@contextmanager
def _lease_kept(run: str, word: str, attempt: int) -> Iterator[None]:
    """Extend the attempt's lease every third of its length while the body runs (a thread:
    the generation holds this process, and llama.cpp releases the GIL while it computes)."""
    lease = get_settings().lease
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(lease / 3):
            try:
                _store().leases.extend(run, word, attempt)
            except redis.RedisError as exc:  # the next beat tries again; the lease has slack
                log.warning("convfarm: could not extend the lease of %s/%s#%d: %s", run, word, attempt, exc)

    thread = threading.Thread(target=beat, name="convfarm-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def _publish_failure(info: RunInfo, word: str, attempt: int, task: Task, error: str) -> None:
    """Dead-letter the attempt and account for it as a rejected record, so the run still completes.

    ``producer dlq RUN`` lists the dead letters; ``--retry`` sends them again.
    """
    log.error("convfarm: %s/%s attempt %d failed: %s", info.run, word, attempt, error)
    _store().dead_letters.add(info.run, dead_letter(word, attempt, error, worker_name(task)))
    publish(failure_record(info, word, attempt, worker_name(task), error))
