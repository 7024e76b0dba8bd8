"""The grammar derived from a prompt and a config (``convfarm/engine/grammar.py``).

Each grammar is compiled by llama.cpp's own grammar parser (a grammar sampler over the
bundled model's vocabulary) and fed strings token by token, exactly as decoding does: a
string is *complete* when every token is allowed and then end-of-generation is allowed,
a *prefix* when every token is allowed but the end is not, *rejected* when a token is not.

The invariant the table also checks: every complete string passes the conversation rules'
structural checks (the grammar only ever forbids what the rules would reject or cut).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from convfarm.config import RunConfig, load_config
from convfarm.engine.grammar import (
    StructureChoice,
    TranscriptShape,
    build_gbnf,
    spellings,
    structure_for,
    transcript_shape,
)
from convfarm.engine.grammar_sampler import GrammarError, GrammarGate
from convfarm.judging import prompt_setup, rule_context
from convfarm.rules import STRUCTURAL, TOO_FEW_TURNS, WORD_MISSING, TranscriptJudge
from tests.conftest import EXAMPLE, REPO

SEED_CONFIG = REPO / "examples" / "seed-example.json"


@pytest.fixture(scope="module")
def vocab() -> Iterator[Any]:
    """The bundled model's tokenizer only (no weights to evaluate): what the grammar sampler needs."""
    from llama_cpp import Llama

    from convfarm.model_files import resolve_model

    llama = Llama(model_path=str(resolve_model("smollm2-135m")), vocab_only=True, verbose=False)
    yield llama
    llama.close()


