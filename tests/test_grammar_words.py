"""Any word a config accepts yields a grammar llama.cpp parses, and a conversation sampled under it
names the word, as written, in its first turn (docs/rules-and-modes.md, grammar-constrained decoding).

Real words from glossaries hold hyphens, quotes, brackets and non-Latin scripts; "negative
log-likelihood" once made a grammar llama.cpp refused, and every attempt of the word failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from convfarm.config import RunConfig, load_config, word_problem
from convfarm.engine import GenerationRequest, ResidentModel
from convfarm.engine.grammar import structure_for
from convfarm.engine.grammar_sampler import GrammarGate
from convfarm.judging import prompt_setup
from tests.conftest import REPO, resident

SEED_CONFIG = REPO / "examples" / "seed-example.json"  # ends "STUDENT:": the word must be in the first generated line


def seed_config(**overrides: Any) -> RunConfig:
    config, _ = load_config(SEED_CONFIG, exclude=[], **overrides)  # no exclude: a random word may hold "kill"
    return config


def as_a_config_keeps_it(word: str) -> str:
    return " ".join(word.split())  # what config loading does to a word (convfarm/config.py, _clean_words)


# printable text of every script: no control, surrogate, private-use, unassigned or line-separator characters
PRINTABLE = st.characters(blacklist_categories=("Cc", "Cs", "Co", "Cn", "Zl", "Zp"))
WORDS = (st.text(PRINTABLE, min_size=1, max_size=24).map(as_a_config_keeps_it)
         .filter(lambda w: word_problem(w) is None))


@pytest.fixture(scope="module")
def vocab() -> Iterator[Any]:
    """The bundled model's tokenizer only: what llama.cpp's grammar parser needs."""
    import llama_cpp
    from llama_cpp import Llama

    from convfarm.model_files import resolve_model

    llama = Llama(model_path=str(resolve_model("smollm2-135m")), vocab_only=True, verbose=False)
    yield llama_cpp.llama_model_get_vocab(llama._model.model)
    llama.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(word=WORDS)
@example(word="negative log-likelihood")
@example(word="soft x-ray")
@example(word="a (b-c) | d")
@example(word='back\\slash-x "quoted-word"')
def test_every_accepted_word_gives_a_grammar_llama_cpp_parses(vocab: Any, word: str) -> None:
    config = seed_config()
    picked = structure_for(config, word, prompt_setup(config, word))
    assert picked.structure == "grammar" and picked.gbnf, picked.why
    GrammarGate(vocab, picked.gbnf).close()  # raises GrammarError when llama.cpp refuses it


@pytest.fixture(scope="module")
def model() -> Iterator[ResidentModel]:
    yield from resident(1, "per-sequence")


def spellings_of(word: str) -> set[str]:
    return {word, word.lower(), word[:1].upper() + word[1:], word.upper()}


# few examples, short lines, no shrinking: each one decodes a conversation's first line on the real model
@settings(max_examples=2, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(word=st.text(PRINTABLE, min_size=1, max_size=10).map(as_a_config_keeps_it)
       .filter(lambda w: word_problem(w) is None))
@example(word="negative log-likelihood")
def test_a_sampled_first_line_holds_the_word_as_written(model: ResidentModel, word: str) -> None:
    # a first line of at most 40 characters holds the word: 48 tokens reach it (the model writes ~4
    # characters a token; a word outside ASCII may take a token per byte)
    config = seed_config(max_line_chars=40, max_tokens=48)
    outcome = next(model.generate([GenerationRequest(config=config, word=word, seed=3)], early_stop=False))
    assert outcome.structure == "grammar"
    first_line = outcome.raw.split("\n", 1)[0]
    assert any(form in first_line for form in spellings_of(word)), (word, outcome.raw[:200])
