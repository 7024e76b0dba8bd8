"""Streaming early stop on the real bundled model: a doomed conversation stops decoding at once.

Each case generates the same request (same seed) twice: with early stop, as the worker does,
and with ``early_stop=False``, which decodes to EOS/max_tokens and judges the same lines.
The verdict must be the same; the tokens must not.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from convfarm.config import RunConfig, load_config
from convfarm.engine import GenerationOutcome, GenerationRequest, ResidentModel
from tests.conftest import EXAMPLE, REPO

SEED_CONFIG = REPO / "examples" / "seed-example.json"


@pytest.fixture(scope="module")
def model() -> Iterator[ResidentModel]:
    # per-sequence KV: the second decode of a request reuses the first one's cached prompt, and only
    # with a stream per sequence are its cells laid out as on a cold cache, so "same seed, same
    # text" holds; the unified cache may place them elsewhere (docs/batched-decoding.md)
    resident = ResidentModel("smollm2-135m", n_ctx=512, n_gpu_layers=0, n_threads=None, kv_layout="per-sequence")
    yield resident
    resident.close()


def both(model: ResidentModel, config: RunConfig, word: str, seed: int) -> tuple[GenerationOutcome, GenerationOutcome]:
    request = GenerationRequest(config=config, word=word, seed=seed)
    return next(model.generate([request], score=False)), next(model.generate([request], early_stop=False, score=False))


@pytest.mark.parametrize("seed", [1, 2])
def test_a_first_line_without_the_word_stops_decoding(model: ResidentModel, seed: int) -> None:
    # the seed's prompt: the first generated line must contain the word; nobody says "zyzzogeton"
    config, _ = load_config(SEED_CONFIG, max_tokens=64, structure="free")  # the grammar would make the word appear
    stopped, full = both(model, config, "zyzzogeton", seed)
    assert stopped.reason == full.reason == "word_missing"
    assert stopped.raw.count("\n") == 1 and stopped.raw.endswith("\n")  # not one line more than needed
    assert stopped.completion_tokens < full.completion_tokens
    assert full.raw.startswith(stopped.raw)  # same seed, same text: only the waste differs


def test_an_excluded_word_stops_decoding_mid_line(model: ResidentModel) -> None:
    config, _ = load_config(EXAMPLE, max_tokens=64, exclude=[r"\bis\b"])
    stopped, full = both(model, config, "bridge", 3)
    assert stopped.reason == full.reason == "excluded"
    assert "\n" not in stopped.raw  # decided inside the first line, not at its end
    assert stopped.completion_tokens < full.completion_tokens


def test_a_doomed_prompt_decodes_nothing(model: ResidentModel) -> None:
    # the word itself is excluded: the prompt's own first turn fails, as the collector's re-check would say
    config, _ = load_config(EXAMPLE, max_tokens=64, exclude=["bridg"])
    outcome = next(model.generate([GenerationRequest(config=config, word="bridge", seed=1)], score=False))
    assert outcome.reason == "excluded" and outcome.completion_tokens == 0


def test_accepted_conversations_end_where_the_transcript_ends(model: ResidentModel) -> None:
    """The judge keeps the transcript, not the model's chatter after it; nothing kept is cut off."""
    config, _ = load_config(EXAMPLE, max_tokens=64)
    outcome = next(model.generate([GenerationRequest(config=config, word="bridge", seed=1)], score=False))
    assert outcome.reason is None
    assert [t.speaker for t in outcome.turns][:2] == ["STUDENT", "TEACHER"]
    assert outcome.turns[0].text == 'What does "bridge" mean?'  # the prompt's turn opens the conversation
    # the grammar lets the model stop only after an answer, so it may run to max_tokens: then the line
    # max_tokens cut is not kept, and every kept line is whole (followed by a line break in the raw text)
    assert outcome.ended_by in ("eos", "max_tokens") or outcome.ended_by.startswith("transcript_end")
    last = outcome.turns[-1].text
    end = outcome.raw.rfind(last) + len(last)
    assert end >= len(last) and (outcome.ended_by != "max_tokens" or outcome.raw[end:end + 1] == "\n"), outcome.raw
