"""The conversation rules, table by table. The seed's behaviour is the reference where it has one
(docs/rules-and-modes.md, "Normalisation (seed parity)"); where we deliberately differ, the case says so."""

from __future__ import annotations

import re

import pytest

from convfarm.config import load_config
from convfarm.judging import rule_context
from convfarm.messages import Turn
from convfarm.prompt import read_prompt
from convfarm.rules import (
    EMPTY_TEXT,
    EXCLUDED,
    LINE_TOO_LONG,
    NON_SPEAKER_LINE,
    NOT_ALTERNATING,
    REPETITION,
    TOO_FEW_TURNS,
    TOO_MANY_TURNS,
    UNEXPECTED_SPEAKER,
    WORD_MISSING,
    Decision,
    RuleContext,
    TranscriptJudge,
    check_alternation,
    check_empty_text,
    check_excluded,
    check_line_length,
    check_repetition,
    check_speaker,
    check_word_in_first_turn,
    evaluate,
    is_degenerate,
    normalise_text,
    parse_speaker_line,
    remove_address,
    roles_for,
    rule_verdicts,
    strip_quotes,
)
from tests.conftest import REPO

pytestmark = pytest.mark.fast  # in-process: no Redis, no worker, no model

SEED_EXCLUDE = re.compile("(relig|sex|gender|politic|kill)", re.IGNORECASE)  # the seed's (a|b|c) expression
CTX = RuleContext(word="bridge", exclude=SEED_EXCLUDE, speakers=("STUDENT", "TEACHER"))
S, T = "STUDENT", "TEACHER"


def turns(*pairs: tuple[str, str]) -> list[Turn]:
    return [Turn(speaker=s, text=t) for s, t in pairs]


# --- parsing ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("line", "expected"), [
    ("TEACHER: A bridge spans a river.", ("TEACHER", "A bridge spans a river.")),
    ("STUDENT:What is a bridge?", ("STUDENT", "What is a bridge?")),
    ("  Teacher :  Hello", ("Teacher", " Hello")),
    ("**TEACHER:** A bridge", ("TEACHER", "A bridge")),
    ("TEACHER (smiling): Good question.", ("TEACHER", "Good question.")),
    ("Student 2: me too", ("Student 2", "me too")),
    ("TEACHER:", ("TEACHER", "")),
    # the seed's "line without ':'" — no speaker
    ("A bridge is a structure.", None),
    ("", None),
    # a colon deep in a sentence does not make a speaker
    ("Here is what I think about it: a bridge is useful", None),
    ("1) First point: bridges", None),
])
def test_parse_speaker_line(line: str, expected: tuple[str, str] | None) -> None:
    turn = parse_speaker_line(line)
    assert (None if turn is None else (turn.speaker, turn.text)) == expected


# --- normalisation (seed: forms of address, quotes) ----------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("Teacher, what is a bridge?", "What is a bridge?"),
    ("teacher, what is a bridge?", "What is a bridge?"),
    ("Excuse me, Sir, what is a bridge?", "What is a bridge?"),
    ("Excuse me, sir, can you explain?", "Can you explain?"),
    ("Mr. Smith, is a bridge long?", "Is a bridge long?"),
    ("Mrs. Jones, why?", "Why?"),
    ("Professor, how do bridges work?", "How do bridges work?"),
    ("Sir! look at that bridge", "Look at that bridge"),
    ("Student, you are right.", "You are right."),
    # not a form of address: untouched
    ("Sir Isaac Newton studied bridges.", "Sir Isaac Newton studied bridges."),
    ("Teachers use bridges as examples.", "Teachers use bridges as examples."),
    ("A bridge, teacher, is long.", "A bridge, teacher, is long."),
])
def test_remove_address(text: str, expected: str) -> None:
    assert remove_address(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ('"A bridge spans a river."', "A bridge spans a river."),
    ("\u201cA bridge spans a river.\u201d", "A bridge spans a river."),
    ("'Bridges are old.'", "Bridges are old."),
    # quotes inside the text stay; so does a quote that does not wrap everything
    ('The word "bridge" is old.', 'The word "bridge" is old.'),
    ('"Bridge" is a noun.', '"Bridge" is a noun.'),
    ('"Hi." "Bye."', '"Hi." "Bye."'),
    ('"', '"'),
])
def test_strip_quotes(text: str, expected: str) -> None:
    assert strip_quotes(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ('  "Teacher, what   is a\tbridge?"  ', "What is a bridge?"),
    ('"Excuse me, Sir, what is it?"', "What is it?"),
    ("A bridge.", "A bridge."),
])
def test_normalise_text(text: str, expected: str) -> None:
    assert normalise_text(text) == expected


