"""Collector and enqueue throughput (target: both ≥ 5,000/s), on a real Redis.

* enqueue: ``producer.enqueue.enqueue`` for a config of N words (run state + one Celery
  message per word), words/s.
* collector: N realistic records (varied 4-turn conversations, 1 in 10 an exact copy, 1 in
  10 a near copy) put on the results stream, then the collector's own consumer loop
  (``Collector.read`` + ``Collector.process``: exact + near-duplicate dedup, shard writes with
  fsync, per-word bookkeeping, ack) drains it; records/s. The records carry the rules stamp of a
  worker running the collector's rules, so they are not re-checked (the usual case);
  ``--recheck`` also measures records from a worker of another rules version (re-checked).

Functions for other scripts: ``bench_enqueue(url, words)``, ``bench_collector(url, records, out,
stamped=True)``; ``prepare_collector`` + ``drain`` to profile the collector's loop alone.

A private Redis database (default 14) is flushed before and after; ``--embedded`` starts a private
``redis-server`` instead, with the settings ``producer run --embedded-redis`` uses. Usage::

    python benchmarks/pipeline_throughput.py [--records N] [--words N] [--recheck] [--redis URL | --embedded]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from convfarm.broker import celery_client  # noqa: E402
from convfarm.config import parse_config  # noqa: E402
from convfarm.judging import rules_stamp  # noqa: E402
from convfarm.messages import (  # noqa: E402
    RESULTS_STREAM,
    ConversationRecord,
    ModelIdentity,
    TokenCounts,
    Turn,
    record_id,
)
from convfarm.rules import roles_for  # noqa: E402
from convfarm.settings import Settings  # noqa: E402
from producer.enqueue import enqueue  # noqa: E402
from workers.collector import Collector  # noqa: E402

VOCAB = ("light wave energy force mass field charge heat motion speed river bridge leaf camera village room "
         "bear pocket promise garden engine mirror ladder market island candle planet tunnel button forest "
         "explains means shows because when which carries across under over through makes").split()


def config_for(words: list[str], name: str, per_word: int = 1) -> dict:
    return {"name": name, "model": "smollm2-135m", "words": words, "per_word": per_word,
            "prompt_lines": ['A conversation about "{word}"', 'STUDENT: What does "{word}" mean?', "TEACHER:"],
            "exclude": ["relig", "politic"], "max_attempts": 1}


def sentence(rng: random.Random, word: str) -> str:
    return f"{word} " + " ".join(rng.choice(VOCAB) for _ in range(rng.randint(12, 24))) + "."


def make_records(run: str, words: list[str], rng: random.Random, stamp: str | None = None) -> list[ConversationRecord]:
    """Two attempts per word; for 1 word in 10 the second is an exact copy, for 1 in 10 a near copy."""
    model = ModelIdentity(name="smollm2-135m", file="SmolLM2-135M-Instruct.Q4_1.gguf", sha256="0" * 64, size=1)
    records: list[ConversationRecord] = []
    for i, word in enumerate(words):
        first = [Turn(speaker="STUDENT", text=f'What does "{word}" mean?'), Turn(speaker="TEACHER", text=sentence(rng, word)),
                 Turn(speaker="STUDENT", text=sentence(rng, word)), Turn(speaker="TEACHER", text=sentence(rng, word))]
        if i % 10 == 5:
            second = list(first)
        elif i % 10 == 7:
            second = [*first[:-1], Turn(speaker="TEACHER", text=first[-1].text.replace(" ", " really ", 1))]
        else:
            second = [first[0], *(Turn(speaker=t.speaker, text=sentence(rng, word)) for t in first[1:])]
        for attempt, turns in enumerate((first, second)):
            records.append(ConversationRecord(
                id=record_id(run, word, attempt), run=run, word=word, attempt=attempt, status="accepted", turns=turns,
                messages=roles_for(turns), raw="\n".join(f"{t.speaker}: {t.text}" for t in turns), ended_by="eos",
                rules_version=stamp, model=model, params={"max_tokens": 256}, seed=i, worker="bench@host",
                tokens=TokenCounts(prompt=20, completion=90), generation_seconds=1.0))
    return records


def bench_enqueue(url: str, words: int) -> float:
    client = redis.Redis.from_url(url)
    config, _ = parse_config(config_for([f"term{i}" for i in range(words)], "enqueue-bench"))
    started = time.perf_counter()
    _, plan = enqueue(config, client=client, celery=celery_client(Settings(broker_url=url)))
    seconds = time.perf_counter() - started
    assert len(plan.tasks) == words
    return words / seconds


def prepare_collector(url: str, count: int, out: Path, *, stamped: bool = True) -> tuple[Collector, str]:
    """A run of ``count // 2`` words and ``count`` made-up results on the stream, not yet collected.

    ``stamped``: the records carry the rules stamp of a worker running the collector's rules
    (the usual case); without it the collector re-checks every one (a worker of another release).
    """
    client = redis.Redis.from_url(url)
    words = [f"term{i}" for i in range(count // 2)]
    config, _ = parse_config(config_for(words, "collector-bench", per_word=2))
    info, _ = enqueue(config, client=client, celery=celery_client(Settings(broker_url=url)), out_dir=out)
    client.delete(info.queue)  # no worker will run these: the collector gets made-up results instead
    records = make_records(info.run, words, random.Random(1), rules_stamp(config) if stamped else None)
    pipe = client.pipeline()
    for record in records:
        pipe.xadd(RESULTS_STREAM, {"record": record.to_json()})
    pipe.execute()
    collector = Collector(client, "bench-collector", lambda *_: None, out_root=out)
    collector.ensure_group()
    return collector, info.run


def drain(collector: Collector) -> float:
    """Seconds the collector's own loop takes to empty the stream."""
    started = time.perf_counter()
    while entries := collector.read(">", None):
        collector.process(entries)
    return time.perf_counter() - started


