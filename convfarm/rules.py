"""The conversation rules: read the prompt, parse, normalise, judge. Pure functions, no Redis, no model.

The seed procedure's rules (docs/rules-and-modes.md, "Rules and reason codes") and what goes
beyond them. Each check looks at a new turn in the context of the turns before
it and returns a reason code or ``None``, so the same checks run

* while the model streams (:class:`TranscriptJudge`: a doomed conversation stops at once),
* on a finished conversation (:func:`evaluate`: the collector's re-check, ``producer filter``),
* one by one for a person tuning a prompt (:func:`rule_verdicts`, ``producer try``).

How a prompt sets the conversation up (its opening turns, open line, expected speakers) is
read by :mod:`convfarm.prompt`.

Where the seed threw a conversation away for a blank line or a line without a speaker,
we skip blank lines and end the transcript at a non-speaker line, keeping what came before
when it holds at least one complete exchange (the seed accepted 0 of 8 example
conversations on small models because they put blank lines between turns).

The conversation can start in the prompt (``STUDENT: What does "x" mean?`` / ``TEACHER:``):
those prompt turns are part of the conversation and the judge starts with them; the first
turn is the one that must name the word, as in the seed, where it was the first generated line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache

from convfarm.exclude import ExcludePattern
from convfarm.messages import Turn

# The version of the rules' behaviour: bump it with any change to what a check, the order of
# the checks, the parsing here or the prompt reading in convfarm.prompt decides. A worker
# stamps its records with it (convfarm.judging.rules_stamp) and the collector re-checks a
# record only when the stamp differs from its own (docs/rules-and-modes.md).
RULES_VERSION = 1

# --- reason codes -----------------------------------------------------------------------------
WORD_MISSING = "word_missing"
NON_SPEAKER_LINE = "non_speaker_line"
EXCLUDED = "excluded"
TOO_FEW_TURNS = "too_few_turns"
TOO_MANY_TURNS = "too_many_turns"
NOT_ALTERNATING = "not_alternating"
UNEXPECTED_SPEAKER = "unexpected_speaker"
REPETITION = "repetition"
LINE_TOO_LONG = "line_too_long"
EMPTY_TEXT = "empty_text"
# not a rule on the transcript: the relevance judge scored it under the config's judge.min_relevance
OFF_TOPIC = "off_topic"

REASONS: dict[str, str] = {
    WORD_MISSING: "the first turn does not contain the word (seed rule)",
    NON_SPEAKER_LINE: "a line without 'SPEAKER:' before a complete exchange",
    EXCLUDED: "a line matches an exclude pattern (case-insensitive, seed rule)",
    TOO_FEW_TURNS: "fewer turns than min_turns (or the first line was cut off by max_tokens)",
    TOO_MANY_TURNS: "more turns than max_turns",
    NOT_ALTERNATING: "the same speaker twice in a row before a complete exchange",
    UNEXPECTED_SPEAKER: "a speaker that is not one of the two expected before a complete exchange",
    REPETITION: "a repeated turn or a turn that loops on itself before a complete exchange",
    LINE_TOO_LONG: "a turn longer than max_line_chars before a complete exchange",
    EMPTY_TEXT: "a speaker label with no text before a complete exchange",
    OFF_TOPIC: "the relevance judge scored it below judge.min_relevance (the score is kept)",
}

# "TEACHER: text", "Student 2: text", "**Teacher:** text", "TEACHER (smiling): text".
# A speaker is a short name that starts with a letter; a colon further into a sentence
# ("Note that: ...") does not make a speaker.
_SPEAKER_LINE = re.compile(
    r"^\s*[*_]*(?P<speaker>[A-Za-z][A-Za-z0-9 .'_-]{0,24}?)[*_]*\s*(?:\([^)]{0,40}\))?\s*[*_]*:[*_]*\s?(?P<text>.*)$"
)
_ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)

# Forms of address the seed removed at the start of a turn: "Teacher, ...",
# "Excuse me, Sir, ...", "Mr. Smith, ...", "Professor, ...".
_ADDRESS = r"(?:teacher|student|sir|madam|ma'am|miss|professor|prof\.|mr\.?|mrs\.?|ms\.?|dr\.?)"
_LEADING_ADDRESS = re.compile(
    rf"^(?:excuse me\s*[,!]?\s*)?{_ADDRESS}(?:\s+[A-Z][a-z]+)?\s*[,!]\s*", re.IGNORECASE
)
_QUOTES = {'"': '"', "\u201c": "\u201d", "'": "'", "\u2018": "\u2019"}
# a unit of 1-12 characters said 8+ times in a row: "hahahaha...", "!!!!!!!!", "no no no no ..."
_CHAR_LOOP = re.compile(r"(.{1,12}?)\1{7,}", re.DOTALL)


@dataclass(frozen=True)
class RuleContext:
    """What the checks need to know about the run (from the config and its prompt)."""

    word: str
    exclude: ExcludePattern | None = None  # the joined patterns, time-bounded (convfarm/exclude.py)
    speakers: tuple[str, ...] | None = None  # the expected speakers (one when only the opener is known)
    min_turns: int = 2
    max_turns: int = 16
    max_line_chars: int = 600

    @property
    def complete_exchange(self) -> int:
        """Turns needed before a transcript may end early and still be kept."""
        return max(2, self.min_turns)


# --- parsing and normalisation -----------------------------------------------------------------
def parse_speaker_line(line: str) -> Turn | None:
    """``"TEACHER: text"`` -> Turn; a line without a speaker -> None."""
    match = _SPEAKER_LINE.match(line)
    if not match:
        return None
    return Turn(speaker=match["speaker"].strip(), text=match["text"])


def strip_quotes(text: str) -> str:
    """``"quoted"`` -> ``quoted`` (seed rule); a quote that does not wrap the whole text stays."""
    text = text.strip()
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1] and text[0] not in text[1:-1]:
        return text[1:-1].strip()
    return text


def remove_address(text: str) -> str:
    """"Teacher, what is..." -> "What is..."; the seed upper-cases the letter that follows."""
    stripped = _LEADING_ADDRESS.sub("", text, count=1)
    if stripped == text or not stripped:
        return text
    return stripped[0].upper() + stripped[1:]


def normalise_text(text: str) -> str:
    """Whitespace collapsed, surrounding quotes and a leading form of address removed."""
    text = " ".join(text.split())
    return remove_address(strip_quotes(text))


def speaker_key(speaker: str) -> str:
    """``THE TEACHER``, ``Teacher`` and ``teacher`` are one speaker."""
    return _ARTICLE.sub("", " ".join(speaker.split())).casefold()


# --- checks on a new turn ----------------------------------------------------------------------
TurnCheck = Callable[[RuleContext, list[Turn], Turn], str | None]


def check_empty_text(ctx: RuleContext, before: list[Turn], turn: Turn) -> str | None:
    return EMPTY_TEXT if not turn.text.strip() else None


def check_speaker(ctx: RuleContext, before: list[Turn], turn: Turn) -> str | None:
    """Two speakers: the expected ones, or the opener and whoever answers first."""
    known = {speaker_key(s) for s in (*(ctx.speakers or ()), *(t.speaker for t in before))}
    if len(known) < 2 and speaker_key(turn.speaker) not in known:
        return None  # the second speaker introduces themselves
    return None if speaker_key(turn.speaker) in known else UNEXPECTED_SPEAKER


def check_alternation(ctx: RuleContext, before: list[Turn], turn: Turn) -> str | None:
    return NOT_ALTERNATING if before and speaker_key(before[-1].speaker) == speaker_key(turn.speaker) else None


def check_word_in_first_turn(ctx: RuleContext, before: list[Turn], turn: Turn) -> str | None:
    if before:
        return None
    return None if ctx.word.casefold() in turn.text.casefold() else WORD_MISSING


def check_excluded(ctx: RuleContext, before: list[Turn], turn: Turn) -> str | None:
    if ctx.exclude is None:
        return None
    return EXCLUDED if ctx.exclude.search(turn.text) or ctx.exclude.search(turn.speaker) else None


def check_line_length(ctx: RuleContext, before: list[Turn], turn: Turn) -> str | None:
    return LINE_TOO_LONG if len(turn.text) > ctx.max_line_chars else None


def check_repetition(ctx: RuleContext, before: list[Turn], turn: Turn) -> str | None:
    """A turn said before (or nearly), or a turn that loops on its own words (tiny models do both)."""
    if is_degenerate(turn.text):
        return REPETITION
    mine = _trigrams(turn.text)
    for earlier in before:
        if " ".join(earlier.text.casefold().split()) == " ".join(turn.text.casefold().split()):
            return REPETITION
        theirs = _trigrams(earlier.text)
        if len(mine) >= 4 and len(theirs) >= 4 and len(mine & theirs) / min(len(mine), len(theirs)) >= 0.8:
            return REPETITION  # an echo with a word or two changed
    return None


@lru_cache(maxsize=256)  # each turn is compared with every later one of its conversation: compute once
def _trigrams(text: str) -> frozenset[tuple[str, ...]]:
    words = re.findall(r"\w+", text.casefold())
    return frozenset(zip(words, words[1:], words[2:], strict=False))


def is_degenerate(text: str, *, min_trigrams: int = 12, min_distinct: float = 0.5) -> bool:
    """An n-gram loop ("the bridge is the bridge is the bridge ...") or a character loop."""
    if _CHAR_LOOP.search(text):
        return True
    words = text.casefold().split()
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    return len(trigrams) >= min_trigrams and len(set(trigrams)) / len(trigrams) < min_distinct


@dataclass(frozen=True)
class Rule:
    name: str
    check: TurnCheck


# Order matters: the first reason wins. A line that is not part of the conversation
# (wrong speaker, same speaker again) is judged as such before its content.
TURN_RULES: tuple[Rule, ...] = (
    Rule(EMPTY_TEXT, check_empty_text),
    Rule(UNEXPECTED_SPEAKER, check_speaker),
    Rule(NOT_ALTERNATING, check_alternation),
    Rule(WORD_MISSING, check_word_in_first_turn),
    Rule(EXCLUDED, check_excluded),
    Rule(LINE_TOO_LONG, check_line_length),
    Rule(REPETITION, check_repetition),
)
TURN_CHECKS: tuple[TurnCheck, ...] = tuple(rule.check for rule in TURN_RULES)
# Reasons about the *shape* of the transcript: after a complete exchange they end the
# transcript (what came before is kept); before it they reject. Content reasons
# (word_missing, excluded) always reject, as in the seed.
STRUCTURAL = frozenset({UNEXPECTED_SPEAKER, NOT_ALTERNATING, REPETITION, NON_SPEAKER_LINE, EMPTY_TEXT, LINE_TOO_LONG})


def check_turn(ctx: RuleContext, before: list[Turn], turn: Turn) -> str | None:
    for check in TURN_CHECKS:
        if reason := check(ctx, before, turn):
            return reason
    return None


def canonical_speaker(ctx: RuleContext, before: list[Turn], speaker: str) -> str:
    """``Teacher``, ``THE TEACHER`` and ``TEACHER`` are one speaker: use the configured (or first) spelling."""
    for known in (*(ctx.speakers or ()), *(t.speaker for t in before)):
        if speaker_key(known) == speaker_key(speaker):
            return known
    return speaker


def evaluate(ctx: RuleContext, turns: Iterable[Turn]) -> str | None:
    """The reason a finished conversation is rejected, or None to keep it."""
    kept: list[Turn] = []
    for turn in turns:
        if reason := check_turn(ctx, kept, turn):
            return reason
        kept.append(turn)
    if len(kept) < ctx.min_turns:
        return TOO_FEW_TURNS
    if len(kept) > ctx.max_turns:
        return TOO_MANY_TURNS
    return None


@dataclass(frozen=True)
class Verdict:
    rule: str
    reason: str | None  # None: keep
    turn: int | None = None  # the first turn (0-based) the rule objects to


def rule_verdicts(ctx: RuleContext, turns: Sequence[Turn]) -> list[Verdict]:
    """Every rule's verdict on a conversation, each on its own (what ``producer try`` shows)."""
    verdicts = []
    for rule in TURN_RULES:
        failed = next((i for i, turn in enumerate(turns) if rule.check(ctx, list(turns[:i]), turn)), None)
        verdicts.append(Verdict(rule.name, rule.name if failed is not None else None, failed))
    verdicts.append(Verdict(TOO_FEW_TURNS, TOO_FEW_TURNS if len(turns) < ctx.min_turns else None))
    verdicts.append(Verdict(TOO_MANY_TURNS, TOO_MANY_TURNS if len(turns) > ctx.max_turns else None))
    return verdicts