# --- each check on its own -----------------------------------------------------------------------
@pytest.mark.parametrize(("before", "turn", "expected"), [
    ([], Turn(speaker=S, text="What is a bridge?"), None),
    ([], Turn(speaker=S, text="What is a BRIDGE made of?"), None),  # case-insensitive
    ([], Turn(speaker=S, text="What are bridges?"), None),  # a substring, as the seed's `in`
    ([], Turn(speaker=S, text="What is a tunnel?"), WORD_MISSING),  # seed: "missing WORD"
    (turns((S, "What is a bridge?")), Turn(speaker=T, text="It spans a river."), None),  # only the first turn
])
def test_check_word_in_first_turn(before: list[Turn], turn: Turn, expected: str | None) -> None:
    assert check_word_in_first_turn(CTX, before, turn) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("Is this bridge about religion?", EXCLUDED),  # seed: "relig" matches "religion"
    ("POLITICS of bridges", EXCLUDED),  # case-insensitive
    ("They kill time on the bridge.", EXCLUDED),
    ("Bridges cross rivers.", None),
    ("A skillful builder.", EXCLUDED),  # seed parity: patterns are substrings, "kill" is in "skillful"
])
def test_check_excluded(text: str, expected: str | None) -> None:
    assert check_excluded(CTX, [], Turn(speaker=T, text=text)) == expected


def test_check_excluded_without_patterns_keeps_everything() -> None:
    assert check_excluded(RuleContext(word="x"), [], Turn(speaker=T, text="religion")) is None


@pytest.mark.parametrize(("before", "speaker", "expected"), [
    ([], S, None),
    (turns((S, "q")), T, None),
    (turns((S, "q")), "Teacher", None),  # spelling does not make a new speaker
    (turns((S, "q")), "THE TEACHER", None),
    (turns((S, "q")), "TASK", UNEXPECTED_SPEAKER),  # the run that made "TASK:" the second speaker
    (turns((S, "q"), (T, "a")), "NARRATOR", UNEXPECTED_SPEAKER),
])
def test_check_speaker(before: list[Turn], speaker: str, expected: str | None) -> None:
    assert check_speaker(CTX, before, Turn(speaker=speaker, text="x")) == expected


@pytest.mark.parametrize(("before", "speaker", "expected"), [
    ([], "ALICE", None),
    (turns(("ALICE", "q")), "BOB", None),  # unknown pair: whoever answers first is the second speaker
    (turns(("ALICE", "q"), ("BOB", "a")), "CAROL", UNEXPECTED_SPEAKER),
])
def test_check_speaker_without_known_pair(before: list[Turn], speaker: str, expected: str | None) -> None:
    assert check_speaker(RuleContext(word="x"), before, Turn(speaker=speaker, text="x")) == expected


@pytest.mark.parametrize(("before", "speaker", "expected"), [
    ([], S, None),
    (turns((S, "q")), T, None),
    (turns((S, "q")), S, NOT_ALTERNATING),
    (turns((S, "q"), (T, "a")), "teacher", NOT_ALTERNATING),
])
def test_check_alternation(before: list[Turn], speaker: str, expected: str | None) -> None:
    assert check_alternation(CTX, before, Turn(speaker=speaker, text="x")) == expected


@pytest.mark.parametrize(("text", "expected"), [("", EMPTY_TEXT), ("   ", EMPTY_TEXT), ("Yes.", None)])
def test_check_empty_text(text: str, expected: str | None) -> None:
    assert check_empty_text(CTX, [], Turn(speaker=T, text=text)) == expected


@pytest.mark.parametrize(("length", "expected"), [(600, None), (601, LINE_TOO_LONG)])
def test_check_line_length(length: int, expected: str | None) -> None:
    assert check_line_length(CTX, [], Turn(speaker=T, text="a" * length)) == expected