def bench_collector(url: str, count: int, out: Path, *, stamped: bool = True) -> tuple[float, dict[str, int]]:
    collector, run = prepare_collector(url, count, out, stamped=stamped)
    seconds = drain(collector)
    return count / seconds, collector.store.counts(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--words", type=int, default=20_000)
    parser.add_argument("--recheck", action="store_true", help="also measure records the collector re-checks")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--embedded", action="store_true",
                        help="start a private redis-server as `producer run --embedded-redis` does "
                             "(AOF, appendfsync everysec) instead of using --redis")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        server = None
        if args.embedded:
            from producer.local import EmbeddedRedis

            server = EmbeddedRedis(Path(data) / "redis")
            server.start()
            args.redis = server.url
        try:
            run(args)
        finally:
            if server is not None:
                server.stop()


def run(args: argparse.Namespace) -> None:
    where = "embedded redis-server (AOF, appendfsync everysec)" if args.embedded else args.redis
    client = redis.Redis.from_url(args.redis)
    client.flushdb()
    try:
        words_per_s = bench_enqueue(args.redis, args.words)
        client.flushdb()
        with tempfile.TemporaryDirectory() as tmp:
            records_per_s, counts = bench_collector(args.redis, args.records, Path(tmp))
        recheck_per_s = None
        if args.recheck:
            client.flushdb()
            with tempfile.TemporaryDirectory() as tmp:
                recheck_per_s, _ = bench_collector(args.redis, args.records, Path(tmp), stamped=False)
    finally:
        client.flushdb()
    print(f"redis: {where}")
    print(f"enqueue:   {args.words} words in one call: {words_per_s:,.0f} words/s (target ≥ 5,000)")
    print(f"collector: {args.records} records through re-check, dedup, shards, bookkeeping: {records_per_s:,.0f} records/s "
          f"(target ≥ 5,000); outcomes {counts}")
    if recheck_per_s is not None:
        print(f"collector, records of another rules version (re-checked): {recheck_per_s:,.0f} records/s")


if __name__ == "__main__":
    main()
