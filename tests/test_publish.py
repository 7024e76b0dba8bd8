"""Enqueue publishes its tasks in bulk (producer/publish.py): what lands in Redis must be what
Celery's own ``send_task`` writes, task by task, and a real worker must run it.

* each message (headers, properties, body) equals ``send_task``'s for the same task, bar kombu's
  random delivery tag; each task-sent event, as Celery's event receiver (what Flower uses) hands
  it over, equals ``send_task``'s bar its clock and timestamp (it arrives in a ``task.multi``);
* a real ``celery -A workers worker`` takes every bulk-published task, runs it with its own
  (run, word, attempt), and reports it received and succeeded in events.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from convfarm.broker import celery_client
from convfarm.config import parse_config
from convfarm.messages import GENERATE_TASK, task_id
from convfarm.runstate import RunInfo, RunStore
from convfarm.settings import Settings
from producer.enqueue import enqueue
from producer.publish import TaskPublisher
from tests.conftest import farm_env, start_worker, wait_for

QUEUE = "convfarm.gen.smollm2-135m"
# quotes, backslashes, non-ASCII, a line separator, and words long enough for Celery to cut their repr
WORDS = ["leaf", "it's", 'say "hi"', "back\\slash", "naïve café", "line\u2028sep", "x" * 1000, "y" * 1017, "'" * 600]


@contextmanager
def events(url: str) -> Iterator[list[dict[str, Any]]]:
    """Every event Celery's event receiver (as Flower runs it) gets while the block runs."""
    app = celery_client(Settings(broker_url=url))
    seen: list[dict[str, Any]] = []
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": seen.append})
        thread = threading.Thread(target=receiver.capture, kwargs={"limit": None, "timeout": None, "wakeup": False},
                                  daemon=True)
        thread.start()
        time.sleep(1.0)  # subscribed: events are published, not queued
        try:
            yield seen
            time.sleep(1.0)
        finally:
            receiver.should_stop = True
            thread.join(10)


def queued(client: redis.Redis) -> list[dict[str, Any]]:
    """The queue's messages, oldest first, without kombu's random delivery tag."""
    messages = [json.loads(raw) for raw in reversed(client.lrange(QUEUE, 0, -1))]
    for message in messages:
        message["properties"].pop("delivery_tag")
    client.delete(QUEUE)
    return messages


@pytest.mark.fast
def test_bulk_messages_and_events_are_the_ones_send_task_writes(redis_url: str, rclient: redis.Redis) -> None:
    app = celery_client(Settings(broker_url=redis_url))
    run = "bulk-shape"
    tasks = [(word, attempt) for attempt, word in enumerate(WORDS)]
    with events(redis_url) as seen:
        for word, attempt in tasks:
            app.send_task(GENERATE_TASK, args=[run, word, attempt], task_id=task_id(run, word, attempt), queue=QUEUE)
        time.sleep(0.5)
        own = queued(rclient)
        own_events = list(seen)
        seen.clear()
        TaskPublisher(app, QUEUE).publish(run, tasks)
    bulk = queued(rclient)
    assert len(own) == len(bulk) == len(tasks)
    assert bulk == own
    assert [e["type"] for e in seen] == [e["type"] for e in own_events] == ["task-sent"] * len(tasks)
    varying = {"clock", "timestamp", "local_received"}
    assert [{k: v for k, v in e.items() if k not in varying} for e in seen] == \
        [{k: v for k, v in e.items() if k not in varying} for e in own_events]
    assert [e["uuid"] for e in seen] == [task_id(run, w, a) for w, a in tasks]


def test_a_worker_runs_every_bulk_published_task(redis_url: str, rclient: redis.Redis, tmp_path: Path) -> None:
    """A cancelled run's tasks are dropped by the worker without the model: each one must arrive,
    be run with its own args (the run counts one dropped outcome per attempt) and be acknowledged."""
    words = [f"term{i}" for i in range(60)]
    config, _ = parse_config({"name": "bulk-worker", "model": "smollm2-135m", "words": words, "per_word": 2,
                              "prompt_lines": ['STUDENT: What does "{word}" mean?', "TEACHER:"]})
    store = RunStore(rclient)
    with events(redis_url) as seen:
        info, plan = enqueue(config, client=rclient, celery=celery_client(Settings(broker_url=redis_url)))
        assert len(plan.tasks) == 120 and rclient.llen(info.queue) == 120
        store.set_status(info.run, "cancelled")  # the worker drops each attempt, counting it by its args
        # -E: task events on from the start, as Flower turns them on (they are off unless a monitor asks)
        worker = start_worker(farm_env(redis_url, tmp_path / "out"), tmp_path / "logs", "gen-bulk", extra=("-E",))
        try:
            wait_for(lambda: store.counts(info.run).dropped == 120, 120, "every task to be run", interval=0.5)
            wait_for(lambda: sum(e["type"] == "task-succeeded" for e in seen) == 120, 30, "the tasks' events")
        finally:
            worker.stop()
    assert rclient.llen(info.queue) == 0  # every message taken and acknowledged
    assert_each_attempt_once(rclient, info, words)
    ids = {task_id(info.run, w, a) for w in words for a in (0, 1)}
    for kind in ("task-sent", "task-received", "task-succeeded"):
        assert sorted(e["uuid"] for e in seen if e["type"] == kind) == sorted(ids), kind
    sent = {e["uuid"]: e for e in seen if e["type"] == "task-sent"}
    assert sent[task_id(info.run, "term7", 1)]["args"] == f"['{info.run}', 'term7', 1]"  # what Flower shows
    assert {e["result"] for e in seen if e["type"] == "task-succeeded"} == {"'dropped: run cancelled'"}


def assert_each_attempt_once(client: redis.Redis, info: RunInfo, words: list[str]) -> None:
    outcomes = client.hgetall(f"convfarm:run:{info.run}:outcomes")
    assert sorted(k.decode() for k in outcomes) == sorted(f"{w}\x1f{a}" for w in words for a in (0, 1))