LOOP = "the bridge is a bridge is a bridge is a bridge is a bridge is a bridge is a bridge is a bridge"


@pytest.mark.parametrize(("before", "text", "expected"), [
    ([], "A bridge carries a road over a river.", None),
    ([], LOOP, REPETITION),
    ([], "Hahahahahahahahahahahahaha", REPETITION),
    ([], "!!!!!!!!!!!!!!!!!!!!", REPETITION),
    (turns((S, "What is a bridge?"), (T, "It crosses a river.")), "What is a bridge?", REPETITION),
    (turns((S, "What is a bridge?"), (T, "It crosses a river.")), "what  is a BRIDGE?", REPETITION),
    (turns((T, "A bridge lets people cross a river without getting wet.")),
     "A bridge lets people cross a river without getting wet at all.", REPETITION),  # an echo
    (turns((S, "What is a bridge?"), (T, "It crosses a river.")), "Is it made of stone?", None),
    (turns((S, "Yes.")), "Yes, and bridges can be very long.", None),
])
def test_check_repetition(before: list[Turn], text: str, expected: str | None) -> None:
    assert check_repetition(CTX, before, Turn(speaker=T, text=text)) == expected


@pytest.mark.parametrize(("text", "expected"), [
    (LOOP, True),
    ("A bridge is a structure built to span a physical obstacle such as a body of water, valley or road.", False),
    ("ok ok ok", False),  # too short to call a loop
])
def test_is_degenerate(text: str, expected: bool) -> None:
    assert is_degenerate(text) is expected


# --- evaluate: a finished conversation (the collector's re-check, producer filter) ----------------
GOOD = turns((S, "What is a bridge?"), (T, "A bridge carries a road over a river."))


@pytest.mark.parametrize(("conversation", "ctx", "expected"), [
    (GOOD, CTX, None),
    (GOOD[:1], CTX, TOO_FEW_TURNS),
    (GOOD + turns((S, "Is it strong?"), (T, "Very strong.")), RuleContext(word="bridge", max_turns=3), TOO_MANY_TURNS),
    (turns((S, "What is a tunnel?"), (T, "A hole.")), CTX, WORD_MISSING),
    (GOOD + turns((S, "Is it about religion?")), CTX, EXCLUDED),
    (GOOD + turns((S, "Is it old?"), ("TASK", "Write more")), CTX, UNEXPECTED_SPEAKER),
    (turns((S, "What is a bridge?"), (S, "Tell me.")), CTX, NOT_ALTERNATING),
])
def test_evaluate(conversation: list[Turn], ctx: RuleContext, expected: str | None) -> None:
    assert evaluate(ctx, conversation) == expected


def test_rule_verdicts_name_every_rule_and_the_turn_it_objects_to() -> None:
    conversation = turns((S, "What is a bridge?"), (T, "It spans a river."), ("TASK", "Politics now."))
    verdicts = {v.rule: v for v in rule_verdicts(CTX, conversation)}
    assert verdicts[UNEXPECTED_SPEAKER].reason == UNEXPECTED_SPEAKER and verdicts[UNEXPECTED_SPEAKER].turn == 2
    assert verdicts[EXCLUDED].reason == EXCLUDED and verdicts[EXCLUDED].turn == 2
    assert verdicts[WORD_MISSING].reason is None
    assert set(verdicts) >= {EMPTY_TEXT, REPETITION, LINE_TOO_LONG, TOO_FEW_TURNS, TOO_MANY_TURNS, NOT_ALTERNATING}


# --- the prompt: opening turns, open line, expected speakers --------------------------------------
SEED_PROMPT = ('We end this document with a conversation between a student and a teacher, '
               'where the teacher conveys the meaning of "bridge"\nSTUDENT:')
EXAMPLE_PROMPT = SEED_PROMPT.removesuffix("STUDENT:") + 'STUDENT: What does "bridge" mean?\nTEACHER:'


