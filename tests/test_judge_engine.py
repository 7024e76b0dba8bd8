"""The relevance judge on the bundled model: the engine's score jobs read what llama.cpp reads.

A judge method's requests are served one at a time by :func:`convfarm.judge.read_with_llama`
(the reference) and, in a worker, by the batched engine beside generation steps. Alone (N = 1)
the engine's readings are the reference's; in a unified cache shared with generating
sequences the last bits of the logits move (docs/batched-decoding.md), so there the readings
and the scores agree within a tolerance.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from convfarm.config import load_config
from convfarm.engine import GenerationRequest, ResidentModel
from convfarm.judge import ScoreReading, ScoreRequest, default_method, read_with_llama, relevance
from convfarm.judge.methods import few_shot_question, named_method
from convfarm.judge.scoring import llama_tokenizer
from convfarm.messages import Turn
from tests.conftest import EXAMPLE, resident

CONVERSATIONS = {
    "bridge": [("STUDENT", 'What does "bridge" mean?'),
               ("TEACHER", "A bridge is a structure built over a river or a road so people can cross it.")],
    "leaf": [("STUDENT", 'What does "leaf" mean?'),
             ("TEACHER", "Leaffeau is a French piece of music from the last century, played on the harp.")],
    "camera": [("STUDENT", 'What does "camera" mean?'),
               ("TEACHER", "A camera is a device that takes photographs by letting light onto a sensor."),
               ("STUDENT", "So my phone has a camera?"), ("TEACHER", "Yes, a small one.")],
}


def turns(word: str) -> list[Turn]:
    return [Turn(speaker=s, text=t) for s, t in CONVERSATIONS[word]]


@pytest.fixture(scope="module")
def alone() -> Iterator[ResidentModel]:
    """N = 1, and ``llama`` keeps every position's logits: the reference reads on the same loaded weights."""
    yield from resident(1, logits_all=True)


@pytest.fixture(scope="module")
def shared() -> Iterator[ResidentModel]:
    """The worker's default: 4 slots in one unified cache."""
    yield from resident(4, "unified")


@pytest.fixture(scope="module")
def streams() -> Iterator[ResidentModel]:
    """4 slots, a KV stream per sequence."""
    yield from resident(4, "per-sequence")


# the default method (probes inside one prefill), the few-shot question (next-token candidates), as a worker builds them
METHODS = (named_method(None, list(CONVERSATIONS)), few_shot_question())


def requests_for(model: ResidentModel, word: str, topic: str | None = "everyday life") -> list[ScoreRequest]:
    """Each method's requests for the word, in METHODS' order, then one that reads a span too (a likelihood
    method's kind of request): every kind of reading."""
    tokenize, bos = llama_tokenizer(model.llama)
    made = [r for m in METHODS for r in m.requests(topic=topic, word=word, turns=turns(word), tokenize=tokenize, bos=bos)]
    asking = made[-1]
    return [*made, ScoreRequest(tokens=asking.tokens, candidates=asking.candidates[:1], span_start=5)]


def flat(reading: ScoreReading) -> tuple[float, ...]:
    return (*reading.candidates, *(x for probe in reading.probes for x in probe))


def close(a: ScoreReading, b: ScoreReading, tolerance: float) -> bool:
    return ([len(p) for p in a.probes] == [len(p) for p in b.probes] and len(a.candidates) == len(b.candidates)
            and len(a.span) == len(b.span)
            and all(abs(x - y) <= tolerance for x, y in zip((*flat(a), *a.span), (*flat(b), *b.span), strict=True)))


def method_scores(readings: list[ScoreReading]) -> list[float]:
    """Each method's relevance from its own readings (requests_for's order)."""
    out, at = [], 0
    for method in METHODS:
        out.append(relevance(method, readings[at:at + method.n_requests]))
        at += method.n_requests
    return out


def test_alone_the_engine_reads_what_llama_cpp_reads(alone: ResidentModel) -> None:
    for word in CONVERSATIONS:
        reqs = requests_for(alone, word)
        reference = [read_with_llama(alone.llama, r) for r in reqs]
        served = [alone.engine.score(r).result() for r in reqs]
        for a, b in zip(served, reference, strict=True):
            assert close(a, b, 1e-3), (word, a, b)
        assert len(served[-1].span) == len(reqs[-1].tokens) - 5  # every token from span_start on
        assert [len(p) for p in served[0].probes] == [len(ids) for _, ids in reqs[0].probes] == [16, 16]
    assert alone.engine.busy == 0 and alone.engine.scored_tokens > 0