# --- the streaming judge -----------------------------------------------------------------------
class Decision(Enum):
    CONTINUE = "continue"
    END = "end"  # the transcript is over; keep what we have
    REJECT = "reject"  # the conversation is doomed; stop decoding


@dataclass
class TranscriptJudge:
    """Feed it the completion line by line as the model streams; it says when to stop.

    ``prompt_turns`` are the turns the prompt already holds; ``opening_speaker`` (with
    ``opening_text``) is the open last prompt line the first generated line continues.
    """

    ctx: RuleContext
    opening_speaker: str | None = None
    prompt_turns: Sequence[Turn] = ()
    opening_text: str = ""
    turns: list[Turn] = field(default_factory=list)
    reason: str | None = None
    detail: str | None = None
    ended_by: str = ""
    stopped_at: Turn | None = None  # the turn that rejected the conversation or ended the transcript
    _open: bool = False
    _blank_run: int = 0
    _line: str = ""  # streamed text after the last newline (feed_text)

    def __post_init__(self) -> None:
        self._open = self.opening_speaker is not None
        # the prompt's own turns face the same rules (the collector re-checks them): a word that
        # an exclude pattern matches dooms every conversation before a token is decoded
        for turn in self.prompt_turns:
            if reason := check_turn(self.ctx, self.turns, turn):
                self.stopped_at = turn
                self._reject(reason, f"the prompt's turn ({turn.speaker}): {_explain(self.ctx, reason, turn)}")
                return
            self.turns.append(turn)

    @property
    def decided(self) -> bool:
        return bool(self.ended_by)

    def feed_line(self, line: str) -> Decision:
        if not line.strip() and self._open and self.opening_text:
            # the prompt's last line is a complete turn ("STUDENT: What is x?") and the model went
            # straight to a new line: that turn stands as the prompt wrote it
            line = f"{self.opening_speaker}:"
        if not line.strip():
            self._blank_run += 1
            # a run of blank lines after a complete exchange is the end of the transcript
            if self._blank_run >= 2 and len(self.turns) >= self.ctx.complete_exchange:
                return self._end("transcript_end:blank_lines")
            return Decision.CONTINUE  # single blank lines between turns: skipped (the seed rejected here)
        self._blank_run = 0
        parsed = parse_speaker_line(line)
        if self._open:
            # the first words continue the open prompt line ("TEACHER:"); a model that
            # repeats the label ("TEACHER: ...") or starts on a new line is fine too
            self._open = False
            assert self.opening_speaker is not None
            if parsed is not None and speaker_key(parsed.speaker) == speaker_key(self.opening_speaker):
                text = parsed.text
            else:
                text = line
            turn: Turn | None = Turn(speaker=self.opening_speaker, text=f"{self.opening_text} {text}".strip())
        else:
            turn = parsed
        if turn is None:
            return self._stop_structural(NON_SPEAKER_LINE, f"line without a speaker: {line.strip()[:80]!r}")
        turn = Turn(speaker=canonical_speaker(self.ctx, self.turns, turn.speaker), text=normalise_text(turn.text))
        if reason := check_turn(self.ctx, self.turns, turn):
            self.stopped_at = turn
            detail = f"turn {len(self.turns) + 1} ({turn.speaker}): {_explain(self.ctx, reason, turn)}"
            return self._stop_structural(reason, detail) if reason in STRUCTURAL else self._reject(reason, detail)
        self.turns.append(turn)
        if len(self.turns) >= self.ctx.max_turns:
            return self._end("max_turns")
        return Decision.CONTINUE

    def feed_partial(self, partial_line: str) -> Decision:
        """Checks that can decide on an unfinished line: a line that never ends, or loops, or is excluded."""
        if len(partial_line) > self.ctx.max_line_chars + 40:
            return self._stop_structural(LINE_TOO_LONG, f"a line longer than {self.ctx.max_line_chars} characters")
        if len(partial_line) >= 60 and is_degenerate(partial_line):
            return self._stop_structural(REPETITION, f"a line that loops: {partial_line[:80]!r}")
        if self.ctx.exclude is not None and self._partial_is_a_turn(partial_line):
            # judge only the words that are complete: a pattern such as "kill\b" must not fire
            # on "kill" when the next token makes it "killer"
            complete = partial_line[: max(partial_line.rfind(" "), 0)]
            if match := self.ctx.exclude.search(complete):
                return self._reject(EXCLUDED, f"matches exclude pattern: {match.group(0)!r}")
        return Decision.CONTINUE

    def _partial_is_a_turn(self, partial_line: str) -> bool:
        """Would this line, once complete, be a turn of the conversation? A line that will end the
        transcript instead ("MADE BY: ... skills") must not reject it for its content."""
        if self._open:
            return True
        parsed = parse_speaker_line(partial_line)
        if parsed is None:
            return False
        turn = Turn(speaker=canonical_speaker(self.ctx, self.turns, parsed.speaker), text=parsed.text)
        return check_speaker(self.ctx, self.turns, turn) is None and check_alternation(self.ctx, self.turns, turn) is None

    def feed_text(self, text: str) -> None:
        """A streamed chunk of the completion: complete lines are judged as lines, the rest as a partial line.

        The one loop between a token stream and the judge (the engine feeds every sequence's chunks here).
        """
        if self.decided:
            return  # decoding past the decision (early_stop=False): judge no more
        self._line += text
        while "\n" in self._line and not self.decided:
            complete, self._line = self._line.split("\n", 1)
            self.feed_line(complete)
        if not self.decided:
            self.feed_partial(self._line)

    def end_stream(self, finish: str | None) -> None:
        """The token stream fed through :meth:`feed_text` is over (``finish``: "length" when max_tokens cut it)."""
        if not self.decided:
            self.finish("max_tokens" if finish == "length" else "eos", trailing=self._line)

    def finish(self, ended_by: str, trailing: str = "") -> str | None:
        """The stream is over (``eos`` or ``max_tokens``). Returns the reason to reject, if any.

        A line cut off by the token limit is dropped; a last line ended by the model is judged.
        """
        if self.decided:
            return self.reason
        if trailing.strip() and ended_by == "eos" and self.feed_line(trailing) is not Decision.CONTINUE:
            return self.reason
        self.ended_by = ended_by
        if len(self.turns) < self.ctx.min_turns:
            self.reason = TOO_FEW_TURNS
            self.detail = f"{len(self.turns)} turn(s), min_turns is {self.ctx.min_turns}" + (
                "; the last line was cut off by max_tokens" if ended_by == "max_tokens" and trailing.strip() else "")
        return self.reason

    def _stop_structural(self, reason: str, detail: str) -> Decision:
        if len(self.turns) >= self.ctx.complete_exchange:
            return self._end(f"transcript_end:{reason}")
        return self._reject(reason, detail)

    def _end(self, why: str) -> Decision:
        self.ended_by = why
        if len(self.turns) < self.ctx.min_turns:
            self.reason = TOO_FEW_TURNS
            self.detail = f"{len(self.turns)} turn(s), min_turns is {self.ctx.min_turns}"
            return Decision.REJECT
        return Decision.END

    def _reject(self, reason: str, detail: str) -> Decision:
        self.reason = reason
        self.detail = detail
        self.ended_by = f"rule:{reason}"
        return Decision.REJECT


