"""``producer export`` and ``producer filter`` on real run directories (plain and zstd shards)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import zstandard

from convfarm.messages import ConversationRecord, Message, ModelIdentity, TokenCounts, Turn
from convfarm.rules import roles_for
from tests.conftest import REPO, producer, write_config

CONVERSATIONS = {
    "bridge": [("STUDENT", 'What does "bridge" mean?'), ("TEACHER", "A bridge carries a road over a river."),
               ("STUDENT", "Are bridges strong?"), ("TEACHER", "Yes, steel bridges are very strong.")],
    # ends with an unanswered question: the training formats drop it (seed format.py)
    "leaf": [("STUDENT", 'What does "leaf" mean?'), ("TEACHER", "A leaf is the flat green part of a plant."),
             ("STUDENT", "Why is it green?")],
    "room": [("STUDENT", 'What does "room" mean?'), ("TEACHER", "A room is a space inside a building: walls, a door.")],
    # tightening exclude afterwards (producer filter) drops this one
    "camera": [("STUDENT", 'What does "camera" mean?'), ("TEACHER", "A camera takes pictures, even of politicians.")],
}


def record(run: str, word: str, pairs: list[tuple[str, str]]) -> ConversationRecord:
    turns = [Turn(speaker=s, text=t) for s, t in pairs]
    return ConversationRecord(
        id=f"id-{word}", run=run, word=word, attempt=0, status="accepted", turns=turns,
        messages=[Message(**m) for m in roles_for(turns)], raw="...", ended_by="eos",
        model=ModelIdentity(name="smollm2-135m", file="SmolLM2-135M-Instruct.Q4_1.gguf", sha256="ab" * 32, size=1),
        params={"mode": "completion", "max_tokens": 64, "temperature": 0.8}, seed=7, worker="w1@host",
        tokens=TokenCounts(prompt=30, completion=40), generation_seconds=0.5,
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run as the collector leaves it: a plain shard, a zstd shard, a rejected shard, a manifest."""
    run = tmp_path / "example-1234abcd"
    run.mkdir()
    records = [record(run.name, w, p).to_json() for w, p in CONVERSATIONS.items()]
    (run / "conversations-00000.jsonl").write_text("\n".join(records[:2]) + "\n")
    (run / "conversations-00001.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        ("\n".join(records[2:]) + "\n").encode()))
    rejected = record(run.name, "pocket", [("STUDENT", "Hello?")]).model_copy(update={"status": "rejected",
                                                                                         "reason": "word_missing"})
    (run / "rejected-00000.jsonl").write_text(rejected.to_json() + "\n")
    (run / "manifest.json").write_text(json.dumps({"run": run.name, "config_hash": "abc",
                                                   "config": {"name": "example", "words": [*CONVERSATIONS, "pocket"]}}))
    return run


def export(run_dir: Path, fmt: str, out: Path, *extra: str) -> str:
    result = producer("export", str(run_dir), "--format", fmt, "--out", str(out), *extra)
    assert result.returncode == 0, result.stderr
    return out.read_text() if fmt != "parquet" else ""


def test_seed_text_is_the_seed_file(run_dir: Path, tmp_path: Path) -> None:
    text = export(run_dir, "seed-text", tmp_path / "out.txt")
    blocks = text.split("\n\n")
    assert blocks[0].splitlines() == [
        'STUDENT: What does "bridge" mean?', "TERM: bridge", "TEACHER: A bridge carries a road over a river.",
        "STUDENT: Are bridges strong?", "TEACHER: Yes, steel bridges are very strong."]
    assert blocks[1].splitlines()[-1] == "STUDENT: Why is it green?"  # seed text keeps every line
    assert text.count("TERM: ") == 4  # zstd shard read too


def test_symbols_is_the_seed_training_format(run_dir: Path, tmp_path: Path) -> None:
    text = export(run_dir, "symbols", tmp_path / "train.txt")
    blocks = [b.splitlines() for b in text.strip().split("\n\n")]
    assert blocks[0][:3] == ['= What does "bridge" mean?', "~ bridge", "# A bridge carries a road over a river."]
    assert blocks[1] == ['= What does "leaf" mean?', "~ leaf", "# A leaf is the flat green part of a plant."]
    custom = export(run_dir, "symbols", tmp_path / "custom.txt", "--symbols", "Q:,A:,TERM:")
    assert custom.splitlines()[:2] == ['Q: What does "bridge" mean?', "TERM: bridge"]


def test_openai_round_trip(run_dir: Path, tmp_path: Path) -> None:
    lines = [json.loads(line) for line in export(run_dir, "openai", tmp_path / "o.jsonl").splitlines()]
    assert len(lines) == 4
    by_first = {line["messages"][0]["content"]: line["messages"] for line in lines}
    bridge = by_first['What does "bridge" mean?']
    assert [(m["role"], m["content"]) for m in bridge] == [
        ("user" if s == "STUDENT" else "assistant", t) for s, t in CONVERSATIONS["bridge"]]
    assert [m["role"] for m in by_first['What does "leaf" mean?']] == ["user", "assistant"]  # trailing question dropped
    frame = pd.read_json(tmp_path / "o.jsonl", lines=True)
    assert list(frame.columns) == ["id", "word", "messages"] and len(frame) == 4
    # every row traces back to its record
    assert dict(zip(frame["id"], frame["word"], strict=True)) == {f"id-{w}": w for w in CONVERSATIONS}


def test_sharegpt_with_a_role_mapping(run_dir: Path, tmp_path: Path) -> None:
    text = export(run_dir, "sharegpt", tmp_path / "s.jsonl", "--roles", "TEACHER=user,STUDENT=assistant")
    row = json.loads(text.splitlines()[0])
    assert (row["id"], row["word"]) == ("id-bridge", "bridge")
    first = row["conversations"]
    assert first[0] == {"from": "gpt", "value": 'What does "bridge" mean?'}
    assert first[1] == {"from": "human", "value": "A bridge carries a road over a river."}


def test_parquet_round_trip_with_pandas_and_pyarrow(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.parquet"
    export(run_dir, "parquet", out)
    table = pq.read_table(out)
    assert table.num_rows == 4
    frame = pd.read_parquet(out)
    row = frame.set_index("word").loc["bridge"]
    assert [(t["speaker"], t["text"]) for t in row["turns"]] == CONVERSATIONS["bridge"]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "user", "assistant"]
    assert row["completion_tokens"] == 40 and row["model"]["sha256"] == "ab" * 32
    assert json.loads(row["params"])["max_tokens"] == 64
    assert isinstance(row["created_at"], pd.Timestamp) and str(row["created_at"].tz) == "UTC"
    # one rule for every format: messages end on the assistant, turns keep the transcript as generated
    leaf = frame.set_index("word").loc["leaf"]
    assert [m["role"] for m in leaf["messages"]] == ["user", "assistant"] and len(leaf["turns"]) == 3


def test_parquet_is_named_after_the_run(run_dir: Path) -> None:
    result = producer("export", str(run_dir), "--format", "parquet")
    assert result.returncode == 0, result.stderr
    assert pq.read_table(run_dir / "exports" / f"{run_dir.name}.parquet").num_rows == 4


def test_export_to_a_pipe_that_closes_early_exits_quietly(run_dir: Path) -> None:
    many = run_dir / "conversations-00002.jsonl"  # enough lines that the writer outlives `head -1`
    many.write_text("".join(record(run_dir.name, f"w{i}", CONVERSATIONS["bridge"]).to_json() + "\n"
                            for i in range(3000)))
    piped = subprocess.run(f"{sys.executable} -m producer.cli export {run_dir} --format openai --out - | head -1",
                           shell=True, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert json.loads(piped.stdout)["word"] == "bridge"
    assert piped.stderr == "", piped.stderr


def test_export_default_path_and_stdout(run_dir: Path) -> None:
    result = producer("export", str(run_dir), "--format", "openai")
    assert result.returncode == 0, result.stderr
    assert (run_dir / "exports" / "openai.jsonl").read_text().count("\n") == 4
    piped = producer("export", str(run_dir), "--format", "seed-text", "--out", "-")
    assert piped.returncode == 0 and piped.stdout.startswith('STUDENT: What does "bridge" mean?\nTERM: bridge\n')


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "csv"], "unknown format 'csv'"),
    (["--format", "openai", "--roles", "STUDENT"], "--roles"),
    (["--format", "symbols", "--symbols", "=,#"], "--symbols"),
    (["--format", "parquet", "--out", "-"], "give --out FILE"),
])
def test_export_bad_options(run_dir: Path, args: list[str], message: str) -> None:
    result = producer("export", str(run_dir), *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_export_rejects_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    for target in (tmp_path, tmp_path / "missing", tmp_path / "notes.txt"):
        result = producer("export", str(target), "--format", "openai")
        assert result.returncode == 2
        assert "not a run directory" in result.stderr or "no such directory" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


# --- producer filter ------------------------------------------------------------------------------
def test_filter_reapplies_a_tightened_config(run_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "tight.json", exclude=["relig", "politic"],
                          words=["bridge", "leaf", "room", "camera"], max_turns=3)
    out = tmp_path / "filtered"
    result = producer("filter", str(config), str(run_dir), "--out", str(out))
    assert result.returncode == 0, result.stderr
    kept = sorted(r["word"] for r in map(json.loads, (out / "conversations-00000.jsonl").read_text().splitlines()))
    assert kept == ["leaf", "room"]
    rejected = {r["word"]: r for r in map(json.loads, (out / "rejected-00000.jsonl").read_text().splitlines())}
    assert {w: r["reason"] for w, r in rejected.items()} == {"camera": "excluded", "bridge": "too_many_turns"}
    # each rejection names its rule, where, and for excluded the pattern and what it matched
    assert rejected["camera"]["detail"].startswith("rule excluded in turn 2: pattern 'politic' matches 'politic'")
    assert rejected["bridge"]["detail"].startswith("rule too_many_turns")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"accepted": 2, "rejected": 2, "by_reason": {"excluded": 1, "too_many_turns": 1},
                                  "dropped": 0}
    # the collector's manifest keys (one helper builds both), and where it came from
    assert {"words", "per_word", "forever", "depth_and_cost", "dead_letters", "shards", "filtered_from"} <= set(manifest)
    assert manifest["words"] == {"total": 4, "done": 2, "short": ["bridge", "camera"]}
    # the filtered set is a run directory like any other
    assert producer("export", str(out), "--format", "openai", "--out", str(tmp_path / "f.jsonl")).returncode == 0
    assert (tmp_path / "f.jsonl").read_text().count("\n") == 2
    again = producer("filter", str(config), str(run_dir), "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr


def test_filter_with_another_runs_config_refuses_unless_forced(run_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "physics.json", name="physics", words=["force", "mass"])
    out = tmp_path / "wrong"
    refused = producer("filter", str(config), str(run_dir), "--out", str(out))
    assert refused.returncode == 1 and "shares no word" in refused.stderr and "--force" in refused.stderr
    assert not out.exists()
    forced = producer("filter", str(config), str(run_dir), "--out", str(out), "--force")
    assert forced.returncode == 0 and "warning" in forced.stderr and "kept 0" in forced.stdout


def test_filter_with_a_word_list(run_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.json")
    words = tmp_path / "words.txt"
    words.write_text("bridge\nroom\n")
    out = tmp_path / "only"
    assert producer("filter", str(config), str(run_dir), "--out", str(out), "--words", str(words)).returncode == 0
    dropped = {r["word"]: r["reason"] for r in map(json.loads, (out / "rejected-00000.jsonl").read_text().splitlines())}
    assert dropped["leaf"] == "word_not_in_config"


@pytest.mark.parametrize("case", ["missing-words", "not-a-run", "bad-config"])
def test_filter_bad_input(run_dir: Path, tmp_path: Path, case: str) -> None:
    config = write_config(tmp_path / "c.json")
    args = {"missing-words": [str(config), str(run_dir), "--words", str(tmp_path / "nope.txt")],
            "not-a-run": [str(config), str(tmp_path / "nowhere")],
            "bad-config": [str(tmp_path / "absent.json"), str(run_dir)]}[case]
    result = producer("filter", *args)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_filter_force_replaces_only_its_own_output(run_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.json")
    sibling = tmp_path / "other-run"
    sibling.mkdir()
    (sibling / "manifest.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    # the directory that holds the run (and a sibling run and a file): refused, nothing deleted
    parent = producer("filter", str(config), str(run_dir), "--out", str(tmp_path), "--force")
    assert parent.returncode == 2 and "Traceback" not in parent.stderr and len(parent.stderr.strip().splitlines()) == 1
    # a directory producer filter did not write: refused even with --force
    foreign = producer("filter", str(config), str(run_dir), "--out", str(sibling), "--force")
    assert foreign.returncode == 2 and "marker" in foreign.stderr
    assert (run_dir / "manifest.json").is_file() and (sibling / "manifest.json").is_file()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    # its own output: replaced
    out = tmp_path / "filtered"
    assert producer("filter", str(config), str(run_dir), "--out", str(out)).returncode == 0
    again = producer("filter", str(config), str(run_dir), "--out", str(out), "--force")
    assert again.returncode == 0, again.stderr
    # ... unless someone put something of theirs in it
    (out / "keep-me.txt").write_text("x")
    spoiled = producer("filter", str(config), str(run_dir), "--out", str(out), "--force")
    assert spoiled.returncode == 2 and (out / "keep-me.txt").exists()


@pytest.mark.parametrize("case", ["a-directory", "under-a-file", "unwritable", "non-object-line", "bad-turns"])
def test_export_problems_are_one_line_exit_2(run_dir: Path, tmp_path: Path, case: str) -> None:
    out = tmp_path / "out.jsonl"
    if case == "a-directory":
        out = tmp_path
    elif case == "under-a-file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out.jsonl"
    elif case == "unwritable":
        out = Path("/proc/convfarm-export.jsonl")  # refused even to root
    elif case == "non-object-line":
        (run_dir / "conversations-00002.jsonl").write_text('[1, 2]\n"text"\n')
    elif case == "bad-turns":
        (run_dir / "conversations-00002.jsonl").write_text(json.dumps({"id": "x", "word": "w", "turns": [{"who": 1}]}) + "\n")
    result = producer("export", str(run_dir), "--format", "openai", "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list(tmp_path.glob(".out.jsonl.*.tmp")), "no temporary file left behind"


def test_export_streams_in_constant_memory(tmp_path: Path) -> None:
    """Peak memory of `producer export` is the same for 2,000 and 60,000 records in a .zst shard."""
    peaks = {}
    for n in (2_000, 60_000):
        run = tmp_path / f"big-{n}"
        run.mkdir()
        line = record(run.name, "bridge", CONVERSATIONS["bridge"]).model_copy(update={"raw": "x" * 400}).to_json() + "\n"
        with (run / "conversations-00000.jsonl.zst").open("wb") as fh, \
                zstandard.ZstdCompressor().stream_writer(fh) as writer:
            for _ in range(n):
                writer.write(line.encode())
        (run / "manifest.json").write_text(json.dumps({"run": run.name}))
        measure = ("import resource, subprocess, sys; subprocess.run([sys.executable, '-m', 'producer.cli', 'export', "
                   f"{str(run)!r}, '--format', 'openai', '--out', {str(tmp_path / f'{n}.jsonl')!r}], check=True); "
                   "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        result = subprocess.run([sys.executable, "-c", measure], capture_output=True, text=True, cwd=REPO, timeout=600)
        assert result.returncode == 0, result.stderr
        peaks[n] = int(result.stdout.split()[-1]) / 1024  # MiB
        assert (tmp_path / f"{n}.jsonl").read_text().count("\n") == n
    # 30x the records (~60 MB of JSON): the whole-run load grew by hundreds of MiB
    assert peaks[60_000] - peaks[2_000] < 25, peaks


# --- producer show --------------------------------------------------------------------------------
def test_show_prints_conversations_wrapped_with_their_verdicts(run_dir: Path) -> None:
    narrow = {**os.environ, "COLUMNS": "40"}
    shown = producer("show", str(run_dir), "-n", "2", env=narrow)
    assert shown.returncode == 0, shown.stderr
    assert "bridge" in shown.stdout and "leaf" in shown.stdout and "room" not in shown.stdout  # -n 2
    assert "accepted" in shown.stdout and "unanswered" in shown.stdout  # leaf's last question
    text = " ".join(line.strip("│ ") for line in shown.stdout.splitlines())
    assert all(word in text for word in "Yes, steel bridges are very strong.".split())  # wrapped, not cropped
    one = producer("show", str(run_dir), "--word", "camera", env=narrow)
    assert "camera" in one.stdout and "bridge" not in one.stdout
    rejected = producer("show", str(run_dir), "--rejected", env=narrow)
    assert "pocket" in rejected.stdout and "word_missing" in rejected.stdout
    none = producer("show", str(run_dir), "--word", "nothing")
    assert none.returncode == 0 and "no accepted conversations for 'nothing'" in none.stdout