@pytest.mark.parametrize(("prompt", "configured", "speakers", "opening", "prompt_turns"), [
    (SEED_PROMPT, None, ("STUDENT", "TEACHER"), "STUDENT", 0),
    (EXAMPLE_PROMPT, None, ("STUDENT", "TEACHER"), "TEACHER", 1),
    ("A chat between a patient and a doctor about {x}.\nDoctor:", None, ("Patient", "Doctor"), "Doctor", 0),
    ("Topic: bridges\nALICE: hi, what is a bridge?\nBOB:", None, ("ALICE", "BOB"), "BOB", 1),
    ("Some text.\nSTUDENT:", None, ("STUDENT",), "STUDENT", 0),  # second speaker unknown: first to answer
    ("Some text.\nSTUDENT:", ["STUDENT", "TUTOR"], ("STUDENT", "TUTOR"), "STUDENT", 0),
    ("Just write about bridges.", None, None, None, 0),
])
def test_read_prompt(prompt: str, configured: list[str] | None, speakers: tuple[str, ...] | None,
                     opening: str | None, prompt_turns: int) -> None:
    setup = read_prompt(prompt, configured)
    assert setup.speakers == speakers
    assert (setup.opening.speaker if setup.opening else None) == opening
    assert len(setup.turns) == prompt_turns


def test_rule_context_infers_the_second_speaker_from_the_seed_prompt() -> None:
    config, _ = load_config(REPO / "tests" / "data" / "seed-example.json")  # the seed's own config, unchanged
    assert rule_context(config, "bridge").speakers == ("STUDENT", "TEACHER")


# --- the streaming judge ------------------------------------------------------------------------
def judge_lines(lines: list[str], *, prompt: str = SEED_PROMPT, ctx: RuleContext = CTX,
                ended_by: str = "eos") -> TranscriptJudge:
    setup = read_prompt(prompt)
    judge = TranscriptJudge(ctx, opening_speaker=setup.opening.speaker if setup.opening else None,
                            prompt_turns=setup.turns)
    for line in lines:
        if judge.feed_line(line) is not Decision.CONTINUE:
            return judge
    judge.finish(ended_by)
    return judge


@pytest.mark.parametrize(("lines", "reason", "kept", "ended_by"), [
    # seed parity: the first generated line continues "STUDENT:" and must contain the word
    ([" What is a bridge?", "TEACHER: It spans a river."], None, 2, "eos"),
    ([" What is a tunnel?", "TEACHER: A hole."], WORD_MISSING, 0, "rule:word_missing"),
    ([" What is a bridge?", "TEACHER: It is about religion."], EXCLUDED, 1, "rule:excluded"),
    # seed: a line without ':' drops the conversation; we drop it only before a complete exchange...
    ([" What is a bridge?", "It spans a river."], NON_SPEAKER_LINE, 1, "rule:non_speaker_line"),
    # ...and otherwise end the transcript there, keeping what came before
    ([" What is a bridge?", "TEACHER: It spans a river.", "The end.", "TEACHER: more"], None, 2,
     "transcript_end:non_speaker_line"),
    # seed: a blank line had no ':' and rejected (0 of 8 accepted on small models); we skip it
    ([" What is a bridge?", "", "TEACHER: It spans a river.", "", "STUDENT: Thanks!"], None, 3, "eos"),
    # a run of blank lines after a complete exchange ends the transcript
    ([" What is a bridge?", "TEACHER: It spans a river.", "", "", "Unrelated text"], None, 2,
     "transcript_end:blank_lines"),
    # forms of address and quotes are normalised before the checks
    ([' "Teacher, what is a bridge?"', "TEACHER: It spans a river."], None, 2, "eos"),
    # wrong second speaker before a complete exchange: reject; after: the transcript ends
    ([" What is a bridge?", "TASK: Write an essay."], UNEXPECTED_SPEAKER, 1, "rule:unexpected_speaker"),
    ([" What is a bridge?", "TEACHER: It spans a river.", "TASK: Write an essay."], None, 2,
     "transcript_end:unexpected_speaker"),
    ([" What is a bridge?", "TEACHER: It spans a river.", "TEACHER: It spans a river."], None, 2,
     "transcript_end:not_alternating"),
    ([" What is a bridge?"], TOO_FEW_TURNS, 1, "eos"),
])
def test_judge_seed_prompt(lines: list[str], reason: str | None, kept: int, ended_by: str) -> None:
    judge = judge_lines(lines)
    assert (judge.reason, len(judge.turns), judge.ended_by) == (reason, kept, ended_by)


