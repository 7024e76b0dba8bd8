"""The relevance judge: its arithmetic (table-driven, no model) and its calibration on the labelled set.

The calibration test scores every conversation of tests/data/judge_labelled.jsonl with the bundled
model and ``default_method()`` and holds the AUC bound of docs/judge.md: a change of prompt or
method that loses calibration fails here.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import get_args

import pytest

from convfarm.config import JudgeMethodName
from convfarm.judge import ScoreReading, ScoreRequest, default_method, read_with_llama, relevance
from convfarm.judge.calibration import (
    accuracy,
    auc,
    best_threshold,
    bos_token,
    fit_logistic,
    load_labelled,
    open_llama,
    rank_average,
    run_words,
)
from convfarm.judge.methods import (
    DEFAULT_METHOD,
    FEW_SHOT,
    NAMED_METHODS,
    SUBJECTS,
    ConditionalLikelihood,
    ConversationLikelihood,
    LogisticBlend,
    SubjectChoice,
    WeightedRating,
    YesNoQuestion,
    choice_log_probability,
    few_shot_and_likelihood,
    few_shot_question,
    first_tokens,
    logit,
    named_method,
    sigmoid,
    subject_choice,
)
from convfarm.judge.relevance import yes_probability
from convfarm.messages import Turn

SET = Path(__file__).parent / "data" / "judge_labelled.jsonl"
TURNS = [Turn(speaker="STUDENT", text='What does "gravity" mean in physics?'),
         Turn(speaker="TEACHER", text="Gravity is the pull between masses.")]


WORD_IDS: dict[str, int] = {}


def word_tokens(text: str) -> list[int]:
    """A tokenizer for the choice tests: one token per word with its leading space, one per punctuation mark."""
    return [WORD_IDS.setdefault(piece, len(WORD_IDS) + 1) for piece in re.findall(r"\s*\w+|\s*[^\w\s]|\s+", text)]


def spelled(ids: tuple[int, ...]) -> list[str]:
    names = {v: k for k, v in WORD_IDS.items()}
    return [names[i] for i in ids]


def char_tokens(text: str) -> list[int]:
    """A tokenizer for arithmetic tests: one token per character (its code point)."""
    return [ord(c) for c in text]


class Fixed:
    """A method that returns a fixed value: for the clamping of ``relevance``."""

    name, version, n_requests = "fixed", 1, 1

    def __init__(self, value: float) -> None:
        self.value = value

    def requests(self, **_: object) -> list[ScoreRequest]:
        return [ScoreRequest(tokens=(1,))]

    def score(self, readings: object) -> float:
        return self.value


@pytest.mark.fast
@pytest.mark.parametrize(("log_yes", "log_no", "expected"), [
    (-1.0, -1.0, 0.5),
    (0.0, -math.inf, 1.0),
    (-math.inf, 0.0, 0.0),
    (-1000.0, -1001.0, 1 / (1 + math.exp(-1))),  # far below zero: no underflow to 0/0
    (1000.0, 0.0, 1.0),  # far above: no overflow
    (math.log(0.3), math.log(0.1), 0.75),  # normalised over yes and no only
])
def test_yes_probability(log_yes: float, log_no: float, expected: float) -> None:
    assert yes_probability(log_yes, log_no) == pytest.approx(expected)


@pytest.mark.fast
@pytest.mark.parametrize(("shift", "log_yes", "log_no", "expected"), [
    (0.0, math.log(0.2), math.log(0.2), 0.5),
    (math.log(3), math.log(0.2), math.log(0.2), 0.75),  # the shift multiplies the odds
    (-math.log(3), math.log(0.6), math.log(0.2), 0.5),  # a fitted threshold of 0.75 moves to 0.5
])
def test_yes_no_shift(shift: float, log_yes: float, log_no: float, expected: float) -> None:
    assert YesNoQuestion(yes_shift=shift).score([ScoreReading(candidates=(log_yes, log_no))]) == pytest.approx(expected)


@pytest.mark.fast
@pytest.mark.parametrize(("value", "expected"), [
    (0.42, 0.42), (1.5, 1.0), (-0.2, 0.0), (math.nan, 0.0), (math.inf, 1.0), (-math.inf, 0.0),
])
def test_relevance_is_clamped_and_nan_is_not_on_topic(value: float, expected: float) -> None:
    assert relevance(Fixed(value), [ScoreReading()]) == expected


@pytest.mark.fast
@pytest.mark.parametrize(("log_probs", "expected"), [
    ((0.0, -math.inf, -math.inf, -math.inf, -math.inf), 0.0),  # certain 1
    ((-math.inf, -math.inf, -math.inf, -math.inf, 0.0), 1.0),  # certain 5
    ((-1.0,) * 5, 0.5),  # uniform: mean rating 3
    ((math.log(0.5), -math.inf, -math.inf, -math.inf, math.log(0.5)), 0.5),
    ((-math.inf, math.log(0.2), -math.inf, math.log(0.2), -math.inf), 0.5),  # unnormalised: 2 and 4 alike
])
def test_weighted_rating(log_probs: tuple[float, ...], expected: float) -> None:
    assert WeightedRating().score([ScoreReading(candidates=log_probs)]) == pytest.approx(expected)


@pytest.mark.fast
@pytest.mark.parametrize(("on", "off", "center", "scale", "expected"), [
    ((-1.0, -2.0), (-1.5, -1.5), 0.0, 5.0, 0.5),  # equal means: no gain
    ((-1.0, -1.0), (-2.0, -2.0), 0.0, 1.0, sigmoid(1.0)),  # one nat per token better after the header
    ((-1.0, -1.0), (-2.0, -2.0), 1.0, 3.0, 0.5),  # the gain equals the fitted center
    ((-3.0,), (-1.0,), 0.0, 5.0, sigmoid(-10.0)),  # the header makes it less likely: off topic
])
def test_conditional_likelihood(on: tuple[float, ...], off: tuple[float, ...], center: float, scale: float,
                                expected: float) -> None:
    method = ConditionalLikelihood(center=center, scale=scale)
    assert method.score([ScoreReading(span=on), ScoreReading(span=off)]) == pytest.approx(expected)


@pytest.mark.fast
@pytest.mark.parametrize(("log_probs", "expected"), [
    ((-1.0,), 0.0),  # one choice: nothing to tell apart
    ((-1.0, -1.0), math.log(0.5)),  # two alike
    ((-2.0, -2.0, -2.0, -2.0), math.log(0.25)),  # unnormalised: only the differences count
    ((0.0, -math.inf), 0.0),  # the only possible one
    ((math.log(0.1), math.log(0.9)), math.log(0.1)),
    ((), math.nan),  # nothing read
])
def test_choice_log_probability(log_probs: tuple[float, ...], expected: float) -> None:
    got = choice_log_probability(log_probs)
    assert math.isnan(got) if math.isnan(expected) else got == pytest.approx(expected)


@pytest.mark.fast
@pytest.mark.parametrize(("probes", "expected"), [
    # (subject probe, word probe) -> sigmoid(bias + topic_weight * subject + word_weight * word), weights 2, 1, bias 1
    (((-1.0, -1.0), (-1.0, -1.0)), sigmoid(1.0 + 2.0 * math.log(0.5) + math.log(0.5))),
    (((0.0, -math.inf), (0.0, -math.inf)), sigmoid(1.0)),  # certain of both: the bias alone
    (((math.log(0.01), 0.0), (0.0, -math.inf)), sigmoid(1.0 + 2.0 * math.log(0.01 / 1.01))),  # another subject
    # without a topic only the word is read: the subject counts as certain
    (((math.log(0.5), math.log(0.5)),), sigmoid(1.0 + math.log(0.5))),
])
def test_subject_choice_score(probes: tuple[tuple[float, ...], ...], expected: float) -> None:
    method = SubjectChoice(topic_weight=2.0, word_weight=1.0, bias=1.0)
    assert method.score([ScoreReading(probes=probes)]) == pytest.approx(expected)


@pytest.mark.fast
def test_without_a_topic_the_subject_counts_as_an_on_topic_conversations() -> None:
    """A topic-less run's one probe reads the word; its subject is the fitted typical reading, not certainty."""
    method = SubjectChoice(topic_weight=2.0, word_weight=1.0, bias=1.0, subject_without_topic=-0.25)
    word_only = ScoreReading(probes=((math.log(0.5), math.log(0.5)),))
    assert method.choices([word_only]) == pytest.approx((-0.25, math.log(0.5)))
    assert method.score([word_only]) == pytest.approx(sigmoid(1.0 - 0.5 + math.log(0.5)))
    # a topical conversation whose subject reads the typical value scores the same as a topic-less one
    typical = ScoreReading(probes=((0.0, math.log(math.exp(0.25) - 1.0)), (math.log(0.5), math.log(0.5))))
    assert method.score([typical]) == pytest.approx(method.score([word_only]))
    assert subject_choice().subject_without_topic < 0.0


