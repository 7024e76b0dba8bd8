"""The conversation rules: parse, normalise, judge. Pure functions, no Redis, no model.

The seed procedure's rules (``../shared/research/seed-procedure.md``) and what goes
beyond them (SPEC §5). Each check looks at a new turn in the context of the turns before
it and returns a reason code or ``None``, so the same checks run

* while the model streams (:class:`TranscriptJudge`: a doomed conversation stops at once),
* on a finished conversation (:func:`evaluate`: the collector's re-check, ``producer filter``).

Where the seed threw a conversation away for a blank line or a line without a speaker,
we end the transcript there instead, keeping what came before when it holds at least one
complete exchange (the seed accepted 0 of 8 example conversations on small models because
they put blank lines between turns).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

from producer.messages import Turn

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

# "TEACHER: text", "Student 2: text". A speaker is a short name that starts with a letter;
# a colon further into a sentence ("Note: ...") is allowed, but only once per name.
_SPEAKER_LINE = re.compile(r"^\s*\**(?P<speaker>[A-Za-z][A-Za-z0-9 .'_-]{0,24}?)\**\s*:\s?(?P<text>.*)$")

# Forms of address the seed removed at the start of a turn: "Teacher, ...",
# "Excuse me, Sir, ...", "Mr. Smith, ...", "Professor, ...".
_ADDRESS = r"(?:teacher|student|sir|madam|ma'am|miss|professor|prof\.|mr\.?|mrs\.?|ms\.?|dr\.?)"
_LEADING_ADDRESS = re.compile(
    rf"^(?:excuse me\s*,\s*)?{_ADDRESS}(?:\s+[A-Z][a-z]+)?\s*[,!]\s*", re.IGNORECASE
)
_QUOTES = {'"': '"', "\u201c": "\u201d", "'": "'"}


@dataclass(frozen=True)
class RuleContext:
    """What the checks need to know about the run (from the config)."""

    word: str
    exclude: re.Pattern[str] | None = None
    speakers: tuple[str, ...] | None = None  # the two expected speakers, if fixed
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
    text = text.strip()
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1] and text.count(text[0]) <= 2:
        return text[1:-1].strip()
    return text


def remove_address(text: str) -> str:
    """"Teacher, what is..." -> "What is..."; the seed upper-cases the letter that follows."""
    stripped = _LEADING_ADDRESS.sub("", text, count=1)
    if stripped is text or not stripped:
        return text
    return stripped[0].upper() + stripped[1:]


def normalise_text(text: str) -> str:
    text = " ".join(text.split())
    return remove_address(strip_quotes(text))


def split_transcript(text: str, opening_speaker: str | None) -> list[str]:
    """The lines of a completion; the first continues the opening speaker's turn."""
    lines = text.split("\n")
    if opening_speaker is not None and lines:
        lines[0] = f"{opening_speaker}: {lines[0].lstrip()}"
    return lines


# --- checks on a new turn ----------------------------------------------------------------------
TurnCheck = Callable[[RuleContext, list[Turn], Turn], str | None]


def check_empty_text(ctx: RuleContext, before: list[Turn], turn: Turn) -> str | None:
    return EMPTY_TEXT if not turn.text.strip() else None


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


def check_speaker(ctx: RuleContext, before: list[Turn], turn: Turn) -> str | None:
    known = ctx.speakers or tuple(dict.fromkeys(t.speaker for t in before))
    if len(known) < 2 and turn.speaker not in known:
        return None  # the second speaker introduces themselves
    return None if turn.speaker in known else UNEXPECTED_SPEAKER


def check_alternation(ctx: RuleContext, before: list[Turn], turn: Turn) -> str | None:
    return NOT_ALTERNATING if before and before[-1].speaker == turn.speaker else None


def check_repetition(ctx: RuleContext, before: list[Turn], turn: Turn) -> str | None:
    """A turn said before, or a turn that loops on its own words (tiny models do both)."""
    key = turn.text.casefold()
    if any(t.text.casefold() == key for t in before):
        return REPETITION
    return REPETITION if is_degenerate(turn.text) else None


def is_degenerate(text: str, *, min_trigrams: int = 12, min_distinct: float = 0.5) -> bool:
    words = text.casefold().split()
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    return len(trigrams) >= min_trigrams and len(set(trigrams)) / len(trigrams) < min_distinct