def _explain(ctx: RuleContext, reason: str, turn: Turn) -> str:
    if reason == WORD_MISSING:
        return f"{ctx.word!r} not in {turn.text[:80]!r}"
    if reason == UNEXPECTED_SPEAKER:
        return f"speaker {turn.speaker!r} is not one of {', '.join(ctx.speakers or ())}"
    if reason == EXCLUDED and ctx.exclude is not None:
        match = ctx.exclude.search(turn.text) or ctx.exclude.search(turn.speaker)
        return f"matches exclude pattern: {match.group(0) if match else ''!r}"
    if reason == LINE_TOO_LONG:
        return f"{len(turn.text)} characters, max_line_chars is {ctx.max_line_chars}"
    return REASONS.get(reason, reason)


def roles_for(turns: list[Turn], mapping: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The common chat form: the speaker who opens is the ``user``, the other the ``assistant``.

    ``mapping`` (speaker -> role, matched case-insensitively) overrides that for the speakers it names.
    """
    if not turns:
        return []
    opener = speaker_key(turns[0].speaker)
    given = {speaker_key(k): v for k, v in (mapping or {}).items()}

    def role(speaker: str) -> str:
        key = speaker_key(speaker)
        return given.get(key) or ("user" if key == opener else "assistant")

    return [{"role": role(t.speaker), "content": t.text} for t in turns]


def training_messages(turns: list[Turn], mapping: dict[str, str] | None = None) -> list[dict[str, str]]:
    """:func:`roles_for`, ending on an assistant turn: a trailing question nobody answers is dropped.

    The one rule for every record's ``messages`` and every export (docs/design.md, "Messages and
    the record"): ``messages`` is what a trainer reads, so it never ends on the user; ``turns``
    keeps the transcript as generated.
    """
    messages = roles_for(turns, mapping)
    while messages and messages[-1]["role"] == "user":
        messages.pop()
    return messages