@pytest.mark.fast
def test_subject_choice_asks_the_topic_then_the_word_in_one_request() -> None:
    """The transcript without its opening line, a subject probe (the topic's first token first, other
    subjects after it), the true topic, then a word probe (the word first, the run's other words, then
    common words, 15 alternatives in all); without a topic, the word probe alone."""
    words = ("gravity", "friction", "inertia", "gravity")
    (request,) = SubjectChoice(words=words).requests(topic="physics", word="gravity", turns=TURNS,
                                                     tokenize=word_tokens, bos=0)
    text = "".join(spelled(request.tokens[1:]))
    assert request.tokens[0] == 0 and "What does" not in text and "Gravity is the pull between masses." in text
    (at_subject, subjects), (at_word, choices) = request.probes
    assert text.endswith('It explains the physics term "')
    assert spelled(request.tokens[1:at_subject + 1])[-1] == " about" and spelled(request.tokens[at_subject + 1:])[0] == " physics"
    # first tokens: " everyday life" is read as " everyday"
    assert spelled(subjects) == [" physics", *(" " + s.split()[0] for s in SUBJECTS if s != "physics")]
    assert at_word == len(request.tokens) - 1 and len(choices) == 16 == len(set(choices))
    assert spelled(choices)[:3] == ["gravity", "friction", "inertia"]  # the word, then the run's others
    (alone,) = SubjectChoice(words=words).requests(topic=None, word="gravity", turns=TURNS, tokenize=word_tokens, bos=None)
    assert len(alone.probes) == 1 and "".join(spelled(alone.tokens)).endswith('explains the word "')


