"""The GBNF grammar a generated transcript must follow, derived from the prompt and the config.

Pure functions, no model: :func:`structure_for` reads a :class:`~convfarm.prompt.PromptSetup`
and a :class:`~convfarm.config.RunConfig` and returns a :class:`StructureChoice` — the GBNF
text for llama.cpp's grammar sampler, or ``free`` with the reason no grammar could be derived.

What the grammar makes impossible is exactly what the conversation rules
(:mod:`convfarm.rules`) would reject or cut for structure:

* every generated line is a turn: ``SPEAKER: text`` with one of the two expected speakers
  (``non_speaker_line``, ``unexpected_speaker``), alternating (``not_alternating``), no blank
  lines, text that is not empty (``empty_text``) and at most ``max_line_chars`` long
  (``line_too_long``);
* the conversation's first turn contains the word (case-insensitively) when that turn is
  generated (``word_missing``) — with the seed's prompt, which ends ``STUDENT:``, that is
  the first generated line;
* the model may stop (end-of-generation) only once the conversation holds ``min_turns``
  turns (``too_few_turns``), and must stop after ``max_turns``;
* it may stop only after a turn of the answering speaker (the one who does not open), so no
  tokens go to a last question that ``messages`` would drop (docs/design.md, "Messages and the
  record") — unless no length between the limits ends on that speaker.

Content rules (``excluded``, ``repetition``) and dedup are not expressible here; the rules
still run on everything. The invariant the tests pin: every string the grammar accepts
passes the rules' structural checks.

The transcript starts where the prompt leaves off (see :mod:`convfarm.prompt`):

* an **open line** (prompt ending ``TEACHER:``): the first generated characters continue that
  turn, no label; a prompt ending with a complete turn (``STUDENT: What is x?``) is an open
  line with text, whose continuation may be empty (a newline right away);
* no open line (chat mode without prefill, or a prompt that ends in prose): the first
  generated line carries its label.

Prompt turns count towards ``min_turns`` / ``max_turns`` as they do for the rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from convfarm.config import RunConfig
from convfarm.prompt import PromptSetup
from convfarm.rules import speaker_key

Structure = Literal["grammar", "free"]

# the first character of a turn's text: not blank, so a turn is never empty (empty_text)
_NONBLANK = r"[^ \t\r\n]"
_ANY = r"[^\n]"


@dataclass(frozen=True)
class TranscriptShape:
    """What the grammar needs to know about the conversation still to be written."""

    first_speaker: str  # the speaker of the first generated line
    other_speaker: str
    open_line: bool  # the first generated characters continue the prompt's last line (no label)
    open_text: str = ""  # the text the open line already has in the prompt
    prompt_turns: int = 0  # complete turns the prompt already holds (they count towards the limits)
    word: str | None = None  # must appear in the first generated line (the conversation's first turn)
    min_turns: int = 2
    max_turns: int = 16
    max_line_chars: int = 600


@dataclass(frozen=True)
class StructureChoice:
    """The structure a request is decoded with: ``grammar`` (with its GBNF) or ``free``, and why."""

    structure: Structure
    gbnf: str | None = None
    why: str = ""
    shape: TranscriptShape | None = None


def prefilled(config: RunConfig) -> bool:
    """Does the generation continue the prompt's transcript lines? (completion, and chat with prefill)."""
    return config.mode == "completion" or config.chat_prefill


