"""Expand a config into generation tasks — only the ones still missing.

The run id is derived from the config (``<name>-<hash>``), and the run's per-word counters
live in Redis, so enqueueing the same config again sends only the shortfall: nothing
for a finished run, the missing attempts for a half-finished one.

Forever mode (``--forever``, the seed's ``run.sh``) marks the run so that the collector,
instead of finishing it, raises the per-word target by ``per_word`` each time every word
met it, until ``producer cancel``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

import redis
from celery import Celery

from convfarm.config import RunConfig
from convfarm.messages import queue_for_model
from convfarm.runstate import RunInfo, RunStore, run_id_for
from producer.publish import TaskPublisher


@dataclass
class EnqueuePlan:
    run: str
    queue: str
    tasks: list[tuple[str, int]] = field(default_factory=list)  # (word, attempt)

    @property
    def words(self) -> int:
        return len({word for word, _ in self.tasks})


def plan_fresh(config: RunConfig, queue: str | None = None) -> EnqueuePlan:
    """What a new run would enqueue (``--dry-run``: no Redis needed)."""
    plan = EnqueuePlan(run=run_id_for(config), queue=queue or queue_for_model(config.model))
    plan.tasks = [(word, attempt) for word in config.words for attempt in range(config.per_word)]
    return plan


@dataclass
class DryRun:
    """What a real ``enqueue`` would do now, and what it would cost (``--dry-run``)."""

    run: str
    queue: str
    state: str  # "new", or the run's status in Redis
    tasks: int
    words: int
    words_done: int = 0
    total_words: int = 0
    tokens_per_task: float | None = None  # measured on this model's workers; None: not measured
    tokens_per_second: float | None = None  # per worker, machine time (docs/design.md)
    measured_tasks: int = 0


def dry_run(config: RunConfig, client: redis.Redis | None, queue: str | None = None) -> DryRun:
    """The plan against the run's state in Redis (read only); ``client=None``: Redis is not
    reachable, so the plan is a new run's. The estimate uses the figures this model's workers
    reported in earlier runs (``producer status``'s worker rows), where there are any."""
    fresh = plan_fresh(config, queue)
    info = RunStore(client).get(fresh.run) if client is not None else None
    if info is None:
        plan = DryRun(fresh.run, fresh.queue, "new" if client is not None else "unknown", len(fresh.tasks),
                      fresh.words, total_words=len(config.words))
    else:
        store = RunStore(client)
        need = store.shortfall(info)
        plan = DryRun(info.run, info.queue, info.status, sum(need.values()), len(need), store.words_done(info.run),
                      info.total_words)
    if client is not None:
        model_file = _model_file(config.model)
        tasks = tokens = 0
        seconds = 0.0
        for figures in RunStore(client).workers.all().values():
            if figures.get("model") == config.model or (model_file and figures.get("model_file") == model_file):
                tasks += int(figures.get("tasks", 0) or 0)
                tokens += int(figures.get("completion_tokens", 0) or 0)
                seconds += float(figures.get("generation_seconds", 0) or 0)
        if tasks:
            plan.tokens_per_task, plan.measured_tasks = tokens / tasks, tasks
            plan.tokens_per_second = tokens / seconds if seconds else None
    return plan


def _model_file(model: str) -> str | None:
    return model.rsplit("/", 1)[-1].rsplit(":", 1)[-1] if model.lower().endswith(".gguf") else None


def send(celery: Celery, info: RunInfo, tasks: list[tuple[str, int]]) -> None:
    """One Celery task per (word, attempt), published in bulk (producer/publish.py)."""
    TaskPublisher(celery, info.queue).publish(info.run, tasks)


def enqueue(config: RunConfig, *, client: redis.Redis, celery: Celery, out_dir: Path | str | None = None,
            queue: str | None = None, forever: bool = False) -> tuple[RunInfo, EnqueuePlan]:
    store = RunStore(client)
    info = store.create(run_id_for(config), config, str(out_dir or ""), queue)
    if info.status != "active":
        store.keep_run(info.run)  # a finished run's keys expire (retention); resumed, it must keep them
    if forever or info.status == "cancelled":
        store.set_forever(info.run, forever)  # a cancelled run comes back in the mode asked for now
    if info.status in ("cancelled", "failed"):
        store.set_status(info.run, "active")  # resumed; a failed run's attempts are issued again as their leases expire
    info = store.get(info.run) or info
    if info.forever and info.status == "complete":
        store.set_status(info.run, "active")  # a finished run turned forever: its next round starts
        info = store.get(info.run) or info
    if info.forever and store.words_done(info.run) >= info.total_words:
        store.advance_round(info, info.target)
        info = store.get(info.run) or info
    plan = EnqueuePlan(run=info.run, queue=info.queue)
    plan.tasks = store.issue_shortfall(info)
    if plan.tasks and info.status == "complete":
        store.set_status(info.run, "active")  # before sending: the collector retries only for active runs
    send(celery, info, plan.tasks)
    return store.get(info.run) or info, plan


@dataclass(frozen=True)
class OutputPlace:
    """Where a collector wrote a run (the run's state says so), and whether this machine can see it."""

    host: str
    path: Path
    visible: bool  # this machine is that host, or the path exists here (a shared file system)


def output_place(store: RunStore, run: str) -> OutputPlace | None:
    """The run's output directory as its collector recorded it, or None before any collector wrote."""
    recorded = store.output_location(run)
    if recorded is None:
        return None
    host, path = recorded[0], Path(recorded[1])
    return OutputPlace(host, path, host == socket.gethostname() or path.exists())


def missing_output(store: RunStore, info: RunInfo) -> OutputPlace | None:
    """The resume trap: a complete run whose output directory is gone. Re-enqueueing it sends
    nothing (Redis says every word is done), so the caller must say so. Only where the
    collector's directory can be seen from here: the producer's own ``runs/`` is not the
    collector's (a farm's collector writes on its host)."""
    if info.status != "complete":
        return None
    place = output_place(store, info.run)
    if place is None or not place.visible:
        return None
    return None if (place.path / "manifest.json").is_file() else place