@pytest.mark.fast
def test_choices_that_share_a_first_token_are_left_out() -> None:
    tokens = {"soft": [1], "soft x-ray": [1, 2], "hard": [3], "x": [4], "hard rock": [3, 5]}
    assert first_tokens(lambda text: tokens[text], "soft", ["soft x-ray", "hard", "hard rock", "x"]) == (1, 3, 4)


@pytest.mark.fast
def test_a_config_naming_the_subject_choice_gets_its_words() -> None:
    method = named_method("subject-choice", ["a", "b"])
    assert isinstance(method, SubjectChoice) and method.words == ("a", "b") and method.alternatives("a")[0] == "b"
    assert named_method("yes-no-few-shot", ["a"]) == few_shot_question()  # a method without words is unchanged
    assert named_method(None, ["a"]) == SubjectChoice(**{**subject_choice().__dict__, "words": ("a",)})


@pytest.mark.fast
def test_run_words_are_the_topics_words_or_the_example_configs() -> None:
    rows = [{"id": "1", "topic": "physics", "word": "mass"}, {"id": "2", "topic": "physics", "word": "force"},
            {"id": "3", "topic": "physics", "word": "mass"}, {"id": "4", "topic": None, "word": "room"}]
    assert run_words(rows, ["room", "bear"]) == {"1": ("mass", "force"), "2": ("mass", "force"), "3": ("mass", "force"),
                                                "4": ("room", "bear")}


