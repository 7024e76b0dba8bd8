"""The batched engine on the real bundled model: continuous batching, seeds, equality, a real worker.

What "same output" means here (docs/batched-decoding.md says why): alone (N = 1) the engine
makes what llama.cpp's own ``Llama.create_completion`` makes (tests/llama_reference.py); with the
per-sequence KV layout (``CONVFARM_KV_LAYOUT=per-sequence``, one stream per sequence) a
conversation decoded in a batch equals the one the engine makes alone, token for token, whatever
else is in the batch. The default unified cache is faster and gives other (equally well-formed)
samples once sequences share it; alone it is still the N = 1 engine. The relevance judge is left
out here (``score=False``): tests/test_judge_engine.py covers it.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis

from convfarm.config import RunConfig, load_config
from convfarm.engine import GenerationOutcome, GenerationRequest, ResidentModel
from convfarm.judging import rule_context
from convfarm.rules import TranscriptJudge
from convfarm.runstate import RunStore, run_key
from tests.conftest import EXAMPLE, farm_env, producer, resident, start_worker, wait_for, write_config
from tests.llama_reference import create_completion
from tests.runfiles import records as run_records

# the engine's own behaviour, without the grammar (its sampling differs from the
# one-at-a-time path's LlamaGrammar by design: tests/test_grammar.py covers it)
FREE = {"structure": "free"}
WORDS = ["bridge", "leaf", "camera", "village", "pocket", "promise", "garden", "mirror"]


@pytest.fixture(scope="module")
def single() -> Iterator[ResidentModel]:
    yield from resident(1, "per-sequence")


@pytest.fixture(scope="module")
def batched() -> Iterator[ResidentModel]:
    yield from resident(4, "per-sequence")


@pytest.fixture(scope="module")
def unified() -> Iterator[ResidentModel]:
    """The default layout (what a worker uses unless CONVFARM_KV_LAYOUT says otherwise)."""
    yield from resident(4, "unified")


def requests(config: RunConfig, words: list[str], seed: int = 7) -> list[GenerationRequest]:
    return [GenerationRequest(config=config, word=w, seed=seed + i) for i, w in enumerate(words)]


def same(a: GenerationOutcome, b: GenerationOutcome) -> bool:
    return (a.raw, a.turns, a.reason, a.ended_by, a.completion_tokens, a.prompt_tokens) == \
        (b.raw, b.turns, b.reason, b.ended_by, b.completion_tokens, b.prompt_tokens)


def test_one_sequence_alone_equals_llama_cpp(single: ResidentModel) -> None:
    """N=1: the engine's sampler chain, detokenisation and judge feeding are create_completion's."""
    config, _ = load_config(EXAMPLE, max_tokens=48, **FREE)
    reqs = requests(config, WORDS[:5])
    engine = list(single.generate(reqs, score=False))
    old = [create_completion(single, r) for r in reqs]
    for a, b in zip(engine, old, strict=True):
        assert same(a, b), (a.request.word, a.raw, b.raw)
    assert single.engine.shared_prompt_tokens > 0  # the run's prompt prefix was decoded once


def test_chat_mode_alone_equals_llama_cpp(single: ResidentModel) -> None:
    config, _ = load_config(EXAMPLE, max_tokens=40, mode="chat", **FREE)
    reqs = requests(config, WORDS[:3], seed=11)
    for a, b in zip(single.generate(reqs, score=False), [create_completion(single, r) for r in reqs], strict=True):
        assert same(a, b), (a.request.word, a.raw, b.raw)


def test_a_fixed_batch_is_deterministic_and_well_formed(batched: ResidentModel) -> None:
    config, _ = load_config(EXAMPLE, max_tokens=48, **FREE)
    reqs = requests(config, WORDS)
    first = list(batched.generate(reqs, score=False))
    second = list(batched.generate(reqs, score=False))
    assert all(same(a, b) for a, b in zip(first, second, strict=True))
    for outcome in first:
        assert outcome.ended_by  # every sequence ended, one way or another
        assert outcome.prompt_tokens > 0 and 0 < outcome.completion_tokens <= 48
        assert outcome.turns[0].text == f'What does "{outcome.request.word}" mean?'
        if outcome.reason is None:
            assert [t.speaker for t in outcome.turns][:2] == ["STUDENT", "TEACHER"]


def test_batched_sequences_equal_their_selves_alone(batched: ResidentModel, single: ResidentModel) -> None:
    """N=4, 8 requests (slots refilled as sequences end, the prompt prefix shared): every
    conversation is the one the engine makes alone (N=1) with its seed."""
    config, _ = load_config(EXAMPLE, max_tokens=48, **FREE)
    reqs = requests(config, WORDS, seed=21)
    together = list(batched.generate(reqs, score=False))
    alone = [next(single.generate([r], score=False)) for r in reqs]
    for a, b in zip(together, alone, strict=True):
        assert same(a, b), (a.request.word, a.raw, b.raw)
    assert batched.engine.shared_prompt_tokens > 0


def test_the_unified_cache_alone_equals_the_engine_at_n1(unified: ResidentModel, single: ResidentModel) -> None:
    """One request at a time through the 4-slot unified engine: its cells are laid out as the N=1 engine's."""
    config, _ = load_config(EXAMPLE, max_tokens=40, **FREE)
    for request in requests(config, WORDS[:3], seed=31):
        a = next(unified.generate([request], score=False))
        b = next(single.generate([request], score=False))
        assert same(a, b), (request.word, a.raw, b.raw)


