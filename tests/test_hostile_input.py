"""Hostile and hand-edited input at the CLI: one line naming the problem and exit 2, never a
traceback, nothing sent; and user text never reaches the terminal as control characters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from convfarm.config import parse_config
from convfarm.runstate import RunStore, run_id_for
from producer.terminal import visible
from tests.conftest import EXAMPLE, producer, user_keys, write_config

DEEP = "[" * 100_000 + "]" * 100_000  # json's parser recurses once per level: RecursionError


def one_line_exit_2(result: object, *expected: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]  # type: ignore[attr-defined]
    assert result.returncode == 2, result.stderr  # type: ignore[attr-defined]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr  # type: ignore[attr-defined]
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize("where", ["config", "words", "from"])
def test_deeply_nested_json_is_one_line(tmp_path: Path, where: str, redis_url: str, rclient: redis.Redis) -> None:
    deep = tmp_path / "deep.json"
    if where == "config":
        deep.write_text('{"name": "x", "words": ' + DEEP + "}")
        before = user_keys(rclient)
        one_line_exit_2(producer("enqueue", str(deep)), "nested too deeply")
        assert user_keys(rclient) == before
        return
    deep.write_text(DEEP)
    words = tmp_path / "words.txt"
    words.write_text("bridge\nleaf\n")
    args = ["--words", str(deep)] if where == "words" else ["--words", str(words), "--from", str(deep)]
    result = producer("config", "new", "deep", "--topic", "physics", *args, "--out", str(tmp_path / "new.json"))
    one_line_exit_2(result, "nested too deeply")


def test_a_bad_queue_name_is_refused_before_anything_is_sent(tmp_path: Path, redis_url: str,
                                                            rclient: redis.Redis) -> None:
    config = write_config(tmp_path / "c.json", words=[f"w{i}" for i in range(8)])
    before = user_keys(rclient)
    one_line_exit_2(producer("enqueue", str(config), "--queue", "x[/]"), "--queue", "x[/]")
    assert user_keys(rclient) == before, "tasks or run state were written for a refused queue name"


@pytest.mark.parametrize("record", ["{}", '{"word": 5}', '{"word": "leaf", "turns": [{"speaker": 1}]}'])
def test_filter_on_a_hand_edited_shard_is_one_line(tmp_path: Path, record: str) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "conversations-00000.jsonl").write_text(record + "\n")
    (run_dir / "manifest.json").write_text(json.dumps({"run": "hand-edited", "status": "complete"}))
    result = producer("filter", str(EXAMPLE), str(run_dir), "--out", str(tmp_path / "out"))
    one_line_exit_2(result, "conversation record 1")


@pytest.mark.parametrize("command", ["cancel", "purge", "status", "dlq"])
def test_a_blank_run_id_acts_on_no_run(command: str, redis_url: str, rclient: redis.Redis) -> None:
    config, _ = parse_config(json.loads(EXAMPLE.read_text()))
    store = RunStore(rclient)
    run = run_id_for(config)
    store.create(run, config, "out")
    store.set_status(run, "complete")  # purge acts on finished runs
    keys = user_keys(rclient)
    for blank in ("", " "):
        one_line_exit_2(producer(command, blank), "blank")
    assert store.status(run) == "complete" and user_keys(rclient) == keys, "the only run was acted on"


def test_a_word_with_escape_sequences_is_shown_escaped(tmp_path: Path) -> None:
    hostile = "leaf\x1b]0;pwned\x07\x1b[2J\x1b[31m\u202e"
    config = write_config(tmp_path / "c.json", words=[hostile, hostile.upper()])  # a duplicate: a warning shows it too
    result = producer("enqueue", str(config), "--dry-run")
    assert result.returncode == 0, result.stderr
    for text in (result.stdout, result.stderr):
        assert "\x1b" not in text and "\u202e" not in text, repr(text)
    assert "leaf\\x1b]0;pwned" in result.stdout  # shown, escaped, not dropped


@pytest.mark.fast
def test_visible_escapes_control_characters_and_keeps_lines() -> None:
    assert visible("a\x1b[2Jb\tc\nd\x7f\x9b\u2066") == "a\\x1b[2Jb\tc\nd\\x7f\\x9b\\u2066"
    assert visible("plain ünïcode 中文") == "plain ünïcode 中文"