TURN_CHECKS: tuple[TurnCheck, ...] = (
    check_empty_text,
    check_word_in_first_turn,
    check_excluded,
    check_line_length,
    check_speaker,
    check_alternation,
    check_repetition,
)
# Reasons about the *shape* of the transcript: after a complete exchange they end the
# transcript (what came before is kept); before it they reject. Content reasons always reject.
STRUCTURAL = frozenset({UNEXPECTED_SPEAKER, NOT_ALTERNATING, REPETITION, NON_SPEAKER_LINE, EMPTY_TEXT})


def check_turn(ctx: RuleContext, before: list[Turn], turn: Turn) -> str | None:
    for check in TURN_CHECKS:
        if reason := check(ctx, before, turn):
            return reason
    return None


def canonical_speaker(ctx: RuleContext, before: list[Turn], speaker: str) -> str:
    """``Teacher`` and ``TEACHER`` are one speaker: use the first spelling (or the configured one)."""
    for known in (*(ctx.speakers or ()), *(t.speaker for t in before)):
        if known.casefold() == speaker.casefold():
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


# --- the streaming judge -----------------------------------------------------------------------
class Decision(Enum):
    CONTINUE = "continue"
    END = "end"  # the transcript is over; keep what we have
    REJECT = "reject"  # the conversation is doomed; stop decoding


@dataclass
class TranscriptJudge:
    """Feed it the completion line by line as the model streams; it says when to stop."""

    ctx: RuleContext
    opening_speaker: str | None
    turns: list[Turn] = field(default_factory=list)
    reason: str | None = None
    ended_by: str = ""
    _lines_seen: int = 0
    _blank_run: int = 0

    def feed_line(self, line: str) -> Decision:
        first = self._lines_seen == 0
        self._lines_seen += 1
        if not line.strip():
            self._blank_run += 1
            # a run of blank lines after a complete exchange is the end of the transcript
            if self._blank_run >= 2 and len(self.turns) >= self.ctx.complete_exchange:
                return self._end("blank_lines")
            return Decision.CONTINUE
        self._blank_run = 0
        if first and self.opening_speaker is not None:
            turn: Turn | None = Turn(speaker=self.opening_speaker, text=line)
        else:
            turn = parse_speaker_line(line)
        if turn is None:
            return self._stop_structural(NON_SPEAKER_LINE)
        turn = Turn(speaker=canonical_speaker(self.ctx, self.turns, turn.speaker), text=normalise_text(turn.text))
        if reason := check_turn(self.ctx, self.turns, turn):
            return self._stop_structural(reason) if reason in STRUCTURAL else self._reject(reason)
        self.turns.append(turn)
        if len(self.turns) >= self.ctx.max_turns:
            return self._end("max_turns")
        return Decision.CONTINUE

    def feed_partial(self, partial_line: str) -> Decision:
        """Checks that can decide on an unfinished line (a line that never ends)."""
        if len(partial_line) > self.ctx.max_line_chars + 40:
            return self._reject(LINE_TOO_LONG)
        return Decision.CONTINUE

    def finish(self, ended_by: str, trailing: str = "") -> str | None:
        """The stream is over (``eos`` or ``max_tokens``). Returns the reason to reject, if any.

        A line cut off by the token limit is dropped; a last line ended by the model is judged.
        """
        if self.reason is not None or self.ended_by:
            return self.reason
        self.ended_by = ended_by
        if trailing.strip() and ended_by == "eos":
            if self.feed_line(trailing) is Decision.REJECT:
                return self.reason
            self.ended_by = ended_by
        if len(self.turns) < self.ctx.min_turns:
            self.reason = TOO_FEW_TURNS
        return self.reason

    def _stop_structural(self, reason: str) -> Decision:
        if len(self.turns) >= self.ctx.complete_exchange:
            return self._end(f"transcript_end:{reason}")
        return self._reject(reason)

    def _end(self, why: str) -> Decision:
        self.ended_by = why
        if len(self.turns) < self.ctx.min_turns:
            self.reason = TOO_FEW_TURNS
            return Decision.REJECT
        return Decision.END

    def _reject(self, reason: str) -> Decision:
        self.reason = reason
        self.ended_by = f"rule:{reason}"
        return Decision.REJECT


def roles_for(turns: list[Turn]) -> list[dict[str, str]]:
    """The common chat form: the speaker who opens is the ``user``, the other the ``assistant``."""
    if not turns:
        return []
    opener = turns[0].speaker
    return [{"role": "user" if t.speaker == opener else "assistant", "content": t.text} for t in turns]