def test_the_unified_cache_batches_well_formed_conversations(unified: ResidentModel) -> None:
    """8 requests through 4 slots sharing one cache: every conversation is the run's (its word, its
    speakers), the prompt prefix is shared, nothing is left in the engine, and the batch saved steps."""
    config, _ = load_config(EXAMPLE, max_tokens=48, **FREE)
    engine = unified.engine
    assert engine.kv_unified
    steps_before = engine.steps
    outcomes = list(unified.generate(requests(config, WORDS, seed=41), score=False))
    for outcome in outcomes:
        assert outcome.ended_by and 0 < outcome.completion_tokens <= 48
        assert outcome.turns[0].text == f'What does "{outcome.request.word}" mean?'
        if outcome.reason is None:
            assert [t.speaker for t in outcome.turns][:2] == ["STUDENT", "TEACHER"]
    assert sum(o.reason is None for o in outcomes) >= 4  # the example config's yield, not a broken cache
    assert engine.shared_prompt_tokens > 0 and engine.busy == 0
    assert engine.steps - steps_before < sum(o.completion_tokens for o in outcomes)
    assert len({o.raw for o in outcomes}) == len(outcomes)  # eight seeds, eight texts


def test_more_requests_than_slots_all_complete_with_continuous_batching(batched: ResidentModel) -> None:
    from convfarm.engine.batched import EngineJob
    from convfarm.engine.sampler import SamplingParams

    engine = batched.engine
    llama = batched.llama
    prompt = llama.tokenize(b"Once upon a time, in a village by the sea,", add_bos=True)
    judge_config, _ = load_config(EXAMPLE)

    def job(max_tokens: int, seed: int) -> EngineJob:
        # prose: the judge rejects it early, but early_stop=False decodes to max_tokens (or EOS),
        # so the lengths are known
        judge = TranscriptJudge(rule_context(judge_config, "sea"))
        return EngineJob(tokens=prompt, max_tokens=max_tokens, early_stop=False, judge=judge,
                         params=SamplingParams(temperature=0.8, top_k=40, top_p=0.95, repeat_penalty=1.1, seed=seed))

    lengths = [40, 6, 6, 6, 6, 6, 6, 40, 6, 6]  # two long ones and many short ones, 4 slots
    steps_before, full_before = engine.steps, engine.full_completion_tokens
    results = engine.run([job(n, seed) for seed, n in enumerate(lengths)])
    for n, result in zip(lengths, results, strict=True):
        assert result.completion_tokens == n or result.ended_by == "eos"
    assert all(0 <= r.slot < 4 for r in results)
    # the short jobs took the slots the short ones before them freed while the long ones ran:
    long_first = results[0]
    late_short = results[8]
    assert late_short.admitted_step < long_first.finished_step
    # and the batching saved decode calls: fewer steps than tokens decoded one at a time
    assert engine.steps - steps_before < sum(r.completion_tokens for r in results)
    # the busy-slots figure counts the rounds with all 4 slots taken: not the drain (one long job left)
    full = engine.full_completion_tokens - full_before
    assert 0 < full < sum(r.completion_tokens for r in results) and engine.full_seconds > 0


