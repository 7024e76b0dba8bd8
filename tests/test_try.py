"""``producer try`` as a user runs it: a subprocess, the real bundled model, no Redis."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE, REPO, producer, write_config

RULES = {"empty_text", "unexpected_speaker", "not_alternating", "word_missing", "excluded", "line_too_long",
         "repetition", "too_few_turns", "too_many_turns"}


def offline_env() -> dict[str, str]:
    # no broker reachable: try must not need one
    return {**os.environ, "CONVFARM_BROKER_URL": "redis://127.0.0.1:1/0", "REDIS_URL": "redis://127.0.0.1:1/0"}


def try_json(*args: str) -> dict:
    result = producer("try", *args, "--json", env=offline_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_try_shows_the_conversation_every_rule_and_the_decision() -> None:
    result = producer("try", str(EXAMPLE), "--word", "bridge", "--seed", "1", "--max-tokens", "48",
                      env=offline_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'STUDENT: What does "bridge" mean?' in out and "TEACHER:" in out
    assert all(rule in out for rule in RULES)
    # the decision printed is the one the rules give (the same seed gives the same conversation)
    verdict = try_json(str(EXAMPLE), "--word", "bridge", "--seed", "1", "--max-tokens", "48")
    assert f"decision: {verdict['decision'].upper()}" in out
    assert_decision_follows_the_rules(verdict)
    if verdict["decision"] == "accepted":  # scored by the relevance judge on the model that wrote it
        assert 0.0 <= verdict["scores"]["relevance"] <= 1.0 and verdict["judge"]["method"]
        assert f"relevance {verdict['scores']['relevance']:.3f}" in out
    else:
        assert verdict["scores"] == {}  # a rule's rejection is not scored


def assert_decision_follows_the_rules(result: dict) -> None:
    """Accepted exactly when every rule keeps the conversation; else the reason is the first rule that fails."""
    failed = [r["verdict"] for r in result["rules"] if r["verdict"] != "keep"]
    if failed:
        assert (result["decision"], result["reason"]) == ("rejected", failed[0]), result
    else:
        assert result["decision"] == "accepted", result


def test_try_rejects_with_the_rule_that_fails(tmp_path: Path) -> None:
    """Both verdicts are exercised: an exclude pattern the prompt itself contains rejects every conversation."""
    config = write_config(tmp_path / "excluded.json", exclude=["bridge"])
    result = try_json(str(config), "--word", "bridge", "--seed", "1", "--max-tokens", "48")
    assert result["decision"] == "rejected" and result["reason"] == "excluded", result
    assert_decision_follows_the_rules(result)


def test_try_is_reproducible_and_reports_the_verdict_of_each_rule() -> None:
    first = try_json(str(EXAMPLE), "--word", "bridge", "--seed", "1", "--max-tokens", "48")
    second = try_json(str(EXAMPLE), "--word", "bridge", "--seed", "1", "--max-tokens", "48")
    assert first["raw"] == second["raw"] and first["turns"] == second["turns"]  # same seed, same conversation
    assert {r["rule"] for r in first["rules"]} == RULES
    assert first["tokens"]["completion"] <= 48
    assert_decision_follows_the_rules(first)
    assert first["turns"][0] == {"speaker": "STUDENT", "text": 'What does "bridge" mean?'}  # the prompt's own line


def test_try_with_the_seed_prompt_explains_a_rejection(tmp_path: Path) -> None:
    # the seed's prompt decoded freely: the first generated line must contain the word, and nobody says "zyzzogeton"
    config = REPO / "examples" / "seed-example.json"
    result = try_json(str(config), "--word", "zyzzogeton", "--seed", "1", "--max-tokens", "48", "--structure", "free")
    assert result["decision"] == "rejected" and result["reason"] == "word_missing"
    assert result["structure"] == "free" and "free" in result["structure_why"]
    assert "zyzzogeton" in result["detail"]
    verdicts = {r["rule"]: r for r in result["rules"]}
    assert verdicts["word_missing"] == {"rule": "word_missing", "verdict": "word_missing", "turn": 0}


def test_try_with_the_grammar_names_the_word_in_the_first_line() -> None:
    # the default structure (grammar) makes the seed's prompt name the word, however rare
    config = REPO / "examples" / "seed-example.json"
    result = try_json(str(config), "--word", "zyzzogeton", "--seed", "1", "--max-tokens", "64")
    assert result["structure"] == "grammar" and "zyzzogeton" in result["structure_why"]
    assert result["reason"] != "word_missing"
    assert "zyzzogeton" in result["raw"].split("\n")[0].casefold()
    shown = producer("try", str(config), "--word", "zyzzogeton", "--seed", "1", "--max-tokens", "64", "--no-raw",
                     env=offline_env(), timeout=300)
    assert "structure grammar" in shown.stdout


def test_try_chat_mode() -> None:
    result = try_json(str(EXAMPLE), "--word", "leaf", "--mode", "chat", "--seed", "1", "--max-tokens", "48")
    assert result["mode"] == "chat"
    assert result["turns"][0] == {"speaker": "STUDENT", "text": 'What does "leaf" mean?'}  # started by the prompt


@pytest.mark.parametrize(("case", "message"), [
    ("missing-config", "no such file"),
    ("bad-mode", "--mode"),
    ("bad-model", "field 'model'"),
    ("brace-word", "--word"),
])
def test_try_bad_input(tmp_path: Path, case: str, message: str) -> None:
    bad_model = write_config(tmp_path / "m.json", model=str(tmp_path / "nothing.gguf"))
    args = {"missing-config": [str(tmp_path / "absent.json"), "--word", "x"],
            "bad-mode": [str(EXAMPLE), "--word", "x", "--mode", "poetry"],
            "bad-model": [str(bad_model), "--word", "x"],
            "brace-word": [str(EXAMPLE), "--word", "{x}"]}[case]
    result = producer("try", *args, env=offline_env())
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_try_wraps_the_conversation_never_crops_it() -> None:
    """The user judges this text: at a narrow terminal every word of every turn is still shown."""
    verdict = try_json(str(EXAMPLE), "--word", "bridge", "--seed", "1", "--max-tokens", "64")
    shown = producer("try", str(EXAMPLE), "--word", "bridge", "--seed", "1", "--max-tokens", "64", "--no-raw",
                     env={**offline_env(), "COLUMNS": "50"}, timeout=300)
    assert shown.returncode == 0, shown.stderr
    panel = " ".join(line.strip("│ ").strip() for line in shown.stdout.splitlines() if line.startswith("│"))
    for turn in verdict["turns"]:
        for word in turn["text"].split():
            assert word in panel, (word, shown.stdout)