# (layout, next-token tolerance, mean span tolerance): nats
@pytest.mark.parametrize(("layout", "tolerance", "span_tolerance"), [("per-sequence", 0.05, 0.02), ("unified", 0.35, 0.1)])
def test_score_jobs_beside_generation_read_within_tolerance(alone: ResidentModel, request: pytest.FixtureRequest,
                                                            layout: str, tolerance: float, span_tolerance: float) -> None:
    """N = 4: score jobs and conversations decoded in the same steps. Every next-token and probe reading
    within a tolerance of the reference (a stream per sequence: batch-size rounding only, measured
    0.02 with the few-shot method; 0.12 on a 408-token span request when the blend's second request per
    conversation shares the steps, with the judge preamble kept or not; a unified cache: the
    attention sums run over other sequences' cells too, measured up to 0.57 on a single unlikely
    span token, 0.04 on average over a span, and 0.29 on a next-token reading in a full CI run),
    each method's score within 0.06 (the few-shot method's yes_shift steepens a reading's difference;
    the subject choice weighs its probes 1.8× and 0.96×), the conversations unharmed, nothing left in the engine."""
    model: ResidentModel = request.getfixturevalue("streams" if layout == "per-sequence" else "shared")
    config, _ = load_config(EXAMPLE, max_tokens=24, structure="free")
    gen = [GenerationRequest(config=config, word=w, seed=5 + i) for i, w in enumerate(["garden", "mirror"])]
    generating = model.generate(gen, score=False)  # submitted now; decoded while the scores are
    reqs = {word: requests_for(model, word) for word in CONVERSATIONS}
    futures = {word: [model.engine.score(r) for r in rs] for word, rs in reqs.items()}
    outcomes = list(generating)
    for word, rs in reqs.items():
        served = [f.result() for f in futures[word]]
        reference = [read_with_llama(alone.llama, r) for r in rs]
        for a, b in zip(served, reference, strict=True):
            moved = [round(x - y, 3) for x, y in zip(flat(a), flat(b), strict=True)]
            assert all(abs(d) <= tolerance for d in moved), (word, len(a.span), moved)
            assert len(a.span) == len(b.span)
            if a.span:
                assert sum(abs(x - y) for x, y in zip(a.span, b.span, strict=True)) / len(a.span) < span_tolerance, (word, a, b)
        moved_scores = [round(x - y, 3) for x, y in zip(method_scores(served), method_scores(reference), strict=True)]
        assert all(abs(d) < 0.06 for d in moved_scores), (word, moved_scores)
    assert all(o.ended_by and o.completion_tokens > 0 for o in outcomes)
    assert model.engine.scored_tokens > 0 and model.engine.busy == 0


def test_the_worker_path_scores_accepted_conversations_and_applies_the_bar(shared: ResidentModel) -> None:
    """With a ``judge`` section, ``generate`` scores what it accepts on the model it holds; under
    ``judge.min_relevance`` a conversation is rejected as ``off_topic`` with its score kept; a rule's
    rejection is not scored. Without one, nothing is scored (the judge is paid for only when asked)."""
    unjudged, _ = load_config(EXAMPLE, max_tokens=40)
    plain = list(shared.generate([GenerationRequest(config=unjudged, word="bridge", seed=3)]))
    assert all(o.scores == {} and o.judge is None for o in plain)
    config, _ = load_config(EXAMPLE, max_tokens=40, topic="everyday life", judge={})
    words = ["bridge", "leaf", "camera", "village"]
    outcomes = list(shared.generate([GenerationRequest(config=config, word=w, seed=3) for w in words]))
    accepted = [o for o in outcomes if o.reason is None]
    assert accepted, [o.raw for o in outcomes]
    for o in outcomes:
        if o.reason is None:
            assert 0.0 <= o.scores["relevance"] <= 1.0
            assert o.judge is not None and o.judge.method == default_method().name
            assert o.judge.model.file == shared.identity.file and o.judge_seconds > 0
        else:
            assert o.scores == {} and o.judge is None
    strict, _ = load_config(EXAMPLE, max_tokens=40, topic="everyday life", judge={"min_relevance": 1.0})
    again = list(shared.generate([GenerationRequest(config=strict, word=o.request.word, seed=3) for o in accepted]))
    scored = [o for o in again if o.scores]  # (the shared cache may sample another text, which a rule may reject)
    assert scored
    for o in scored:
        assert o.reason == "off_topic" and o.detail.startswith("relevance ")
        assert 0.0 <= o.scores["relevance"] < 1.0