def test_machine_seconds_add_up_to_the_engines_busy_time(unified: ResidentModel) -> None:
    """Latency counts a batch's time once per conversation in it; machine time shares each step
    among the conversations in it, so summed it is the time the engine worked (docs/design.md)."""
    config, _ = load_config(EXAMPLE, max_tokens=32, **FREE)
    began = time.perf_counter()
    outcomes = list(unified.generate(requests(config, WORDS)))  # 8 conversations in 4 slots
    wall = time.perf_counter() - began
    machine = sum(o.machine_seconds for o in outcomes)
    latency = sum(o.seconds for o in outcomes)
    assert 0.95 * wall <= machine <= wall, (machine, wall)
    assert latency > 1.5 * machine, (latency, machine)  # what the old figure summed


def test_a_doomed_sequence_frees_its_slot_at_once(batched: ResidentModel) -> None:
    """An excluded word stops its sequence mid-line; the waiting request takes the slot while others decode."""
    config, _ = load_config(EXAMPLE, max_tokens=64, **FREE)
    doomed_config, _ = load_config(EXAMPLE, max_tokens=64, **FREE, exclude=[r"\bis\b", r"\bmeans\b", r"\bare\b"])
    reqs = [GenerationRequest(config=doomed_config, word=w, seed=3) for w in WORDS[:4]] + \
        requests(config, WORDS[4:])
    engine = batched.engine
    outcomes = list(batched.generate(reqs, score=False))
    doomed = [o for o in outcomes[:4] if o.reason == "excluded"]
    assert doomed, [o.raw for o in outcomes[:4]]
    assert all(o.completion_tokens < 64 for o in doomed)
    assert engine.busy == 0  # nothing left behind in the engine


def test_seeds_are_deterministic_and_distinct(batched: ResidentModel) -> None:
    config, _ = load_config(EXAMPLE, max_tokens=32, **FREE)
    reqs = [GenerationRequest(config=config, word="bridge", seed=s) for s in (1, 1, 2, 3)]
    a, b, c, d = batched.generate(reqs, score=False)
    assert a.raw == b.raw  # two attempts with one seed in one batch: the same text
    assert len({a.raw, c.raw, d.raw}) == 3  # other seeds, other texts


def test_a_prompt_longer_than_the_context_fails_only_its_request(batched: ResidentModel) -> None:
    config, _ = load_config(EXAMPLE, max_tokens=16, **FREE)
    long_config = config.model_copy(update={"prompt_lines": ["word " * 600, 'STUDENT: What does "{word}" mean?',
                                                             "TEACHER:"]})
    with pytest.raises(ValueError, match="exceed context window"):
        list(batched.generate([GenerationRequest(config=long_config, word="bridge", seed=1)], score=False))
    assert next(batched.generate([GenerationRequest(config=config, word="bridge", seed=1)], score=False)).ended_by


