"""The judge's methods: each turns one conversation into score requests and readings into [0, 1].

All of them read log-probabilities from one prefill per request (docs/judge.md has the formulas
and the measured table that chose the default):

* :class:`YesNoQuestion` — ask whether the transcript teaches the word; P(" yes") normalised over
  " yes" and " no" (a reranker's relevance);
* :class:`WeightedRating` — ask for a 1–5 rating; the probability-weighted mean of the rating
  tokens, mapped to [0, 1] (the weighted mean beats the top token for small judges);
* :class:`ConditionalLikelihood` — how much more likely the transcript is after a header naming the
  topic and the word than after a neutral one: the mean per-token log-probability gain (a PMI;
  with an empty neutral header it is Superfiltering's perplexity ratio), squashed by a logistic;
* :class:`SubjectChoice` — after the conversation, which subject is it a lesson about, and which
  word does it explain: two multiple choices (the config's topic among others, the word among the
  run's other words) read from one prefill, blended by a logistic;
* :class:`LogisticBlend` — a logistic of several methods' logits, weights fitted on a labelled set.

A method's ``requests`` and ``score`` agree on the number of requests it makes
(:attr:`n_requests`), so a blend can hand each part its own readings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from convfarm.judge.relevance import ScoreReading, ScoreRequest, Tokenize, transcript, yes_probability
from convfarm.messages import Turn

# a chat wrapper around a question; "{prompt}" is replaced by the question's text
CHATML = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
GEMMA_CHAT = "<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n"


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def logit(p: float, eps: float = 1e-6) -> float:
    """log(p / (1 - p)), with p kept inside [eps, 1 - eps] so a certain part cannot dominate a blend."""
    p = min(1.0 - eps, max(eps, p))
    return math.log(p / (1.0 - p))


def mean(values: Sequence[float]) -> float:
    """The mean; NaN for no values (the caller's score turns NaN into 0: nothing to judge is not on topic)."""
    return sum(values) / len(values) if values else math.nan


def subject(topic: str | None, word: str) -> str:
    return f"the {topic} term \"{word}\"" if topic else f"the word \"{word}\""


def with_bos(bos: int | None, tokens: list[int]) -> tuple[int, ...]:
    return tuple(([bos] if bos is not None else []) + tokens)


def shared_preamble(tokens: Sequence[int], preamble: str, tokenize: Tokenize, bos: int | None) -> int:
    """How many of ``tokens`` are the preamble's own tokens: those of the preamble tokenized alone that
    the whole prompt starts with (a merge across the preamble's last boundary stays out), 0 without one."""
    if not preamble:
        return 0
    alone = with_bos(bos, tokenize(preamble))
    n = 0
    while n < min(len(alone), len(tokens)) and alone[n] == tokens[n]:
        n += 1
    return n


# Worked examples for a few-shot question: other topics and words than the calibration set's (geography,
# music), one of each verdict and of the commonest failures (another sense, drift), so the examples teach
# the question's format and what "no" means, not the answers to the set.
FEW_SHOT = (
    ("geography", "volcano", "STUDENT: What does \"volcano\" mean in geography?\nTEACHER: A volcano is an opening in "
     "the Earth's crust where melted rock, ash and gas come out. Mount Etna in Italy is an active volcano.", "yes"),
    ("music", "chord", "STUDENT: What does \"chord\" mean in music?\nTEACHER: A chord is a thin rope. Sailors tie "
     "their boats with a strong chord, and my grandfather kept one in his shed.", "no"),
    ("geography", "delta", "STUDENT: What does \"delta\" mean in geography?\nTEACHER: Delta is an airline. Last summer "
     "we flew to Florida and the food on the plane was great. We swam every day.", "no"),
    ("music", "tempo", "STUDENT: What does \"tempo\" mean in music?\nTEACHER: Tempo is the speed of a piece of "
     "music, how fast or slow the beat goes. A march has a quick tempo and a lullaby a slow one.", "yes"),
)

# ... and one of every failure the calibration set names (another word, nonsense, a word only repeated)
FEW_SHOT_8 = (
    *FEW_SHOT[:2],
    ("history", "empire", "STUDENT: What does \"empire\" mean in history?\nTEACHER: Let me explain a republic. A "
     "republic is a state where the people elect their leaders instead of having a king.", "no"),
    ("music", "tempo", FEW_SHOT[3][2], "yes"),
    ("geography", "glacier", "STUDENT: What does \"glacier\" mean in geography?\nTEACHER: A glacier is a song that "
     "the mountains sing in winter, and only the goats can dance to it on Sundays.", "no"),
    ("history", "treaty", "STUDENT: What does \"treaty\" mean in history?\nTEACHER: A treaty is a written agreement "
     "between countries, for example to end a war or to set a border.", "yes"),
    FEW_SHOT[2],
    ("music", "rhythm", "STUDENT: What does \"rhythm\" mean in music?\nTEACHER: Rhythm means rhythm. It is rhythm in "
     "music.\nSTUDENT: What is rhythm?\nTEACHER: Rhythm is rhythm.", "no"),
)


@dataclass(frozen=True)
class YesNoQuestion:
    """Ask whether the conversation explains the word (and stays on it); read P(" yes") vs P(" no").

    ``question_first`` puts the question before the transcript (then repeats it in short after it,
    so the answer still follows a question); ``use_topic`` names the config's topic in the question;
    ``template`` wraps the whole prompt in a chat template (``CHATML``, ``GEMMA_CHAT``; the tokenizer must
    parse its special tokens); ``few_shot`` puts worked examples (other topics) before the conversation.
    """

    name: str = "yes-no"
    version: int = 1
    use_topic: bool = True
    question_first: bool = False
    template: str | None = None
    few_shot: tuple[tuple[str, str, str, str], ...] = ()  # (topic, word, transcript, "yes"/"no") before the question
    # added to log P(" yes") before normalising: fitted so that 0.5 is the labelled set's best threshold (the
    # model's own P(yes) sits far from 0.5 for every answer; the ranking, hence the AUC, does not change)
    yes_shift: float = 0.0
    n_requests: int = 1

    def preamble(self) -> str:
        """The worked examples: the same text before every conversation ("" without ``few_shot``)."""
        return "".join(
            f"Conversation:\n{text}\n\nQuestion: Does this conversation explain "
            f"{subject(t if self.use_topic else None, w)} correctly and stay on that subject? "
            f"Answer yes or no.\nAnswer: {verdict}\n\n" for t, w, text, verdict in self.few_shot)

    def prompt(self, topic: str | None, word: str, turns: Sequence[Turn]) -> str:
        what = subject(topic if self.use_topic else None, word)
        question = f"Does this conversation explain {what} correctly and stay on that subject?"
        if self.few_shot:  # the examples first: the same prefix for every conversation (a KV cache keeps it)
            return (f"{self.preamble()}Conversation:\n{transcript(turns)}\n\nQuestion: {question} "
                    "Answer yes or no.\nAnswer:")
        if self.question_first:
            text = f"{question}\n\nConversation:\n{transcript(turns)}\n\nQuestion: {question} Answer yes or no.\nAnswer:"
        else:
            text = f"Conversation:\n{transcript(turns)}\n\nQuestion: {question} Answer yes or no.\nAnswer:"
        return self.template.format(prompt=text.removesuffix("\nAnswer:")) if self.template else text

    def requests(self, *, topic: str | None, word: str, turns: Sequence[Turn], tokenize: Tokenize,
                 bos: int | None) -> list[ScoreRequest]:
        tokens = with_bos(bos, tokenize(self.prompt(topic, word, turns)))
        # after a chat template the answer starts a line ("Yes"); in plain text it follows "Answer:" (" yes")
        yes, no = (tokenize("Yes")[0], tokenize("No")[0]) if self.template else (tokenize(" yes")[0], tokenize(" no")[0])
        return [ScoreRequest(tokens=tokens, candidates=(yes, no), shared=shared_preamble(tokens, self.preamble(), tokenize, bos))]

    def score(self, readings: Sequence[ScoreReading]) -> float:
        log_yes, log_no = readings[0].candidates
        return yes_probability(log_yes + self.yes_shift, log_no)


@dataclass(frozen=True)
class WeightedRating:
    """A 1–5 rating as the probability-weighted mean of the five rating tokens, mapped to [0, 1].

    The prompt ends with the space before the digit (its own token in both bundled tokenizers:
    " 1" is [space, "1"]), so the candidates are the digits exactly as the model would spell them.
    """

    name: str = "rating-1-5"
    version: int = 1
    use_topic: bool = True
    n_requests: int = 1

    def prompt(self, topic: str | None, word: str, turns: Sequence[Turn]) -> str:
        what = subject(topic if self.use_topic else None, word)
        return (f"Conversation:\n{transcript(turns)}\n\n"
                f"How well does this conversation explain {what} and stay on that subject? "
                "Rate it from 1 (not at all: another meaning, another subject, or nonsense) to 5 (a clear, correct "
                "explanation).\nRating:")

    def requests(self, *, topic: str | None, word: str, turns: Sequence[Turn], tokenize: Tokenize,
                 bos: int | None) -> list[ScoreRequest]:
        spelled = [tokenize(f" {d}") for d in "12345"]
        prefix = spelled[0][:-1]  # the space token(s) before a digit
        tokens = with_bos(bos, tokenize(self.prompt(topic, word, turns)) + prefix)
        return [ScoreRequest(tokens=tokens, candidates=tuple(s[-1] for s in spelled))]

    def score(self, readings: Sequence[ScoreReading]) -> float:
        logs = readings[0].candidates
        top = max(logs)
        weights = [math.exp(x - top) for x in logs]
        expected = sum((i + 1) * w for i, w in enumerate(weights)) / sum(weights)
        return (expected - 1.0) / 4.0


@dataclass(frozen=True)
class ConditionalLikelihood:
    """Mean log-probability of the conversation after a header naming topic and word, minus after a neutral one.

    pmi = mean_i log P(x_i | on-topic header, x_<i) − mean_i log P(x_i | neutral header, x_<i), over the
    conversation's tokens from ``skip_turns`` on (the earlier turns stay in the context: the prompt's
    own opening line names the word and would gain under any header). With ``neutral=""`` the second
    term is the conversation alone: −log of Superfiltering's perplexity ratio ppl(answer | instruction) /
    ppl(answer). The neutral header may name ``{topic}`` (and ``{word}``): "a {topic} lesson that
    explains the meaning of another word" contrasts the word against its topic alone. The score is
    ``sigmoid(scale · (pmi − center))``; ``center`` and ``scale`` are fitted on a labelled set per model
    (they change the threshold, not the ranking).
    """

    name: str = "pmi-lesson"
    version: int = 1
    header: str = "The following is a {topic} lesson that explains the meaning of \"{word}\".\n\n"
    header_no_topic: str = "The following is a lesson that explains the meaning of the word \"{word}\".\n\n"
    neutral: str = "The following is a conversation.\n\n"
    neutral_no_topic: str | None = None  # the neutral header without a topic (None: ``neutral``)
    skip_turns: int = 1
    center: float = 0.0
    scale: float = 5.0
    n_requests: int = 2

    def requests(self, *, topic: str | None, word: str, turns: Sequence[Turn], tokenize: Tokenize,
                 bos: int | None) -> list[ScoreRequest]:
        header = self.header.format(topic=topic, word=word) if topic else self.header_no_topic.format(word=word)
        neutral = (self.neutral if topic or self.neutral_no_topic is None else self.neutral_no_topic).format(
            topic=topic, word=word)
        kept = max(0, min(self.skip_turns, len(turns) - 1))
        context = transcript(turns[:kept]) + "\n" if kept else ""
        body = tokenize(transcript(turns[kept:]))
        out = []
        for head in (header, neutral):
            before = with_bos(bos, tokenize(head + context) if head + context else [])
            # the conversation's tokens are the same in both requests: the two means compare like with like
            out.append(ScoreRequest(tokens=before + tuple(body), span_start=max(1, len(before))))
        return out

    def pmi(self, readings: Sequence[ScoreReading]) -> float:
        on, off = readings[0].span, readings[1].span
        return mean(on) - mean(off)

    def score(self, readings: Sequence[ScoreReading]) -> float:
        value = self.pmi(readings)
        return math.nan if value != value else sigmoid(self.scale * (value - self.center))


@dataclass(frozen=True)
class ConversationLikelihood:
    """Mean log-probability of the conversation's answer turns after a header and its first turns: one prefill.

    The first request of :class:`ConditionalLikelihood` alone: how expected the answers are after the
    question and the header (with a neutral header: after the question alone), without the second
    prefill's baseline, which cancels how plain or odd the text is. Score ``sigmoid(scale · (mean − center))``.
    """

    name: str = "likelihood-lesson"
    version: int = 1
    header: str = "The following is a {topic} lesson that explains the meaning of \"{word}\".\n\n"
    header_no_topic: str = "The following is a lesson that explains the meaning of the word \"{word}\".\n\n"
    skip_turns: int = 1
    center: float = 0.0
    scale: float = 1.0
    n_requests: int = 1

    def requests(self, *, topic: str | None, word: str, turns: Sequence[Turn], tokenize: Tokenize,
                 bos: int | None) -> list[ScoreRequest]:
        pmi = ConditionalLikelihood(header=self.header, header_no_topic=self.header_no_topic, skip_turns=self.skip_turns)
        return pmi.requests(topic=topic, word=word, turns=turns, tokenize=tokenize, bos=bos)[:1]

    def pmi(self, readings: Sequence[ScoreReading]) -> float:  # the raw value the calibration fits
        return mean(readings[0].span)

    def score(self, readings: Sequence[ScoreReading]) -> float:
        value = self.pmi(readings)
        return math.nan if value != value else sigmoid(self.scale * (value - self.center))


@dataclass(frozen=True)
class SummaryLikelihood:
    """How much the conversation raises the likelihood of a one-line summary naming topic and word.

    gain = Σ log P(summary | conversation) − Σ log P(summary | nothing), the summary being
    "This conversation is a {topic} lesson that explains the meaning of "{word}"." (without a topic:
    "… a lesson that explains …"): the pointwise mutual information between the conversation and
    what it should teach. The conversation's turns from ``skip_turns`` on are shown (the prompt's
    own opening line names topic and word and would raise it for any answer). Another sense of
    the word, drift, another word or nonsense leave the summary no likelier than before. The score
    is ``sigmoid(scale · (gain − center))``, ``center``/``scale`` fitted on a labelled set.
    """

    name: str = "summary-pmi"
    version: int = 1
    summary: str = "This conversation is a {topic} lesson that explains the meaning of \"{word}\"."
    summary_no_topic: str = "This conversation is a lesson that explains the meaning of the word \"{word}\"."
    skip_turns: int = 1
    center: float = 0.0
    scale: float = 1.0
    n_requests: int = 2

    def requests(self, *, topic: str | None, word: str, turns: Sequence[Turn], tokenize: Tokenize,
                 bos: int | None) -> list[ScoreRequest]:
        summary = tokenize(self.summary.format(topic=topic, word=word) if topic else self.summary_no_topic.format(word=word))
        kept = max(0, min(self.skip_turns, len(turns) - 1))
        shown = with_bos(bos, tokenize(f"Conversation:\n{transcript(turns[kept:])}\n\n"))
        alone = with_bos(bos, tokenize("Conversation:\n\n"))
        return [ScoreRequest(tokens=shown + tuple(summary), span_start=len(shown)),
                ScoreRequest(tokens=alone + tuple(summary), span_start=len(alone))]

    def gain(self, readings: Sequence[ScoreReading]) -> float:
        shown, alone = readings[0].span, readings[1].span
        return sum(shown) - sum(alone) if shown and alone else math.nan

    def pmi(self, readings: Sequence[ScoreReading]) -> float:  # the raw value the calibration fits (as for ConditionalLikelihood)
        return self.gain(readings)

    def score(self, readings: Sequence[ScoreReading]) -> float:
        value = self.gain(readings)
        return math.nan if value != value else sigmoid(self.scale * (value - self.center))


def choice_log_probability(log_probs: Sequence[float]) -> float:
    """log P(the first choice) normalised over all: ``log_probs[0] − logsumexp(log_probs)``, in (−∞, 0];
    0 with one choice (nothing to tell apart). The candidates' log-probabilities come from one position."""
    if not log_probs:
        return math.nan
    top = max(log_probs)
    return log_probs[0] - top - math.log(sum(math.exp(x - top) for x in log_probs))


# Subjects a lesson could be about instead of the config's topic (it is added when it is not here): school
# subjects, and where small models drift (stories, feelings, family, travel, money). Other topics' first tokens
# must differ from the config topic's to count (a shared first token cannot be told apart and is left out).
SUBJECTS = ("physics", "chemistry", "biology", "mathematics", "cooking", "music", "history", "geography", "art",
            "sports", "business", "everyday life", "family", "travel", "feelings", "fiction")
# Words a conversation could explain instead of its own, after the run's other words (up to ``n_words``
# alternatives in all): common nouns of no one subject, so a run of one word still has a choice to make.
COMMON_WORDS = ("table", "music", "money", "house", "water", "friend", "story", "garden", "letter", "window",
                "animal", "color", "paper", "street", "dinner", "mountain")


def first_tokens(tokenize: Tokenize, true: str, others: Sequence[str]) -> tuple[int, ...]:
    """The first token of ``true`` then those of ``others`` that differ from it and from each other."""
    mine = tokenize(true)[0]
    out = [mine]
    for other in others:
        ids = tokenize(other)
        if ids and ids[0] not in out:
            out.append(ids[0])
    return tuple(out)


@dataclass(frozen=True)
class SubjectChoice:
    """Which subject is this conversation a lesson about, and which word does it explain? One prefill.

    The transcript from its second turn on (the opening line names the word whatever follows), then
    "This conversation is a lesson about" — read there: the config's topic against :data:`SUBJECTS` —
    then the true topic and "It explains the {topic} term "" — read there: the word against ``words`` (the
    run's other words, then :data:`COMMON_WORDS`, ``n_words`` in all). Each choice reads the first token of
    every candidate at one position (:attr:`ScoreRequest.probes`) and is the log-probability of the true
    one normalised over them (:func:`choice_log_probability`). Another sense of the word, drift and
    nonsense lose the subject; a conversation about another word, or that only repeats its own, loses the
    word. Without a topic only the word is asked ("It explains the word "").

    Score ``sigmoid(bias + topic_weight · subject + word_weight · word)``, fitted on the labelled set's dev
    split (docs/judge.md). Without a topic there is no subject to read: it counts as
    ``subject_without_topic``, the mean subject reading of the dev split's on-topic conversations, so a
    run without a topic is scored on the same scale as one with (counting it certain, 0, lifted every
    such conversation above the topical ones). ``words`` is the run's word list: :func:`named_method`
    fills it from the config.
    """

    name: str = "subject-choice"
    version: int = 1
    words: tuple[str, ...] = ()
    n_words: int = 15
    skip_turns: int = 1
    topic_weight: float = 2.0
    word_weight: float = 1.0
    bias: float = 2.0
    subject_without_topic: float = 0.0
    n_requests: int = 1

    def alternatives(self, word: str) -> list[str]:
        others = [w for w in dict.fromkeys(self.words) if w != word][: self.n_words]
        return others + [w for w in COMMON_WORDS if w != word and w not in others][: self.n_words - len(others)]

    def requests(self, *, topic: str | None, word: str, turns: Sequence[Turn], tokenize: Tokenize,
                 bos: int | None) -> list[ScoreRequest]:
        kept = max(0, min(self.skip_turns, len(turns) - 1))
        tokens = list(with_bos(bos, tokenize(f"Conversation:\n{transcript(turns[kept:])}\n\n")))
        probes = []
        if topic:
            tokens += tokenize("This conversation is a lesson about")
            subjects = [s for s in SUBJECTS if s != topic]
            probes.append((len(tokens) - 1, first_tokens(tokenize, f" {topic}", [f" {s}" for s in subjects])))
            tokens += tokenize(f" {topic}. It explains the {topic} term \"")
        else:
            tokens += tokenize("This conversation explains the word \"")
        probes.append((len(tokens) - 1, first_tokens(tokenize, word, self.alternatives(word))))
        return [ScoreRequest(tokens=tuple(tokens), probes=tuple(probes))]

    def choices(self, readings: Sequence[ScoreReading]) -> tuple[float, float]:
        """(subject, word): each choice's log-probability; without a topic (one probe) the subject is
        ``subject_without_topic``."""
        probes = readings[0].probes
        word = choice_log_probability(probes[-1])
        return (choice_log_probability(probes[0]) if len(probes) > 1 else self.subject_without_topic), word

    def score(self, readings: Sequence[ScoreReading]) -> float:
        topic_part, word_part = self.choices(readings)
        if word_part != word_part:
            return math.nan
        return sigmoid(self.bias + self.topic_weight * topic_part + self.word_weight * word_part)


@dataclass(frozen=True)
class LogisticBlend:
    """sigmoid(bias + Σ weight_i · logit(score_i)): a blend of methods, each reading its own requests."""

    parts: tuple[YesNoQuestion | WeightedRating | ConditionalLikelihood | ConversationLikelihood | SummaryLikelihood, ...]
    weights: tuple[float, ...]
    bias: float = 0.0
    name: str = "blend"
    version: int = 1

    @property
    def n_requests(self) -> int:
        return sum(p.n_requests for p in self.parts)

    def requests(self, *, topic: str | None, word: str, turns: Sequence[Turn], tokenize: Tokenize,
                 bos: int | None) -> list[ScoreRequest]:
        return [r for p in self.parts for r in p.requests(topic=topic, word=word, turns=turns, tokenize=tokenize, bos=bos)]

    def part_scores(self, readings: Sequence[ScoreReading]) -> list[float]:
        scores, at = [], 0
        for part in self.parts:
            scores.append(part.score(readings[at:at + part.n_requests]))
            at += part.n_requests
        return scores

    def score(self, readings: Sequence[ScoreReading]) -> float:
        scores = self.part_scores(readings)
        if any(s != s for s in scores):
            return math.nan
        return sigmoid(self.bias + sum(w * logit(s) for w, s in zip(self.weights, scores, strict=True)))


Method = YesNoQuestion | WeightedRating | ConditionalLikelihood | SummaryLikelihood | SubjectChoice | LogisticBlend


def few_shot_question() -> YesNoQuestion:
    """``yes-no-few-shot`` (the default until 2026-12-06): the plain-text yes/no question after four worked examples on
    other topics; ``yes_shift`` puts the dev split's best threshold at 0.5, the default ``min_relevance``
    bar. One prefill, and the examples' KV cache is kept by the engine (docs/judge.md, "The judge's cost")."""
    return YesNoQuestion(name="yes-no-few-shot", version=1, few_shot=FEW_SHOT, yes_shift=1.851)


def few_shot_and_likelihood() -> LogisticBlend:
    """``yes-no-few-shot+likelihood``: a logistic blend of the few-shot question and the mean
    log-probability of the answer turns after the question under a neutral header (how expected the
    answers are). Weights, bias and the parts' constants fitted on the dev split. Better ranked than
    the question alone on both splits, at about twice its cost, and its scores move more with what
    shares the engine's batch (docs/judge.md, "The method")."""
    return LogisticBlend(
        parts=(few_shot_question(),
               ConversationLikelihood(name="likelihood-question", header=ConditionalLikelihood.neutral,
                                      header_no_topic=ConditionalLikelihood.neutral, center=-2.6528, scale=1.912)),
        weights=(3.162, 0.837), bias=-0.361, name="yes-no-few-shot+likelihood", version=1)


def subject_choice() -> SubjectChoice:
    """``subject-choice``, the default: the subject and the word as two multiple choices after the
    conversation, one prefill without worked examples; weights and bias fitted on the dev split, so
    that 0.5 is its boundary (docs/judge.md, "The method")."""
    return SubjectChoice(topic_weight=1.8, word_weight=0.963, bias=2.201, subject_without_topic=-0.378)


# what a config's ``judge.method`` may name (convfarm.config.JudgeMethodName spells the same names)
NAMED_METHODS = {"subject-choice": subject_choice, "yes-no-few-shot": few_shot_question,
                 "yes-no-few-shot+likelihood": few_shot_and_likelihood}
DEFAULT_METHOD = "subject-choice"


def default_method() -> Method:
    """The method a config that names none gets, chosen on the labelled set with the bundled model
    (docs/judge.md, "The method"): the subject and word choices, the best ranked and the cheapest."""
    return NAMED_METHODS[DEFAULT_METHOD]()


def with_run_words(method: Method, words: Sequence[str]) -> Method:
    """The method for a run of ``words``: a method that chooses among the run's words gets them, others are unchanged."""
    return replace(method, words=tuple(words)) if isinstance(method, SubjectChoice) else method


def named_method(name: str | None, words: Sequence[str] = ()) -> Method:
    """The named method (the default for None), for a run of ``words`` (:func:`with_run_words`)."""
    return with_run_words(NAMED_METHODS[name or DEFAULT_METHOD](), words)
