"""In-process farm parts on the session's real Redis: a run, results on the stream, a
``Collector`` on a thread, and fault injection at any step of a batch.

No worker process and no model: records are built here, so a test of the collector's
failure paths takes well under a second. The fixtures that hand these out live in
tests/conftest.py (``farm_state``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from convfarm.config import RunConfig
from convfarm.messages import (
    COLLECTOR_GROUP,
    RESULTS_STREAM,
    ConversationRecord,
    ModelIdentity,
    TokenCounts,
    Turn,
    record_id,
)
from convfarm.rundir.layout import KINDS, shard_files
from convfarm.rundir.shards import read_records
from convfarm.runstate import RunInfo, RunStore
from workers.collector import Collector, CollectorService

WORDS = ["bridge", "leaf", "pocket", "bear", "room", "village"]
MODEL = ModelIdentity(name="smollm2-135m", file="smollm2.gguf", sha256="0" * 64, size=1)


def make_config(name: str = "inproc", words: list[str] | None = None, **fields: Any) -> RunConfig:
    data: dict[str, Any] = {
        "name": name, "model": "smollm2-135m", "words": words or WORDS,
        "prompt_lines": ['STUDENT: What does "{word}" mean?', "TEACHER:"],
        "near_dup_threshold": None,
    }
    return RunConfig.model_validate({**data, **fields})


def make_record(run: str, word: str, attempt: int, *, status: str = "accepted", reason: str | None = None,
                text: str | None = None) -> ConversationRecord:
    """A record the collector's re-check accepts: two turns, the word in them, unique text."""
    answer = text if text is not None else f"A {word} is thing number {attempt} of its kind, made in {run}."
    turns = [Turn(speaker="STUDENT", text=f'What does "{word}" mean?'), Turn(speaker="TEACHER", text=answer)]
    return ConversationRecord(
        id=record_id(run, word, attempt), run=run, word=word, attempt=attempt, status=status, reason=reason,
        turns=turns, raw=answer, model=MODEL, params={"temperature": 0.8}, seed=attempt, worker="test",
        tokens=TokenCounts(prompt=10, completion=20), generation_seconds=0.1,
    )


def push(client: redis.Redis, records: list[ConversationRecord]) -> list[bytes]:
    """Hand records to the collectors as a worker does (one stream entry each)."""
    return [client.xadd(RESULTS_STREAM, {"record": r.to_json()}) for r in records]


def shard_records(directory: Path, *, open_files: bool = True) -> list[dict]:
    """Every record a run directory holds: sealed shards of both kinds, and the open files."""
    found: list[dict] = []
    if not directory.exists():
        return found
    for kind in KINDS:
        for path in shard_files(directory, kind):
            found.extend(read_records(path))
    if open_files:
        for path in sorted(directory.glob(".open-*.jsonl")):
            found.extend(read_records(path))
    return found


def pending(client: redis.Redis) -> int:
    """Results read by some collector and not acknowledged yet."""
    try:
        return int(client.xpending(RESULTS_STREAM, COLLECTOR_GROUP)["pending"])
    except redis.ResponseError:  # no group yet
        return 0


def unread(client: redis.Redis) -> int:
    return int(client.xlen(RESULTS_STREAM))


class InjectedFault(redis.ConnectionError):
    """What the fault injectors raise: a Redis connection error, as a real outage gives."""


@dataclass
class Fault:
    """Makes ``obj.name`` raise once (``times``), before or after the real call runs."""

    obj: Any
    name: str
    when: str = "before"  # or "after": the call's effect happened, then the error
    times: int = 1
    exc: Callable[[], BaseException] = lambda: InjectedFault("injected")
    fired: int = 0
    original: Any = field(default=None, repr=False)

    def install(self) -> Fault:
        self.original = getattr(self.obj, self.name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.fired < self.times and self.when == "before":
                self.fired += 1
                raise self.exc()
            result = self.original(*args, **kwargs)
            if self.fired < self.times and self.when == "after":
                self.fired += 1
                raise self.exc()
            return result

        setattr(self.obj, self.name, wrapper)
        return self

    def remove(self) -> None:
        setattr(self.obj, self.name, self.original)


class FailingPipeline:
    """A pipeline whose ``execute`` raises once after the real one ran (the ack reached Redis, the reply did not)."""

    def __init__(self, client: redis.Redis, fault: Fault) -> None:
        self._pipe = client.pipeline()
        self._fault = fault

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def execute(self) -> Any:
        result = self._pipe.execute()
        if self._fault.fired < self._fault.times:
            self._fault.fired += 1
            raise self._fault.exc()
        return result


@dataclass
class FarmState:
    """A run on the session's Redis with collectors that run in this process."""

    url: str
    out_root: Path
    sent: list[tuple[str, str, int]] = field(default_factory=list)  # (run, word, attempt) the collectors enqueued
    services: list[CollectorService] = field(default_factory=list)

    @property
    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    @property
    def store(self) -> RunStore:
        return RunStore(self.client)

    def create_run(self, config: RunConfig | None = None, *, issue: bool = True) -> RunInfo:
        config = config or make_config()
        run = f"{config.name}-{config.config_hash()[:8]}"
        info = self.store.create(run, config, str(self.out_root))
        if issue:
            self.store.issue_shortfall(info)
        return info

    def run_dir(self, info: RunInfo) -> Path:
        return self.out_root / info.run

    def collector(self, name: str = "c1", **kwargs: Any) -> Collector:
        def send(info: RunInfo, word: str, attempt: int) -> None:
            self.sent.append((info.run, word, attempt))

        options: dict[str, Any] = {"block_ms": 50, "claim_idle_ms": 300, "out_root": self.out_root, **kwargs}
        return Collector(redis.Redis.from_url(self.url), name, send, **options)

    def start(self, collector: Collector) -> CollectorService:
        """The consumer loop on a thread, as ``--collector`` runs it (errors restart it after 50 ms)."""
        service = CollectorService(collector)
        service.restart_delay = 0.05
        service.thread.name = f"collector-{collector.name}"
        self.services.append(service)
        service.start()
        return service

    def stop_all(self) -> None:
        for service in self.services:
            service.stop()
        self.services.clear()

    def records(self, info: RunInfo) -> list[dict]:
        return shard_records(self.run_dir(info))

    def ids(self, info: RunInfo) -> list[str]:
        return [r["id"] for r in self.records(info)]


def all_ids_once(ids: list[str]) -> bool:
    return len(ids) == len(set(ids))