def transcript_shape(setup: PromptSetup, config: RunConfig, word: str) -> TranscriptShape | str:
    """The shape of the transcript still to be generated, or (a string) why it cannot be fixed.

    Mirrors how the judge is set up in :meth:`convfarm.engine.ResidentModel._judge_for`:
    with a prefilled transcript the prompt's turns and open line are part of the conversation;
    in plain chat mode the model writes every line, labels included.
    """
    speakers = setup.speakers or ()
    if len(speakers) < 2:
        return "the second speaker is not known: set \"speakers\" in the config"
    pair = (speakers[0], speakers[1])

    def canonical(name: str) -> str | None:
        return next((s for s in pair if speaker_key(s) == speaker_key(name)), None)

    def other(name: str) -> str:
        return pair[1] if speaker_key(name) == speaker_key(pair[0]) else pair[0]

    limits = {"min_turns": config.min_turns, "max_turns": config.max_turns, "max_line_chars": config.max_line_chars}
    if not prefilled(config):
        first_name = setup.turns[0].speaker if setup.turns else setup.opening.speaker if setup.opening else pair[0]
        first = canonical(first_name) or pair[0]
        return TranscriptShape(first_speaker=first, other_speaker=other(first), open_line=False, word=word, **limits)

    prompt_turns = len(setup.turns)
    if prompt_turns >= config.max_turns:
        return f"the prompt already holds {prompt_turns} turns (max_turns is {config.max_turns})"
    if setup.opening is not None:
        first = canonical(setup.opening.speaker)
        if first is None:
            return f"the open line's speaker {setup.opening.speaker!r} is not one of {', '.join(pair)}"
        open_text = setup.opening.text
        open_line = True
    else:
        previous = setup.turns[-1].speaker if setup.turns else None
        first = other(previous) if previous is not None else pair[0]
        open_text, open_line = "", False
    # the conversation's first turn must hold the word (seed rule): constrain it when we write it
    first_turn_text = setup.turns[0].text if setup.turns else open_text if open_line else None
    needs_word = first_turn_text is None or word.casefold() not in first_turn_text.casefold()
    if setup.turns and needs_word:
        return "the prompt's first turn lacks the word (the rules reject it before decoding)"
    shape = TranscriptShape(first_speaker=first, other_speaker=other(first), open_line=open_line, open_text=open_text,
                            prompt_turns=prompt_turns, word=word if needs_word else None, **limits)
    if _first_line_budget(shape) < (len(word) if needs_word else 1):
        return f"the open line leaves no room within max_line_chars ({config.max_line_chars})"
    return shape


def structure_for(config: RunConfig, word: str, setup: PromptSetup) -> StructureChoice:
    """The structure a request is decoded with (``config.structure``, unless no grammar can be derived)."""
    if config.structure == "free":
        return StructureChoice("free", why="structure \"free\" in the config")
    shape = transcript_shape(setup, config, word)
    if isinstance(shape, str):
        return StructureChoice("free", why=f"no grammar: {shape}")
    what = [f"{shape.first_speaker}/{shape.other_speaker} alternating",
            f"{max(shape.min_turns, shape.prompt_turns + 1)}-{shape.max_turns} turns",
            f"lines ≤ {shape.max_line_chars} chars"]
    if shape.word:
        what.insert(1, f"first generated line contains {shape.word!r}")
    return StructureChoice("grammar", gbnf=build_gbnf(shape), why="; ".join(what), shape=shape)


# --- GBNF ----------------------------------------------------------------------------------------
def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def _first_line_budget(shape: TranscriptShape) -> int:
    """Characters the first generated line may add without the turn passing ``max_line_chars``.

    The judge joins an open line as ``f"{open_text} {continuation}"``, hence the one extra.
    """
    if shape.open_line and shape.open_text:
        return shape.max_line_chars - len(shape.open_text) - 1
    return shape.max_line_chars


# Where in the first line the word must come. The seed's prompt asks the student to open, and a
# 135M model often talks around the word ("(laughs) I'm so glad you're ready to share your
# passion for [student's name]!") and never names it: a grammar that only says "the word
# somewhere in the line" then just forbids the line's end, and the line rambles on to
# max_tokens. So the word must come in the line's first sentence — or the next sentence is a
# bridge to it, which turns the forced mention into a question the teacher can answer
# ("... for [student's name]! What does "bridge" mean?"). A first sentence still running at
# WORD_WITHIN characters is bridged where it stands. Sample-first decoding means a bridge is
# only taken when the model did not name the word by itself.
WORD_WITHIN = 120
BRIDGE = 'What does "'
BRIDGES_MID_SENTENCE = (' What does "', ', what does "', '. What does "', ' "')
_SENTENCE_END = "[.!?]"
_AFTER_END = r"[.!?\"')\]*\u201d\u2019]"  # more of the sentence's end: ?!, ." and ) and the like
_IN_SENTENCE = r"[^\n.!?]"
_ON_AFTER_END = r"[^\n .!?\"')\]*\u201d\u2019]"  # the sentence did not end after all: "3.5", "e.g."