@pytest.mark.fast
def test_conditional_likelihood_without_tokens_is_not_on_topic() -> None:
    method = ConditionalLikelihood()
    assert math.isnan(method.score([ScoreReading(span=()), ScoreReading(span=())]))
    assert relevance(method, [ScoreReading(span=()), ScoreReading(span=())]) == 0.0


@pytest.mark.fast
@pytest.mark.parametrize("skip_turns", [0, 1, 5])
def test_conditional_likelihood_compares_the_same_tokens(skip_turns: int) -> None:
    """Both requests end with the same conversation tokens and read exactly those: a like-for-like mean."""
    on, off = ConditionalLikelihood(skip_turns=skip_turns).requests(
        topic="physics", word="gravity", turns=TURNS, tokenize=char_tokens, bos=0)
    assert on.tokens[0] == off.tokens[0] == 0
    assert on.tokens[on.span_start:] == off.tokens[off.span_start:]
    assert len(on.tokens[on.span_start:]) > 0
    assert "physics" in "".join(map(chr, on.tokens[1:on.span_start]))


@pytest.mark.fast
def test_contrastive_pmi_names_the_topic_but_not_the_word_in_its_baseline() -> None:
    """The contrastive header ("a physics lesson that explains the meaning of another word") is the
    baseline: same conversation tokens, the topic kept, the word gone."""
    method = ConditionalLikelihood(neutral="The following is a {topic} lesson that explains the meaning of another word.\n\n")
    on, off = method.requests(topic="physics", word="gravity", turns=TURNS, tokenize=char_tokens, bos=0)
    assert on.tokens[on.span_start:] == off.tokens[off.span_start:]
    header = "".join(map(chr, off.tokens[1:off.span_start]))
    assert header.startswith("The following is a physics lesson") and "gravity" not in header.split("\n\n")[0]


@pytest.mark.fast
def test_conversation_likelihood_is_the_pmi_first_prefill_read_alone() -> None:
    method = ConversationLikelihood(scale=1.0, center=-2.0)
    (request,) = method.requests(topic="physics", word="gravity", turns=TURNS, tokenize=char_tokens, bos=0)
    assert request == ConditionalLikelihood().requests(topic="physics", word="gravity", turns=TURNS,
                                                       tokenize=char_tokens, bos=0)[0]
    assert method.score([ScoreReading(span=(-1.0, -3.0))]) == pytest.approx(0.5)
    assert relevance(method, [ScoreReading(span=())]) == 0.0


@pytest.mark.fast
def test_few_shot_requests_mark_the_worked_examples_as_shared() -> None:
    """``shared`` covers exactly the worked examples (BOS included): the same tokens before every
    conversation, what an engine may keep decoded; a zero-shot question shares nothing."""
    method = YesNoQuestion(few_shot=FEW_SHOT)
    other = [Turn(speaker="STUDENT", text='What does "pulley" mean?'), Turn(speaker="TEACHER", text="A wheel.")]
    a, b = (method.requests(topic="physics", word=w, turns=t, tokenize=char_tokens, bos=0)[0]
            for w, t in (("gravity", TURNS), ("pulley", other)))
    assert a.shared == b.shared == 1 + len(method.preamble()) and a.tokens[:a.shared] == b.tokens[:b.shared]
    assert "gravity" not in "".join(map(chr, a.tokens[1:a.shared]))
    assert YesNoQuestion().requests(topic="physics", word="gravity", turns=TURNS, tokenize=char_tokens, bos=0)[0].shared == 0


