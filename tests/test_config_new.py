"""``producer config new``: a config for a topic that loads and validates, or one line and no file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convfarm.config import load_config
from producer.config_new import DEFAULT_TEMPLATE, with_topic
from tests.conftest import EXAMPLE, REPO, producer
from tests.glossary_pages import PAGES, PHYSICS, PHYSICS_TERMS, GlossaryServer, glossary_server, one_line_error

__all__ = ["glossary_server"]  # the fixture, imported to be used here


def test_config_from_a_glossary_page_loads_and_validates(tmp_path: Path) -> None:
    out = tmp_path / "physics.json"
    result = producer("config", "new", "physics", "--topic", "physics", "--glossary", str(PHYSICS), "--out", str(out))
    assert result.returncode == 0, result.stderr
    config, warnings = load_config(out)
    assert warnings == []
    assert config.name == "physics" and config.words == PHYSICS_TERMS
    assert config.topic == "physics"  # the relevance judge's topic
    assert "between a student and a physics teacher, where" in config.prompt_lines[0]
    example = json.loads(EXAMPLE.read_text())
    assert config.exclude == example["exclude"] and config.model == example["model"]
    assert config.prompt_lines[1:] == example["prompt_lines"][1:]
    assert f"wrote {out}: 16 words" in result.stderr


def test_written_config_is_accepted_by_enqueue(tmp_path: Path) -> None:
    out = tmp_path / "physics.json"
    assert producer("config", "new", "physics", "-t", "physics", "-g", str(PHYSICS), "-o", str(out)).returncode == 0
    plan = producer("enqueue", str(out), "--dry-run")
    assert plan.returncode == 0, plan.stderr
    shown = " ".join(plan.stdout.split())  # rich wraps at 80 columns
    assert "16 word(s)" in shown and "a student and a physics teacher" in shown


def test_config_from_a_glossary_url(tmp_path: Path, glossary_server: GlossaryServer) -> None:
    out = tmp_path / "physics.json"
    result = producer("config", "new", "physics", "-t", "physics", "-g", f"{glossary_server.url}/physics.html", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert load_config(out)[0].words == PHYSICS_TERMS


def test_word_file_lines_comments_and_seed_format(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    # the seed guide's sed output ("term",), plain lines, a comment, blanks and a case duplicate
    words.write_text('# from the guide\n"gravity",\n"absolute zero",\n\nforce\nGravity\n  torque  \n', encoding="utf-8")
    out = tmp_path / "mech.json"
    result = producer("config", "new", "mech", "-t", "mechanics", "-w", str(words), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert load_config(out)[0].words == ["gravity", "absolute zero", "force", "torque"]
    assert "duplicate" in result.stderr  # parse_config's warning is passed on


def test_word_file_json_array_and_an_topic(tmp_path: Path) -> None:
    words = tmp_path / "words.json"
    words.write_text(json.dumps(["nebula", "parsec", "{bad}"]), encoding="utf-8")
    out = tmp_path / "astro.json"
    result = producer("config", "new", "astro", "-t", "astronomy", "-w", str(words), "-o", str(out))
    assert result.returncode == 0, result.stderr
    config = load_config(out)[0]
    assert config.words == ["nebula", "parsec"]
    assert "a student and an astronomy teacher" in config.prompt_lines[0]
    assert "dropped 1 unusable" in result.stderr


def test_template_with_a_topic_placeholder_keeps_its_settings(tmp_path: Path) -> None:
    template = tmp_path / "template.json"
    template.write_text(json.dumps({
        "name": "anything", "model": "smollm2-135m", "words": ["old"], "exclude": ["war"], "max_tokens": 128,
        "prompt_lines": ["A {topic} lesson. The tutor explains \"{word}\".", "PUPIL:"], "speakers": ["PUPIL", "TUTOR"],
    }), encoding="utf-8")
    words = tmp_path / "words.txt"
    words.write_text("sonnet\nstanza\n", encoding="utf-8")
    out = tmp_path / "poetry.json"
    result = producer("config", "new", "poetry", "-t", "poetry", "-w", str(words), "--from", str(template), "-o", str(out))
    assert result.returncode == 0, result.stderr
    config = load_config(out)[0]
    assert config.prompt_lines == ['A poetry lesson. The tutor explains "{word}".', "PUPIL:"]
    assert (config.words, config.exclude, config.max_tokens, config.name) == (["sonnet", "stanza"], ["war"], 128, "poetry")


def test_overwrite_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "physics.json"
    out.write_text("my hand-tuned config\n", encoding="utf-8")
    line = one_line_error(producer("config", "new", "physics", "-t", "physics", "-g", str(PHYSICS), "-o", str(out)))
    assert "already exists" in line and "--force" in line
    assert out.read_text(encoding="utf-8") == "my hand-tuned config\n"
    result = producer("config", "new", "physics", "-t", "physics", "-g", str(PHYSICS), "-o", str(out), "--force")
    assert result.returncode == 0, result.stderr
    assert load_config(out)[0].words == PHYSICS_TERMS


def test_default_output_is_name_json_in_the_working_directory(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "producer.cli", "config", "new", "optics", "-t", "optics",
                             "-g", str(PHYSICS)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert load_config(tmp_path / "optics.json")[0].name == "optics"


# --- bad input: one line, exit 2, no file ---------------------------------------------------------------------


@pytest.mark.parametrize(("setup", "args", "message"), [
    (None, ["-t", "physics", "-g", str(PAGES / "no-glossary.html")], "no glossary terms found"),
    ("empty", ["-t", "physics", "-w", "WORDS"], "the word file has no words"),
    ("comments-only", ["-t", "physics", "-w", "WORDS"], "the word file has no words"),
    ("binary", ["-t", "physics", "-w", "WORDS"], "not UTF-8"),
    (None, ["-t", "physics", "-w", "TMP/missing.txt"], "no such word file"),
    (None, ["-t", "physics"], "give exactly one of --words FILE or --glossary SOURCE"),
    ("empty", ["-t", "physics", "-w", "WORDS", "-g", str(PHYSICS)], "give exactly one of"),
    (None, ["-t", " ", "-g", str(PHYSICS)], "--topic is blank"),
    ("no-teacher", ["-t", "physics", "-g", str(PHYSICS), "--from", "TEMPLATE"], "no '{topic}' placeholder"),
    (None, ["-t", "physics", "-g", str(PHYSICS), "--from", "TMP/missing-template.json"], "no such template"),
])
def test_bad_input_writes_nothing(tmp_path: Path, setup: str | None, args: list[str], message: str) -> None:
    words = tmp_path / "words.txt"
    template = tmp_path / "template.json"
    if setup == "empty":
        words.write_text("\n \n", encoding="utf-8")
    elif setup == "comments-only":
        words.write_text("# nothing yet\n", encoding="utf-8")
    elif setup == "binary":
        words.write_bytes(b"\xff\xfe\x00g\x00r\x80\x81")
    elif setup == "no-teacher":
        template.write_text(json.dumps({**DEFAULT_TEMPLATE, "prompt_lines": ['Define "{word}".', "Q:"]}), encoding="utf-8")
    out = tmp_path / "physics.json"
    filled = [a.replace("WORDS", str(words)).replace("TEMPLATE", str(template)).replace("TMP", str(tmp_path)) for a in args]
    line = one_line_error(producer("config", "new", "physics", *filled, "-o", str(out)))
    assert message in line
    assert not out.exists()


def test_bad_name_is_caught_before_fetching(tmp_path: Path, glossary_server: GlossaryServer) -> None:
    out = tmp_path / "x.json"
    line = one_line_error(producer("config", "new", "my physics!", "-t", "physics",
                                   "-g", f"{glossary_server.url}/physics.html", "-o", str(out)))
    assert "field 'name'" in line
    assert glossary_server.user_agents == [] and not out.exists()


def test_glossary_404_writes_nothing(tmp_path: Path, glossary_server: GlossaryServer) -> None:
    out = tmp_path / "physics.json"
    line = one_line_error(producer("config", "new", "physics", "-t", "physics",
                                   "-g", f"{glossary_server.url}/Glossary_of_nothing", "-o", str(out)))
    assert "HTTP error 404" in line and not out.exists()


# --- the pieces ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "topic", "expected"), [
    ("a student and a teacher, where the teacher", "physics", "a student and a physics teacher, where the teacher"),
    ("between a student and a teacher", "organic chemistry", "between a student and an organic chemistry teacher"),
    ("A teacher explains", "music", "A music teacher explains"),
    ("the professor says", "history", "the history professor says"),
])
@pytest.mark.fast
def test_topic_goes_in_front_of_the_first_teacher(line: str, topic: str, expected: str) -> None:
    assert with_topic([line, "STUDENT:"], topic) == [expected, "STUDENT:"]


@pytest.mark.fast
def test_default_template_is_the_example_config() -> None:
    example = json.loads(EXAMPLE.read_text())
    for key in ("model", "prompt_lines", "exclude"):
        assert DEFAULT_TEMPLATE[key] == example[key], key