def bridge_close(bridge: str) -> str:
    """What a bridge forces after the word: the quote it opened closed, and a question's verb.

    Without it a 135M model closed ``What does "village`` with ``?`` and the teacher, asked no
    real question, talked about something else (docs/judge.md, "Does the grammar keep meaning?").
    ``" mean`` leaves the rest free (``?``, `` in physics?``); a bare ``"`` bridge only closes.
    """
    if bridge.endswith('What does "'):
        return '" mean'
    return '"' if bridge.endswith('"') else ""


def spellings(word: str) -> str:
    """The word as written, in lower case, Capitalised and in CAPITALS, as a GBNF alternation.

    The rule compares case-insensitively, but a per-letter ``[bB][rR]...`` class lets a forced
    mention come out as "briDgE"; these four are how the word is actually written.
    """
    forms = dict.fromkeys([word, word.lower(), word[:1].upper() + word[1:], word.upper()])
    # "-" written as the escape \x2D: a lowercase hyphenated token in the word ("negative
    # log-likelihood") reads like a rule name (``first-p-0``) to :func:`_prune`, which then cut the
    # literal out of the alternation and left a grammar llama.cpp refuses
    return "(" + " | ".join(gbnf_literal(f).replace("-", "\\x2D") for f in forms) + ")"


def _word_line(name: str, word: str, budget: int, first: str, within: int = WORD_WITHIN) -> list[tuple[str, str]]:
    """Rules for a line of at most ``budget`` characters whose first sentence names ``word`` (or is bridged to it).

    GBNF has no lookahead, so the length is counted in the rule names. Before the word:
    ``NAME-p-C`` in the first sentence, ``NAME-e-C`` right after its end (``.``, ``?!``, ``."``),
    ``NAME-b-C`` after the space that follows — where only the word or the bridge may start;
    after the word, ``NAME-s-C`` is the rest of the line. C is the characters so far, so the
    line's length is exact (a prefix bound plus a suffix bound would let a line through at
    almost twice the limit); about 3 × ``within`` + ``budget`` small rules. ``first`` is the
    class of the line's first character.
    """
    w = f"{name}-w"
    length = max(len(f) for f in (word, word.lower(), word.upper()))  # the longest spelling, for the budget
    rules: list[tuple[str, str]] = [(name, f"{name}-p-0"), (w, spellings(word))]

    def then(count: int, bridge: str = "") -> str | None:  # [bridge] word [close] and the rest; None when over budget
        close = bridge_close(bridge)
        count += len(bridge) + length + len(close)
        if count > budget:
            return None
        word_then = f"{w} {gbnf_literal(close)}" if close else w
        rest = f"{word_then} {name}-s-{count}" if count < budget else word_then
        return f"{gbnf_literal(bridge)} {rest}" if bridge else rest

    def rule(state: str, c: int, alternatives: list[str | None]) -> None:
        if kept := [a for a in alternatives if a is not None]:
            rules.append((f"{name}-{state}-{c}", " | ".join(kept)))

    def step(char: str, state: str, c: int) -> str | None:  # one character, then ``state`` at c + 1
        return f"{char} {name}-{state}-{c + 1}" if c + 1 <= last else None

    last = min(within, budget - length)  # the last position the word can start at
    for c in range(last + 1):
        if c == 0:  # the line's start: the word, the bridge, or the first sentence's first character
            rule("p", c, [then(c), then(c, BRIDGE), step(first, "p", c)])
        elif c < last:
            rule("p", c, [then(c), step(_IN_SENTENCE, "p", c), step(_SENTENCE_END, "e", c)])
        else:  # WORD_WITHIN characters and the first sentence goes on: bridge it where it stands
            rule("p", c, [then(c, b) for b in BRIDGES_MID_SENTENCE] + [then(c) if c == budget - length else None])
        if c >= 1:
            # right after the sentence's end: more of it (?!, ."), a space, or on with the sentence (3.5, e.g.)
            rule("e", c, [step(_AFTER_END, "e", c), step('" "', "b", c), step(_ON_AFTER_END, "p", c),
                          then(c, " " + BRIDGE) if c == last else None])
            rule("b", c, [then(c), then(c, BRIDGE)])  # the next sentence names the word or asks about it
    for c in range(length, budget):
        rules.append((f"{name}-s-{c}", f"({_ANY} {name}-s-{c + 1})?" if c + 1 < budget else f"{_ANY}?"))
    return _prune(rules)