# --- a real worker ------------------------------------------------------------------------------
def test_a_batched_celery_worker_runs_a_run(redis_url: str, tmp_path: Path, rclient: redis.Redis) -> None:
    out = tmp_path / "out"
    env = farm_env(redis_url, out, CONVFARM_BATCH_SIZE="4")
    collector = start_worker(env, tmp_path / "logs", "collector-batched", collector=True)
    generator = start_worker(env, tmp_path / "logs", "gen-batched")
    try:
        words = WORDS[:6]
        config = write_config(tmp_path / "batched.json", name="batchedrun", max_tokens=24, max_attempts=1,
                              words=words, **FREE)
        result = producer("enqueue", str(config), env=env)
        assert result.returncode == 0, result.stderr
        run = re.search(r"run (\S+): sent", result.stdout).group(1)
        wait_for(lambda: rclient.hget(run_key(run), "status") == b"complete", 900, "the run to complete")
        records = run_records(out / run, "conversations") + run_records(out / run, "rejected")
        assert sorted(r["word"] for r in records) == sorted(words)
        assert len({r["id"] for r in records}) == len(words)
        # machine time adds up to no more than the time the worker was busy (latency would count
        # each batch up to 4 times): the span from the first start to the last record
        span = max(datetime.fromisoformat(r["created_at"]).timestamp() for r in records) - \
            min(datetime.fromisoformat(r["created_at"]).timestamp() - r["generation_seconds"] for r in records)
        machine = sum(r["machine_seconds"] for r in records)
        # (+0.1 s: each record's created_at and generation_seconds are rounded, and this span is ~1 s)
        assert 0 < machine <= 1.05 * span + 0.1, (machine, span)
        assert sum(r["generation_seconds"] for r in records) > machine
        log = generator.text()
        assert "concurrency: 4 (thread)" in log, log[-2000:]
        assert log.count("loaded model") == 1  # one model (and one engine) for the 4 task threads
    finally:
        generator.stop()
        collector.stop()


def test_a_batched_worker_killed_mid_batch_loses_nothing(redis_url: str, tmp_path: Path,
                                                         rclient: redis.Redis) -> None:
    """SIGKILL the whole batched worker while it decodes several conversations: the broker holds
    no copy of its messages (a generation worker runs without kombu's ack emulation), so its
    attempts come back through their leases to the next worker, which finishes the run with
    every word exactly once and the same record ids."""
    out = tmp_path / "out"
    env = farm_env(redis_url, out, CONVFARM_BATCH_SIZE="4", CONVFARM_SOFT_TIME_LIMIT="20",
                   CONVFARM_HARD_TIME_LIMIT="25", CONVFARM_VISIBILITY_TIMEOUT="30",
                   CONVFARM_UNACKED_RESTORE_INTERVAL="1")
    collector = start_worker(env, tmp_path / "logs", "collector-bkill", collector=True)
    generator = start_worker(env, tmp_path / "logs", "gen-bkill")
    try:
        words = ["bridge", "leaf", "pocket", "bear", "room", "village"]
        config = write_config(tmp_path / "bkill.json", name="batchkill", max_tokens=96, max_attempts=1, words=words,
                              **FREE)
        result = producer("enqueue", str(config), env=env)
        run = re.search(r"run (\S+): sent", result.stdout).group(1)
        wait_for(lambda: generator.text().count("Task convfarm.generate") >= 3 and "loaded model" in generator.text(),
                 120, "several running tasks")
        time.sleep(0.5)
        generator.kill(signal.SIGKILL)
        assert "acknowledgement emulation off" in generator.text()
        assert rclient.hlen("unacked") == 0  # nothing for kombu to restore: the leases bring them back
        done_before = RunStore(rclient).counts(run)
        generator = start_worker(env, tmp_path / "logs", "gen-bkill2")
        wait_for(lambda: rclient.hget(run_key(run), "status") == b"complete", 900, "the run to complete")
        records = run_records(out / run, "conversations") + run_records(out / run, "rejected")
        assert sorted(r["word"] for r in records) == sorted(words), done_before
        assert len({r["id"] for r in records}) == len(words)
        manifest = json.loads((out / run / "manifest.json").read_text())
        assert manifest["words"]["done"] == len(words)
        assert "Task convfarm.generate" in generator.text()  # the second worker did the rest
    finally:
        generator.stop()
        collector.stop()


def test_no_false_context_overflow_warning(capfd: pytest.CaptureFixture[str]) -> None:
    """4 slots of n_ctx 2048 in one unified cache: llama.cpp calls the whole cache the per-sequence
    context (10240 > n_ctx_train 8192); no conversation uses more than 2048, so no warning."""
    model = ResidentModel("smollm2-135m", n_ctx=2048, n_gpu_layers=0, n_threads=None, batch_size=4, kv_layout="unified")
    try:
        assert model.engine.n_ctx_per_seq == 2048
    finally:
        model.close()
    assert "n_ctx_train" not in capfd.readouterr().err