def test_judge_keeps_the_prompt_turns_and_continues_the_open_line() -> None:
    judge = judge_lines([" A bridge spans a river.", "", "STUDENT: Thanks!"], prompt=EXAMPLE_PROMPT)
    assert judge.reason is None
    assert [(t.speaker, t.text) for t in judge.turns] == [
        (S, 'What does "bridge" mean?'), (T, "A bridge spans a river."), (S, "Thanks!")]


@pytest.mark.parametrize("first_lines", [
    ["", "A bridge spans a river."],  # the answer starts on the next line
    [" TEACHER: A bridge spans a river."],  # the model repeats the label
])
def test_judge_open_line_variants(first_lines: list[str]) -> None:
    judge = judge_lines(first_lines, prompt=EXAMPLE_PROMPT)
    assert judge.reason is None and judge.turns[1] == Turn(speaker=T, text="A bridge spans a river.")


def test_judge_max_turns_ends_the_transcript() -> None:
    ctx = RuleContext(word="bridge", speakers=(S, T), max_turns=3)
    judge = TranscriptJudge(ctx, opening_speaker=S)
    decisions = [judge.feed_line(line) for line in [" What is a bridge?", "TEACHER: A span.", "STUDENT: Oh."]]
    assert decisions[-1] is Decision.END and judge.ended_by == "max_turns" and judge.reason is None


def test_judge_drops_a_line_cut_off_by_max_tokens() -> None:
    judge = TranscriptJudge(CTX, opening_speaker=S)
    judge.feed_line(" What is a bridge?")
    judge.feed_line("TEACHER: It spans a river.")
    assert judge.finish("max_tokens", trailing="STUDENT: And is it") is None
    assert len(judge.turns) == 2
    judge = TranscriptJudge(CTX, opening_speaker=S)
    judge.feed_line(" What is a bridge?")
    judge.feed_line("TEACHER: It spans a river.")
    assert judge.finish("eos", trailing="STUDENT: Thanks!") is None
    assert len(judge.turns) == 3  # a last line ended by the model itself is kept


@pytest.mark.parametrize(("partial", "decision", "reason"), [
    ("A bridge is a", Decision.CONTINUE, None),
    ("This is about sex and ", Decision.REJECT, EXCLUDED),  # an excluded word stops decoding mid-line
    ("x" * 700, Decision.REJECT, LINE_TOO_LONG),  # a line that never ends
    (LOOP + " is a bridge is a", Decision.REJECT, REPETITION),  # a loop that never ends
])
def test_judge_partial_line(partial: str, decision: Decision, reason: str | None) -> None:
    judge = TranscriptJudge(CTX, opening_speaker=S)
    assert judge.feed_partial(partial) is decision
    assert judge.reason == reason


@pytest.mark.parametrize(("partial", "decision"), [
    ("STUDENT: Is it about religion ", Decision.REJECT),  # a turn of the conversation: excluded
    ("MADE BY: someone with the skills ", Decision.CONTINUE),  # will end the transcript: its words do not count
    ("TEACHER: and kill ", Decision.CONTINUE),  # the same speaker again ends it too
    ("Some prose about killing ", Decision.CONTINUE),  # a non-speaker line ends it
])
def test_partial_exclusion_only_for_lines_that_will_be_turns(partial: str, decision: Decision) -> None:
    judge = TranscriptJudge(CTX, opening_speaker=S)
    judge.feed_line(" What is a bridge?")
    judge.feed_line("TEACHER: It spans a river.")
    assert judge.feed_partial(partial) is decision


def test_partial_loop_after_a_complete_exchange_ends_the_transcript_keeping_it() -> None:
    judge = TranscriptJudge(CTX, opening_speaker=S)
    judge.feed_line(" What is a bridge?")
    judge.feed_line("TEACHER: It spans a river.")
    assert judge.feed_partial("STUDENT: " + LOOP) is Decision.END
    assert judge.reason is None and len(judge.turns) == 2


# --- roles ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mapping", "roles"), [
    (None, ["user", "assistant", "user"]),
    ({"teacher": "user", "STUDENT": "assistant"}, ["assistant", "user", "assistant"]),
])
def test_roles_for(mapping: dict[str, str] | None, roles: list[str]) -> None:
    messages = roles_for(turns((S, "q"), (T, "a"), (S, "thanks")), mapping)
    assert [m["role"] for m in messages] == roles and messages[0]["content"] == "q"