def _prune(rules: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop alternatives that lead to a state with no way on (near the length budget, where no
    bridge fits any more), and the states left empty, until nothing refers to a missing rule."""
    while True:
        defined = {name for name, _ in rules}
        kept: list[tuple[str, str]] = []
        for name, body in rules:
            alternatives = [a for a in body.split(" | ")
                            if all(ref in defined for ref in re.findall(r"(?<![\w\"-])([a-z]+(?:-[a-z0-9]+)+)", a))]
            if alternatives:
                kept.append((name, " | ".join(alternatives)))
        if len(kept) == len(rules) and all(a == b for a, b in zip(kept, rules, strict=True)):
            return kept
        rules = kept


def _text(budget: int, first: str) -> str:
    """A turn's text of 1 to ``budget`` characters (llama.cpp expands the bounded repetition)."""
    return f"{first} {_ANY}{{0,{budget - 1}}}" if budget > 1 else first


def build_gbnf(shape: TranscriptShape) -> str:
    """The GBNF text (root rule ``root``) for one conversation's generated part."""
    n = shape.max_line_chars
    generated_max = shape.max_turns - shape.prompt_turns  # lines the model may write
    speakers = (shape.first_speaker, shape.other_speaker)

    def long_enough(lines: int) -> bool:
        return lines >= 1 and shape.prompt_turns + lines >= shape.min_turns

    def answered(lines: int) -> bool:  # the last turn is the answering speaker's (turns alternate)
        return (shape.prompt_turns + lines) % 2 == 0

    # end on an answer whenever the limits allow one (else, e.g. min_turns = max_turns = 3, on any turn)
    answer_ends = [g for g in range(1, generated_max + 1) if long_enough(g) and answered(g)]

    def may_end(lines: int) -> bool:  # after this many generated lines, the model may stop
        return long_enough(lines) and (answered(lines) or not answer_ends)

    if answer_ends:
        generated_max = answer_ends[-1]  # a line past the last answer could only end on a question

    def label(line: int) -> str:  # line: 1-based index of the generated line
        return gbnf_literal(f"{speakers[(line - 1) % 2]}: ")

    rules: list[tuple[str, str]] = [("text", _text(n, _NONBLANK))]
    budget = _first_line_budget(shape)
    if shape.word is not None:
        first_char = _ANY if shape.open_line and shape.open_text else _NONBLANK
        rules += _word_line("first", shape.word, budget, first_char)
        first_line = "first"
    elif shape.open_line and shape.open_text:
        first_line = f"{_ANY}{{1,{budget}}}"  # more words for the prompt's turn
    else:
        first_line = "text" if budget == n else _text(budget, _NONBLANK)

    if shape.open_line and shape.open_text:
        # the prompt's last turn may already be complete: a newline right away ends it
        root = f"{first_line} after-1" + ("" if shape.word is not None else " | \"\\n\" next-1")
    elif shape.open_line:
        root = f"\" \"? {first_line} after-1"  # "TEACHER:" is usually continued by " text"
    else:
        root = f"\"\\n\"? {label(1)} {first_line} after-1"
    rules.insert(0, ("root", root))

    # after-G: G lines generated, the last not yet ended; next-G: the same after its newline
    for g in range(1, generated_max + 1):
        if g == generated_max:
            rules.append((f"after-{g}", "\"\\n\"?"))  # max_turns: only the end is left
            continue
        line = f"{label(g + 1)} text after-{g + 1}"
        if may_end(g):
            rules.append((f"after-{g}", f"(\"\\n\" next-{g})?"))
            rules.append((f"next-{g}", f"({line})?"))
        else:
            rules.append((f"after-{g}", f"\"\\n\" next-{g}"))
            rules.append((f"next-{g}", line))
    if generated_max == 1 and "next-1" in root:
        rules.append(("next-1", "\"\""))
    return "\n".join(f"{name} ::= {body}" for name, body in rules) + "\n"
