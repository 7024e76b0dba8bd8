"""``producer words generate``: the parser on messy model output, and the command on the bundled model.

Most rows of the parser table are outputs the bundled SmolLM2-135M really wrote for these prompts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from producer.words.generate import generate_terms, junk_reason, parse_terms, term_key
from tests.conftest import producer
from tests.glossary_pages import one_line_error

MESSY_OUTPUTS = [
    pytest.param(
        "physics",
        "These physics terms need to be listed exactly like they are in the text.\n\n1. Vector: Vectors\n"
        "2. Acceleration: Acceleration\n3. Energy: Energy\n5. Momentum: Momentum\n6. Momentum: Momentum\n"
        "10. Sound waves: Sound\n21. Electromagnetic Energy:",
        ["Vector", "Acceleration", "Energy", "Momentum", "Sound waves", "Electromagnetic Energy"],
        id="numbered-term-colon-definition-with-preamble-and-repeats",
    ),
    pytest.param(
        "physics",
        '"universe", "relativity", "mathematics", "matter", "time", "universe", "energy", "relativity", '
        '"relativity", "absolute zero", "space", "time", "relativity",',
        ["universe", "relativity", "mathematics", "matter", "time", "energy", "absolute zero", "space"],
        id="seed-style-quoted-continuation-looping",
    ),
    pytest.param(
        "chemistry",
        "* **Molecule**: the smallest unit of a compound\n* **Covalent bond** – shared electrons\n- pH\n"
        "• buffer, titration etc.",
        ["Molecule", "Covalent bond", "pH", "buffer", "titration"],
        id="markdown-bullets-dashes-etc",
    ),
    pytest.param(
        "physics",
        "Sure! Here are 10 physics terms:\n\n1. Gravity\n2. Inertia\n3. Friction\n\nI hope this helps!",
        ["Gravity", "Inertia", "Friction"],
        id="chatty-preface-and-sign-off",
    ),
    pytest.param("physics", "gravity, force, energy, and momentum.", ["gravity", "force", "energy", "momentum"],
                 id="comma-sentence"),
    pytest.param(
        "chemistry",
        "These are fundamental principles in chemistry: electrons; atoms; molecules (bonds); elements",
        ["electrons", "atoms", "molecules", "elements"],
        id="semicolon-list-after-a-colon",
    ),
    pytest.param("physics", "1. Speed 2. Distance 3. Time 4. Acceleration", ["Speed", "Distance", "Time", "Acceleration"],
                 id="numbered-list-on-one-line"),
    pytest.param(
        "chemistry",
        '"AUGUSTANEMETABOKYRACEBESPAXOCCAMADUNALLONDA", "Moon5482731609.1", "1,057", "The answer is not", '
        '"Newton\'s law of", "I\'m just a student", "cat DNA\'s the word for cat food."',
        [],
        id="gibberish-numbers-sentences-cut-off",
    ),
    pytest.param("physics", "Vector\nvectors\nVECTOR\nblack-body\nblack body", ["Vector", "black-body"],
                 id="case-plural-and-hyphen-duplicates"),
    pytest.param("physics", "physics, physics terms, etc., more, and so on, ...", [], id="topic-and-filler"),
    pytest.param("physics", "“gravity”, ‘force’, «torque»", ["gravity", "force", "torque"], id="curly-quotes"),
    pytest.param("physics", "Ampere (A)\nNewton (unit)\nAngular momentum (L)", ["Ampere", "Newton", "Angular momentum"],
                 id="qualifiers-dropped"),
    pytest.param("physics", "a) inertia\nb) torque\n(3) work", ["inertia", "torque", "work"], id="letter-bullets"),
    pytest.param("physics", "Aero-, Compartment-, Crash- 80ft, Work -", ["Work"], id="broken-words"),
    pytest.param("physics", "", [], id="empty"),
]


@pytest.mark.parametrize(("topic", "text", "expected"), MESSY_OUTPUTS)
def test_parser_on_messy_model_output(topic: str, text: str, expected: list[str]) -> None:
    assert parse_terms(text, topic) == expected


@pytest.mark.parametrize(("term", "reason"), [
    ("absolute zero", None),
    ("Newton's third law", None),
    ("vitamin B12", None),
    ("CO2", None),
    ("x", "too short"),
    ("the rate at which the velocity of a body changes", "too long"),
    ("F=ma", "odd characters"),
    ("12 34", "no letters"),
    ("E = mc^2", "odd characters"),
    ("etc", "filler"),
    ("physics terms", "the topic itself"),
    ("The answer is", "chatter"),
    ("law of", "cut off"),
    ("Aero-", "broken word"),
    ("Laser Laser Science", "repetition"),
    ("Cake and Cakes", "repetition"),
    ("Moon5482731609", "gibberish"),
])
def test_junk_reasons(term: str, reason: str | None) -> None:
    assert junk_reason(term, "physics") == reason


class Replay:
    """Plays back outputs the bundled model wrote, for the stopping rules (the real model drifts
    too much between llama.cpp versions to make "no progress" happen on cue)."""

    def __init__(self, outputs: list[str]) -> None:
        self.outputs = outputs
        self.prompts: list[str] = []

    def _next(self) -> str:
        return self.outputs[min(len(self.prompts) - 1, len(self.outputs) - 1)]

    def create_chat_completion(self, messages: list[dict[str, str]], **_: Any) -> dict[str, Any]:
        self.prompts.append(messages[-1]["content"])
        return {"choices": [{"message": {"content": self._next()}}]}

    def create_completion(self, prompt: str, **_: Any) -> dict[str, Any]:
        self.prompts.append(prompt)
        return {"choices": [{"text": self._next()}]}


def test_keeps_asking_until_no_progress_then_says_so() -> None:
    model = Replay(["1. Vector\n2. Force", 'energy", "force", "vector"', 'force", "force"'])
    result = generate_terms(model, "physics", 50, patience=2)
    assert result.terms == ["Vector", "Force", "energy"]
    assert result.stopped == "no progress" and result.rounds == 4 and not result.complete
    # the first round asks a question; continuing rounds open the seed's list with known terms
    assert model.prompts[0].startswith("What are the key terms of physics?")
    assert model.prompts[1].startswith("The following is a list of 100 physics terms.")
    assert re.search(r'"(Vector|Force)", ', model.prompts[1])


def test_stops_at_the_count() -> None:
    result = generate_terms(Replay(["gravity, force, energy, momentum, torque"]), "physics", 3)
    assert result.terms == ["gravity", "force", "energy"] and result.stopped == "enough" and result.rounds == 1


def test_examples_start_the_list_and_are_not_counted() -> None:
    model = Replay(['gravity", "inertia", "torque"'])
    result = generate_terms(model, "physics", 2, mode="completion", examples=["gravity", "force"])
    assert result.terms == ["inertia", "torque"]
    assert '"gravity", ' in model.prompts[0] and '"force", ' in model.prompts[0]


# --- the command, on the bundled model (2 shared CPU cores: small counts, few tokens) -------------------------


def test_generate_end_to_end_on_the_bundled_model(tmp_path: Path) -> None:
    out = tmp_path / "physics.json"
    result = producer("words", "generate", "--topic", "physics", "--count", "5", "--max-tokens", "48",
                      "--seed", "1", "--threads", "2", "--format", "json", "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stderr
    terms = json.loads(out.read_text(encoding="utf-8"))
    assert 1 <= len(terms) <= 5
    assert len({term_key(t) for t in terms}) == len(terms)  # no duplicates, even by case or plural
    assert all(junk_reason(t, "physics") is None for t in terms)
    assert re.search(rf"got {len(terms)} of 5 terms for 'physics' in \d+ rounds", result.stderr)
    assert "round 1 (chat" in result.stderr  # progress per round, on stderr


def test_generate_says_how_many_it_got_when_it_runs_dry() -> None:
    result = producer("words", "generate", "--topic", "physics", "--count", "500", "--max-tokens", "24",
                      "--max-rounds", "2", "--threads", "2", timeout=300)
    assert result.returncode == 0, result.stderr
    got = len(result.stdout.splitlines())
    assert f"got {got} of 500 terms" in result.stderr and "stopped: round limit after 2 rounds" in result.stderr


def test_unknown_model_is_one_line() -> None:
    line = one_line_error(producer("words", "generate", "--topic", "physics", "--model", "no-such-model.gguf"))
    assert "no-such-model.gguf" in line


def test_blank_topic_is_one_line() -> None:
    assert "--topic is blank" in one_line_error(producer("words", "generate", "--topic", "  "))