@pytest.mark.parametrize("unified", [True, False], ids=["unified", "per-sequence"])
def test_the_judge_preamble_is_decoded_once_and_the_readings_do_not_change(alone: ResidentModel, unified: bool) -> None:
    """The few-shot method's worked examples are the same tokens before every conversation: the engine
    decodes them for the first score job only, keeps their KV cache, and every later job decodes only
    its conversation and question — with the readings of the one-at-a-time reference. A conversation's
    requests go in together, as the worker sends them: its other request does not evict the preamble."""
    from convfarm.engine.batched import BatchedEngine
    from convfarm.engine.resident import default_threads

    tokenize, bos = llama_tokenizer(alone.llama)
    method = few_shot_question()
    per_word = [method.requests(topic="everyday life", word=w, turns=turns(w), tokenize=tokenize, bos=bos)
                for w in CONVERSATIONS]
    shared = per_word[0][0].shared
    assert shared > 300 and all(rs[0].shared == shared and rs[0].tokens[:shared] == per_word[0][0].tokens[:shared]
                                for rs in per_word)
    engines = [BatchedEngine(alone.llama._model.model, n_slots=2, n_ctx_per_seq=512, n_threads=default_threads(),
                             kv_unified=unified, keep_score_prefix=keep) for keep in (True, False)]
    kept, whole = engines
    # two jobs in one step: the tolerances of test_score_jobs_beside_generation_read_within_tolerance
    # (a unified cache lays the second after the first's cells; streams round by batch size)
    tolerance, span_tolerance = (0.25, 0.1) if unified else (0.05, 0.02)
    try:
        for i, reqs in enumerate(per_word):
            total = sum(len(r.tokens) for r in reqs)
            decoded, saved = kept.scored_tokens, kept.score_prefix_tokens
            readings = [f.result() for f in [kept.score(r) for r in reqs]]
            decoded, saved = kept.scored_tokens - decoded, kept.score_prefix_tokens - saved
            # the first conversation decodes everything; every later one skips exactly the preamble
            assert (decoded, saved) == ((total, 0) if i == 0 else (total - shared, shared))
            reference = [read_with_llama(alone.llama, r) for r in reqs]
            without = [f.result() for f in [whole.score(r) for r in reqs]]
            for got, ref, other in zip(readings, reference, without, strict=True):
                for a, b in ((got, ref), (got, other)):
                    assert all(abs(x - y) <= tolerance for x, y in zip(a.candidates, b.candidates, strict=True)), (i, a, b)
                    assert len(a.span) == len(b.span)
                    if a.span:
                        assert sum(abs(x - y) for x, y in zip(a.span, b.span, strict=True)) / len(a.span) < span_tolerance
        assert whole.score_prefix_tokens == 0 and whole.scored_tokens == sum(len(r.tokens) for rs in per_word for r in rs)
        # one request at a time, alone in the engine: the preamble's readings are the reference's to 1e-3
        first = per_word[1][0]
        decoded = kept.scored_tokens
        assert close(kept.score(first).result(), read_with_llama(alone.llama, first), 1e-3)
        assert kept.scored_tokens - decoded == len(first.tokens) - shared
        # a request that reads a span inside the preamble decodes it whole (its logits are read there)
        spanning = ScoreRequest(tokens=first.tokens, candidates=first.candidates[:1], span_start=5, shared=shared)
        decoded = kept.scored_tokens
        reading = kept.score(spanning).result()
        assert kept.scored_tokens - decoded == len(spanning.tokens) and len(reading.span) == len(spanning.tokens) - 5
        assert close(reading, read_with_llama(alone.llama, spanning), 1e-3)
        # a probe inside the preamble: the kept cells up to the probe's token, which is decoded (its logits are
        # read there); a probe after the preamble: the whole preamble kept
        inside, after = (ScoreRequest(tokens=first.tokens, candidates=first.candidates, shared=shared,
                                      probes=((at, first.candidates),)) for at in (shared // 2, shared + 3))
        for probing, skipped in ((inside, shared // 2), (after, shared)):
            decoded = kept.scored_tokens
            reading = kept.score(probing).result()
            assert kept.scored_tokens - decoded == len(probing.tokens) - skipped and len(reading.probes) == 1
            assert close(reading, read_with_llama(alone.llama, probing), 1e-3)
    finally:
        for engine in engines:
            engine.close()