@pytest.mark.fast
@pytest.mark.parametrize(("weights", "bias", "parts", "expected"), [
    ((1.0,), 0.0, (0.8,), 0.8),  # one part, weight 1: its own score
    ((1.0, 1.0), 0.0, (0.8, 0.2), 0.5),  # logits cancel
    ((2.0, 0.0), 0.0, (0.75, 0.1), 0.9),  # odds 3 squared = 9 -> 0.9
    ((1.0, 1.0), math.log(2), (0.5, 0.5), 2 / 3),  # the bias alone
    ((1.0,), 0.0, (1.0,), 1.0 - 1e-6),  # a certain part is kept just inside (0, 1)
])
def test_logistic_blend(weights: tuple[float, ...], bias: float, parts: tuple[float, ...], expected: float) -> None:
    blend = LogisticBlend(parts=tuple(YesNoQuestion() for _ in parts), weights=weights, bias=bias)
    readings = [ScoreReading(candidates=(math.log(p) if p else -math.inf, math.log(1 - p) if p < 1 else -math.inf))
                for p in parts]
    assert blend.score(readings) == pytest.approx(expected, abs=1e-9)


@pytest.mark.fast
def test_blend_hands_each_part_its_own_readings() -> None:
    blend = LogisticBlend(parts=(YesNoQuestion(), ConditionalLikelihood(), WeightedRating()), weights=(1, 1, 1))
    requests = blend.requests(topic=None, word="gravity", turns=TURNS, tokenize=char_tokens, bos=None)
    assert blend.n_requests == len(requests) == 4
    readings = [ScoreReading(candidates=(0.0, -math.inf)), ScoreReading(span=(-1.0,)), ScoreReading(span=(-1.0,)),
                ScoreReading(candidates=(-1.0,) * 5)]
    assert blend.part_scores(readings) == pytest.approx([1.0, 0.5, 0.5])


@pytest.mark.fast
def test_logit_and_sigmoid() -> None:
    assert sigmoid(logit(0.3)) == pytest.approx(0.3)
    assert sigmoid(-800.0) == pytest.approx(0.0) and sigmoid(800.0) == 1.0
    assert math.isfinite(logit(0.0)) and math.isfinite(logit(1.0))


@pytest.mark.fast
@pytest.mark.parametrize(("scores", "labels", "expected"), [
    ([0.1, 0.2, 0.8, 0.9], [False, False, True, True], 1.0),
    ([0.9, 0.8, 0.2, 0.1], [False, False, True, True], 0.0),
    ([0.5, 0.5, 0.5, 0.5], [False, True, False, True], 0.5),  # ties count half
    ([0.1, 0.4, 0.35, 0.8], [False, False, True, True], 0.75),
    ([0.3, 0.3, 0.7], [False, True, True], 0.75),
])
def test_auc(scores: list[float], labels: list[bool], expected: float) -> None:
    assert auc(scores, labels) == pytest.approx(expected)


@pytest.mark.fast
def test_auc_needs_both_classes_and_thresholds_split_them() -> None:
    assert math.isnan(auc([0.2, 0.3], [True, True]))
    scores, labels = [0.1, 0.2, 0.6, 0.9], [False, False, True, True]
    threshold = best_threshold(scores, labels)
    assert 0.2 < threshold < 0.6 and accuracy(scores, labels, threshold) == 1.0
    assert rank_average([[1, 2, 3], [1, 2, 3]]) == [0.0, 0.5, 1.0]


@pytest.mark.fast
def test_fit_logistic_separates_and_stays_finite() -> None:
    (weight,), bias = fit_logistic([[0.0], [1.0], [2.0], [3.0]], [False, False, True, True])
    assert weight > 0 and -bias / weight == pytest.approx(1.5, abs=0.01)  # the boundary between the classes


@pytest.mark.fast
def test_labelled_set_is_what_docs_say() -> None:
    rows = load_labelled(SET)
    assert len(rows) >= 80
    assert len({r["topic"] for r in rows if r["topic"]}) >= 2
    kinds = {r["kind"] for r in rows if not r["on_topic"]}
    assert {"other-sense", "drift", "different-word", "fluent-nonsense"} <= kinds
    assert {"positive-plain", "positive-good"} <= {r["kind"] for r in rows if r["on_topic"]}
    assert {r["split"] for r in rows} == {"dev", "held-out"}
    assert all(len(r["turns"]) >= 2 and r["word"] for r in rows)