def verdict(llama: Any, gbnf: str, text: str) -> str:
    """``complete``, ``prefix`` or ``rejected``: ``text`` fed to llama.cpp's grammar sampler token by token."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llama._model.model)
    tokens = llama.tokenize(text.encode(), add_bos=False, special=False)
    assert llama.detokenize(tokens).decode() == text  # the tokens spell the string exactly
    gate = GrammarGate(vocab, gbnf)
    try:
        for token in tokens:
            if not gate.allows(token):
                return "rejected"
            gate.accept(token)
        return "complete" if gate.allows(llama.token_eos()) else "prefix"
    finally:
        gate.close()


def config_for(path: Any = EXAMPLE, **overrides: Any) -> RunConfig:
    config, _ = load_config(path, **overrides)
    return config


def choice(config: RunConfig, word: str) -> StructureChoice:
    return structure_for(config, word, prompt_setup(config, word))


def judge_structure(config: RunConfig, word: str, completion: str) -> tuple[str | None, int]:
    """Feed a completion to the streaming judge as the worker does; (reason, turns)."""
    setup = prompt_setup(config, word)
    ctx = rule_context(config, word, setup)
    if config.mode == "chat" and not config.chat_prefill:
        judge = TranscriptJudge(ctx)
    else:
        opening = setup.opening
        judge = TranscriptJudge(ctx, opening_speaker=opening.speaker if opening else None, prompt_turns=setup.turns,
                                opening_text=opening.text if opening else "")
    *lines, trailing = completion.split("\n")
    for line in lines:
        if judge.decided:
            break
        judge.feed_line(line)
    judge.finish("eos", trailing=trailing)
    return judge.reason, len(judge.turns)


# --- the shape read from the prompt and the config -------------------------------------------------
@pytest.mark.fast
def test_example_prompt_continues_the_teacher_with_no_word_constraint() -> None:
    shape = transcript_shape(prompt_setup(config_for(), "bridge"), config_for(), "bridge")
    assert shape == TranscriptShape(first_speaker="TEACHER", other_speaker="STUDENT", open_line=True, prompt_turns=1,
                                    word=None, min_turns=2, max_turns=16, max_line_chars=600)


@pytest.mark.fast
def test_seed_prompt_puts_the_word_in_the_students_first_line() -> None:
    config = config_for(SEED_CONFIG)
    shape = transcript_shape(prompt_setup(config, "leaf"), config, "leaf")
    assert isinstance(shape, TranscriptShape)
    assert (shape.first_speaker, shape.other_speaker, shape.open_line, shape.word) == ("STUDENT", "TEACHER", True, "leaf")


@pytest.mark.fast
def test_plain_chat_labels_every_line_and_needs_the_word_first() -> None:
    config = config_for(mode="chat", chat_prefill=False)
    shape = transcript_shape(prompt_setup(config, "bridge"), config, "bridge")
    assert isinstance(shape, TranscriptShape)
    assert (shape.first_speaker, shape.open_line, shape.prompt_turns, shape.word) == ("STUDENT", False, 0, "bridge")


@pytest.mark.fast
def test_free_when_asked_or_when_no_grammar_can_be_derived() -> None:
    assert choice(config_for(structure="free"), "bridge").structure == "free"
    lone = config_for(prompt_lines=["A story about {word}.", "NARRATOR:"])  # nobody to alternate with
    picked = choice(lone, "bridge")
    assert picked.structure == "free" and "speakers" in picked.why
    assert choice(config_for(), "bridge").structure == "grammar"


@pytest.mark.fast
def test_the_word_in_its_usual_spellings() -> None:
    assert spellings("leaf") == '("leaf" | "Leaf" | "LEAF")'
    assert spellings("DNA") == '("DNA" | "dna")'


# --- the grammar, compiled by llama.cpp, on accepted and rejected strings ------------------------------
S, T = "STUDENT", "TEACHER"
_LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
          "et dolore magna aliqua, ut enim ad minim veniam, quis nostrud exercitation ullamco laboris")  # no sentence end


def filler(n: int) -> str:
    """``n`` characters of text that no rule objects to (a run of one letter would be ``repetition``)."""
    return _LOREM[:n]

TABLE: list[tuple[str, dict[str, Any], str, list[tuple[str, str]]]] = [
    ("example prompt", {}, "bridge", [
        (" A bridge spans a river.", "complete"),  # 2 turns with the prompt's question: min_turns met
        (f" A bridge spans a river.\n{S}: Thanks!\n{T}: You are welcome.", "complete"),
        (f" A bridge spans a river.\n{S}: Thanks!\n{T}: Welcome.\n", "complete"),  # a trailing newline before the end
        (f" A bridge spans a river.\n{S}: Thanks!", "prefix"),  # the student's question must be answered
        (f" A bridge spans a river.\n{S}: Thanks!\n", "prefix"),
        (" A bridge spans a river.\n", "complete"),
        (f" Spans.\n{T}: Again me.", "rejected"),  # not alternating
        (" Spans.\nNARRATOR: Later.", "rejected"),  # a third speaker
        (" Spans.\n\nSTUDENT: Blank line.", "rejected"),
        (" Spans.\nA line without a speaker", "rejected"),
        (f" Spans.\n{S}: ", "prefix"),  # an empty turn cannot end
        (f" Spans.\n{S}:  ", "rejected"),
        ("", "prefix"),  # the teacher has to say something
    ]),
    ("seed prompt", {"path": SEED_CONFIG}, "leaf", [
        (" What is a leaf?", "prefix"),  # one turn: min_turns is 2
        (f" What is a LEAF?\n{T}: Part of a plant.", "complete"),  # the word in any case
        (f" What is a leaflet?\n{T}: Part of a plant.", "complete"),  # a substring, as the rule checks
        (f" What is a tree?\n{T}: A plant.", "rejected"),  # the first line lacks the word
        (f" What is a tree? A leaf?\n{T}: A plant.", "rejected"),  # the first sentence lacks it, the next is no bridge
        (f" What is a tree? Leaf is a word?\n{T}: A plant.", "complete"),  # the next sentence starts with it
        (f' Hello teacher! What does "leaf" mean?\n{T}: A plant.', "complete"),  # the bridge
        (f' Hello teacher!! What does "leaf" mean?\n{T}: A plant.', "complete"),
        (f' "Hello." What does "leaf" mean?\n{T}: A plant.', "complete"),
        (f' Hello teacher! What does "leaf" mean in biology?\n{T}: A plant.', "complete"),
        (f' Hello teacher! What does "leaf?\n{T}: A plant.', "rejected"),  # a bridge closes its quote and asks
        (f' Hello teacher! What does "leaf" party?\n{T}: A plant.', "rejected"),
        (f" It costs 3.5 leaf coins?\n{T}: A plant.", "complete"),  # a period inside the sentence
        (f"leaf?\n{T}: A plant.", "complete"),  # no leading space needed
        (f"  leaf?\n{T}: A plant.", "rejected"),  # but the text does not start blank
        (f" What is a Leaf?\n{T}: A plant.", "complete"),
        (f" What is a lEaF?\n{T}: A plant.", "rejected"),  # how words are written, not every casing
        (" " + filler(119) + f"leaf?\n{T}: A plant.", "complete"),  # a first sentence of 120 characters (WORD_WITHIN)
        (" " + filler(120) + f" leaf?\n{T}: A plant.", "rejected"),  # longer: only a bridge leads to the word
        (" " + filler(120) + f' "leaf" is it?\n{T}: A plant.', "complete"),
        (" " + filler(120) + f', what does "leaf" mean?\n{T}: A plant.', "complete"),
        (" " + filler(120) + f' "leaf?\n{T}: A plant.', "rejected"),
    ]),
    ("min_turns 4", {"min_turns": 4}, "bridge", [
        (f" Spans.\n{S}: Thanks!", "prefix"),
        (f" Spans.\n{S}: Thanks!\n{T}: Welcome.", "complete"),
    ]),
    ("max_turns 3", {"max_turns": 3}, "bridge", [
        (" Spans.", "complete"),
        (f" Spans.\n{S}: Thanks!", "rejected"),  # a third turn could only end on a question: none is allowed
        (f" Spans.\n{S}: Thanks!\n{T}: More.", "rejected"),  # the prompt's turn + 2 generated = 3
    ]),
    ("max_line_chars 30", {"max_line_chars": 30}, "bridge", [
        (" " + filler(30), "complete"),
        (" " + filler(31), "rejected"),
        (f" Spans.\n{S}: " + filler(30) + f"\n{T}: Yes.", "complete"),
        (f" Spans.\n{S}: " + filler(31), "rejected"),
    ]),
    ("seed prompt, max_line_chars 20", {"path": SEED_CONFIG, "max_line_chars": 20}, "leaf", [
        (" " + filler(16) + f"leaf\n{T}: Yes.", "complete"),  # 20 characters with the word at the end
        (" " + filler(17) + f"leaf\n{T}: Yes.", "rejected"),
        ("leaf" + filler(16) + f"\n{T}: Yes.", "complete"),  # 20 with the word first
        ("leaf" + filler(17) + f"\n{T}: Yes.", "rejected"),
        ("aa leaf " + filler(12) + f"\n{T}: Yes.", "complete"),
        ("aa leaf " + filler(13) + f"\n{T}: Yes.", "rejected"),
    ]),
    ("plain chat", {"mode": "chat", "chat_prefill": False}, "bridge", [
        (f"{S}: What does bridge mean?\n{T}: It spans a river.", "complete"),
        (f"\n{S}: What does bridge mean?\n{T}: It spans a river.", "complete"),
        (f"{T}: What does bridge mean?\n{S}: It spans a river.", "rejected"),  # the student opens
        (f"{S}: What does it mean?\n{T}: Spans.", "rejected"),
        ("Sure! Here is a conversation:", "rejected"),
    ]),
    ("prompt ending with a complete turn", {
        "prompt_lines": ["A conversation between a student and a teacher.", 'STUDENT: What does "{word}" mean?']},
        "bridge", [
        (f"\n{T}: It spans a river.", "complete"),  # the student's turn stands as written
        (f" Please explain.\n{T}: It spans a river.", "complete"),
        ("\n", "prefix"),  # one turn: min_turns is 2
        (f"\n{S}: Again.", "rejected"),
    ]),
]


@pytest.mark.fast
@pytest.mark.parametrize(("label", "overrides", "word", "cases"), TABLE, ids=[row[0] for row in TABLE])
def test_grammar_table(vocab: Any, label: str, overrides: dict[str, Any], word: str,
                       cases: list[tuple[str, str]]) -> None:
    overrides = dict(overrides)
    config = config_for(overrides.pop("path", EXAMPLE), **overrides)
    picked = choice(config, word)
    assert picked.structure == "grammar" and picked.gbnf, picked.why
    for text, expected in cases:
        assert verdict(vocab, picked.gbnf, text) == expected, (label, text)
        if expected == "complete":
            reason, turns = judge_structure(config, word, text)
            # what the grammar lets end, the rules keep (content rules aside: none of these strings trips them)
            assert reason is None, (label, text, reason)
            assert config.min_turns <= turns <= config.max_turns


@pytest.mark.fast
def test_a_generated_first_line_without_the_word_is_what_the_rules_reject() -> None:
    config = config_for(SEED_CONFIG)
    assert judge_structure(config, "leaf", f" What is a tree?\n{T}: A plant.")[0] == WORD_MISSING
    assert judge_structure(config, "leaf", " What is a leaf?")[0] == TOO_FEW_TURNS
    assert judge_structure(config, "leaf", " What is a leaf?\nNARRATOR: x")[0] in STRUCTURAL


@pytest.mark.fast
def test_broken_grammar_is_an_error(vocab: Any) -> None:
    import llama_cpp

    with pytest.raises(GrammarError):
        GrammarGate(llama_cpp.llama_model_get_vocab(vocab._model.model), "root ::= undefined-rule")


@pytest.mark.fast
def test_grammar_size_stays_small() -> None:
    """Per request we compile a grammar: keep it to a few thousand short rules at the default limits."""
    shape = transcript_shape(prompt_setup(config_for(SEED_CONFIG), "promises"), config_for(SEED_CONFIG), "promises")
    assert isinstance(shape, TranscriptShape)
    assert build_gbnf(shape).count("::=") < 1300
