"""Config validation: the seed's config loads unchanged; every bad config is one line, exit 2,
and nothing reaches Redis."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from convfarm.config import ConfigError, load_config, parse_config
from convfarm.exclude import TimedOut, check_exclude
from tests.conftest import EXAMPLE, REPO, producer, user_keys

SEED_EXAMPLE = REPO / "tests" / "data" / "seed-example.json"
GOOD = json.loads(EXAMPLE.read_text())


def test_seed_config_loads_unchanged() -> None:
    config, warnings = load_config(SEED_EXAMPLE)
    assert config.model == "phi-2.Q4_K_M.gguf"
    assert config.words[:2] == ["bridge", "leaf"] and len(config.words) == 8
    assert config.exclude == ["relig", "sex", "gender", "politic", "kill"]
    assert warnings == []
    assert config.prompt_for("leaf").endswith('the meaning of "leaf"\nSTUDENT:')
    from convfarm.prompt import read_prompt

    setup = read_prompt(config.prompt_for("leaf"))
    assert setup.opening is not None and setup.opening.speaker == "STUDENT"


@pytest.mark.fast
def test_example_configs_load() -> None:
    for path in sorted((REPO / "examples").glob("*.json")):
        config, _ = load_config(path)
        assert config.words, path


@pytest.mark.fast
def test_duplicate_and_blank_words_are_dropped_with_a_warning() -> None:
    config, warnings = parse_config({**GOOD, "words": ["bridge", " Bridge ", "", "leaf", "leaf"]})
    assert config.words == ["bridge", "leaf"]
    assert any("duplicate" in w for w in warnings) and any("blank" in w for w in warnings)


@pytest.mark.fast
def test_exclude_is_case_insensitive() -> None:
    config, _ = parse_config(GOOD)
    assert config.exclude_regex is not None and config.exclude_regex.search("The RELIGIOUS view")


def test_literal_braces_in_template_are_allowed() -> None:
    config, _ = parse_config({**GOOD, "prompt_lines": ['A set {{like this}} for "{word}"', "STUDENT:"]})
    assert config.prompt_for("x").startswith('A set {like this} for "x"')


BAD_CONFIGS: list[tuple[str, str, str]] = [
    # (case, file content, the text the one-line error must contain)
    ("invalid json", '{"name": "x", "words": [', "invalid JSON"),
    ("not an object", "[1, 2]", "JSON object"),
    ("missing words", json.dumps({k: v for k, v in GOOD.items() if k != "words"}), "'words' is required"),
    ("empty words", json.dumps({**GOOD, "words": []}), "'words'"),
    ("only blank words", json.dumps({**GOOD, "words": ["", "  "]}), "'words'"),
    ("template without word", json.dumps({**GOOD, "prompt_lines": ["Talk about something", "STUDENT:"]}), "{word}"),
    ("unknown placeholder", json.dumps({**GOOD, "prompt_lines": ["About {topic} and {word}"]}), "{topic}"),
    ("unbalanced brace", json.dumps({**GOOD, "prompt_lines": ["About {word} {"]}), "prompt_lines"),
    ("brace in a word", json.dumps({**GOOD, "words": ["bridge", "le{af"]}), "brace"),
    ("bad exclude regex", json.dumps({**GOOD, "exclude": ["relig", "sex("]}), "'exclude'"),
    ("typo in a field name", json.dumps({**GOOD, "exlude": ["x"]}), "did you mean 'exclude'"),
    ("wrong type", json.dumps({**GOOD, "max_tokens": "many"}), "'max_tokens'"),
    ("out of range", json.dumps({**GOOD, "temperature": -1}), "'temperature'"),
    ("unknown mode", json.dumps({**GOOD, "mode": "poetry"}), "'mode'"),
    ("min above max turns", json.dumps({**GOOD, "min_turns": 9, "max_turns": 4}), "min_turns"),
    # upper bounds: each of these once loaded and then exhausted a worker or Redis
    ("huge n_ctx", json.dumps({**GOOD, "n_ctx": 10_000_000}), "'n_ctx'"),
    ("huge n_threads", json.dumps({**GOOD, "n_threads": 100_000}), "'n_threads'"),
    ("huge shard_size", json.dumps({**GOOD, "shard_size": 10**9}), "'shard_size'"),
    ("huge near_dup_num_perm", json.dumps({**GOOD, "near_dup_num_perm": 1024}), "'near_dup_num_perm'"),
    ("huge per_word", json.dumps({**GOOD, "per_word": 300_000}), "'per_word'"),
    ("huge max_attempts", json.dumps({**GOOD, "max_attempts": 1000}), "'max_attempts'"),
    ("model path out of the cache", json.dumps({**GOOD, "model": "owner/repo:../../etc/x.gguf"}), "'model'"),
    ("catastrophic exclude", json.dumps({**GOOD, "exclude": ["relig", "(a|aa)+c"]}), "backtrack catastrophically"),
]


@pytest.mark.parametrize(("case", "content", "expected"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_rejected_by_the_model(case: str, content: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("case", "content", "expected"), BAD_CONFIGS[::3], ids=[c[0] for c in BAD_CONFIGS[::3]])
def test_bad_config_cli_exits_2_and_writes_nothing(case: str, content: str, expected: str, tmp_path: Path,
                                                   redis_url: str, rclient: redis.Redis) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    before = user_keys(rclient)
    result = producer("enqueue", str(path))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr
    assert user_keys(rclient) == before, "a bad config must not write anything to Redis"


def test_missing_config_file(tmp_path: Path) -> None:
    result = producer("enqueue", str(tmp_path / "nope.json"))
    assert result.returncode == 2 and "no such file" in result.stderr


def test_dry_run_needs_no_redis(tmp_path: Path) -> None:
    env = {**__import__("os").environ, "CONVFARM_BROKER_URL": "redis://127.0.0.1:1/0"}
    result = producer("enqueue", str(EXAMPLE), "--dry-run", "--per-word", "2", env=env)
    assert result.returncode == 0, result.stderr
    assert "16 task(s)" in result.stdout and "convfarm.gen.smollm2-135m" in result.stdout


@pytest.mark.fast
def test_exclude_is_validated_as_joined_and_used() -> None:
    # "(?i)kill" is valid alone; joined after another pattern Python's re rejected it in every task
    config, _ = parse_config({**GOOD, "exclude": ["relig", "(?i)kill"]})
    assert config.exclude_regex is not None and config.exclude_regex.search("They KILL time")


def test_a_backtracking_exclude_is_exit_2_at_enqueue_quickly(tmp_path: Path, redis_url: str,
                                                            rclient: redis.Redis) -> None:
    path = tmp_path / "slow.json"
    path.write_text(json.dumps({**GOOD, "exclude": ["(a|aa)+c"]}))
    before = user_keys(rclient)
    started = time.monotonic()
    result = producer("enqueue", str(path), env={**os.environ, "CONVFARM_BROKER_URL": redis_url})
    assert result.returncode == 2 and "exclude" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 30
    assert user_keys(rclient) == before


def test_exclude_search_time_is_bounded_at_run_time() -> None:
    # a pattern that slipped past validation cannot hold a worker: the line counts as excluded
    import regex

    from convfarm.exclude import ExcludePattern
    from convfarm.messages import Turn
    from convfarm.rules import EXCLUDED, RuleContext, check_excluded

    slow = ExcludePattern(regex.compile("(a|aa)+c"))
    started = time.monotonic()
    verdict = check_excluded(RuleContext(word="a", exclude=slow), [], Turn(speaker="A", text="a" * 300))
    assert verdict == EXCLUDED and time.monotonic() - started < 5  # unbounded, this search would never end


# --- exclude safety: decided by reading the pattern, once, at enqueue (docs/design.md, "Config") ---------
CATASTROPHIC = [r"(?:a|aa){16}c", r"(a|aa)+c", r"(\w+\s?)+:", r"(a*)*b", r"(x?x)+y", r"^(\w+\s?)*$",
                r"(a|b|ab)*c", r"(?=(a+)+b)", r"((ab)*|a)*c"]
SAFE = ["relig", r"\bsex", r"\bkill", r"(cat|dog)+s", r"(\d+,)+", r".*a.*b", r"\w+(\s\w+)*:", r"(a|ab)+c",
        "kill|killer", r"\b(?:i am|i'm) an? (?:ai|language model)\b", r"[a-z]+@[a-z]+\.com", r"(?>a+)+b", r"(ab|ac)+"]


@pytest.mark.fast
@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_a_catastrophic_exclude_is_refused_by_reading_it(pattern: str) -> None:
    with pytest.raises(ConfigError, match="backtrack catastrophically"):
        parse_config({**GOOD, "exclude": ["relig", pattern]})


@pytest.mark.fast
@pytest.mark.parametrize("pattern", SAFE)
def test_an_ordinary_exclude_is_accepted_and_searches_fast(pattern: str) -> None:
    config, _ = parse_config({**GOOD, "exclude": [pattern]})
    assert config.exclude_regex is not None
    # what the analysis lets through really is fast, on the lines that make risky patterns backtrack
    for line in (" ".join(["word"] * 120), "a" * 600, "ab" * 300, "a " * 300, "a-" * 300):
        assert not isinstance(config.exclude_regex.search(line), TimedOut), (pattern, line[:20])


@pytest.mark.fast
def test_the_exclude_decision_does_not_depend_on_how_fast_the_machine_is(monkeypatch: pytest.MonkeyPatch) -> None:
    # the pattern of the review: accepted by a timed probe on a quick machine, failed on a busy collector.
    # Deciding now never times a search: a machine where every search "times out" decides the same
    import regex

    check_exclude.cache_clear()
    monkeypatch.setattr(regex, "compile", _busy(regex.compile))
    with pytest.raises(ConfigError, match="backtrack catastrophically"):
        parse_config({**GOOD, "exclude": [r"(?:a|aa){16}c"]})
    assert parse_config({**GOOD, "exclude": ["relig", r"\bkill"]})[0].exclude == ["relig", r"\bkill"]


def _busy(compile_: Any) -> Any:
    """regex.compile, whose patterns time out on every search: a machine infinitely busy."""
    class Busy:
        def __init__(self, pattern: Any) -> None:
            self.pattern = pattern

        def search(self, *_args: object, **_kwargs: object) -> None:
            raise TimeoutError

    return lambda *args, **kwargs: Busy(compile_(*args, **kwargs))


@pytest.mark.fast
def test_a_stored_config_is_not_judged_again(rclient: redis.Redis) -> None:
    """The decision is stored with the run: a worker or collector loading the run's config only compiles
    its patterns. Were it judged again, a stricter check (another release, another machine) would fail a
    run that enqueue accepted; and each load cost 1.5 s of probing."""
    from convfarm.config import RunConfig, stored_config
    from convfarm.runstate import RunStore, run_id_for

    config, _ = parse_config({**GOOD, "name": "stored-exclude", "exclude": ["relig"]})
    # a run created when this pattern was accepted (as the timed probe did): its stored config holds it
    accepted_then = RunConfig.model_construct(**{**config.__dict__, "exclude": [r"(?:a|aa){16}c"]})
    store = RunStore(rclient)
    run = run_id_for(accepted_then)
    store.create(run, accepted_then, "out")
    loaded = store.get(run)
    assert loaded is not None and loaded.config.exclude == [r"(?:a|aa){16}c"]
    check_exclude.cache_clear()
    started = time.monotonic()
    assert stored_config(accepted_then.canonical_json()).exclude_regex is not None
    assert check_exclude.cache_info().misses == 0, "the stored config's safety was decided again"
    assert time.monotonic() - started < 1.0  # the timed probes took 1.5 s here
    # and at run time a line its search cannot finish within the bound is excluded, never kept
    from convfarm.judging import rule_context
    from convfarm.messages import Turn
    from convfarm.rules import EXCLUDED, check_excluded

    ctx = rule_context(loaded.config, "a")

    assert check_excluded(ctx, [], Turn(speaker="A", text="a" * 300)) == EXCLUDED