# (method name, AUC on all, AUC on dev, accuracy at 0.5): bounds a little below what was measured
CALIBRATION_BOUNDS = [
    # measured AUC 0.871 (dev 0.906, held-out 0.807), accuracy 0.809: the 0.85, held here
    ("subject-choice", 0.85, 0.88, 0.78),
    # measured AUC 0.657 (dev 0.778, held-out 0.510), accuracy 0.678
    ("yes-no-few-shot", 0.63, 0.74, 0.64),
    # measured AUC 0.690 (dev 0.825, held-out 0.580), accuracy 0.704
    ("yes-no-few-shot+likelihood", 0.66, 0.79, 0.67),
]


@pytest.mark.fast
def test_every_method_a_config_may_name_exists() -> None:
    assert set(NAMED_METHODS) == set(get_args(JudgeMethodName)) and DEFAULT_METHOD in NAMED_METHODS
    assert default_method().name == DEFAULT_METHOD


def test_the_named_methods_are_calibrated_on_the_labelled_set() -> None:
    """The bundled model and each method a config may name hold their measured calibration
    (docs/judge.md). The bounds sit a little below the measured figures, so a prompt or method change
    that falls back toward chance (the zero-shot question: 0.53; the rating: 0.49), a default that
    ranks no better than the method it replaced, or a blend that ranks no better than its few-shot
    part, fails here. The default holds the issue's target, 0.85, on the whole set. One pass: the
    blend's first part is the few-shot question itself, on the same requests, so its part score is
    that method's score.
    """
    rows = load_labelled(SET)
    blend = few_shot_and_likelihood()
    assert blend.parts[0] == few_shot_question()
    # two Llamas, as the calibration benchmark reads: candidates on one without logits_all (the worked
    # examples stay in its KV cache from one conversation to the next), spans on one with them
    last = open_llama("smollm2-135m", n_threads=2, logits_all=False)
    spans = open_llama("smollm2-135m", n_threads=2, logits_all=True)
    scores: dict[str, list[float]] = {name: [] for name in NAMED_METHODS}
    words = run_words(rows, json.loads((Path(__file__).parent.parent / "examples" / "example.json").read_text())["words"])
    try:
        bos = bos_token(last)
        tokenize = lambda text: last.tokenize(text.encode(), add_bos=False, special=False)  # noqa: E731
        for row in rows:
            choice = named_method("subject-choice", words[row["id"]])  # as a worker builds it for the row's run
            (probing,) = choice.requests(topic=row["topic"], word=row["word"], turns=row["turns"], tokenize=tokenize,
                                         bos=bos)
            scores["subject-choice"].append(relevance(choice, [read_with_llama(spans, probing)]))
            requests = blend.requests(topic=row["topic"], word=row["word"], turns=row["turns"], tokenize=tokenize,
                                      bos=bos)
            readings = [read_with_llama(spans if r.span_start is not None else last, r) for r in requests]
            scores["yes-no-few-shot+likelihood"].append(relevance(blend, readings))
            scores["yes-no-few-shot"].append(relevance(blend.parts[0], readings[:blend.parts[0].n_requests]))
    finally:
        last.close()
        spans.close()
    labels = [r["on_topic"] for r in rows]
    dev = [i for i, r in enumerate(rows) if r["split"] == "dev"]
    for name, all_bound, dev_bound, accuracy_bound in CALIBRATION_BOUNDS:
        got = scores[name]
        assert all(0.0 <= s <= 1.0 for s in got), name
        assert auc(got, labels) >= all_bound, name
        assert auc([got[i] for i in dev], [labels[i] for i in dev]) >= dev_bound, name
        assert accuracy(got, labels, 0.5) >= accuracy_bound, name  # the default bar, min_relevance 0.5 (docs/judge.md)
