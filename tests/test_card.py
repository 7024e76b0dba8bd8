"""``producer card`` and ``producer push``: a run directory as a Hugging Face dataset.

One real small run (``producer run``: its own collector and generation worker processes, the
bundled model, the test's Redis database) with hostile words and a hostile prompt line; then the
card, its plots and ``datasets.load_dataset`` (the real library, offline) on it and on copies of
it changed as a test fixture says (scores written in, zstd shards, no rejected shard). The upload
itself needs the Hub, which these machines cannot reach: only what happens before it is tested.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
import zstandard
from markdown_it import MarkdownIt

from producer.dataset.card import code_block, md
from producer.dataset.features import Schema
from tests.conftest import producer, write_config
from tests.runfiles import records

# markdown, HTML and a front-matter delimiter in words; "zebra" is also an exclude pattern and the
# grammar puts the word into the first turn, so the run always has rejected records
HOSTILE = ["<b>bold</b>", "**star**", "---", "[link](http://x.invalid)"]
WORDS = ["bridge", *HOSTILE, "zebra"]
PROMPT = ["We end this document <script>alert(1)</script> with a conversation between a student and a teacher "
          "about \"{word}\" ``` |",
          "STUDENT: What does \"{word}\" mean?", "TEACHER:"]
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
PNG = b"\x89PNG\r\n\x1a\n"
# the module's real run is set up inside its first test: room for it on a loaded 2-core machine
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def real_run(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A finished ``producer run`` of the hostile config, and what it printed."""
    tmp = tmp_path_factory.mktemp("card")
    config = write_config(tmp / "hostile.json", name="hostile", max_tokens=48, words=WORDS, prompt_lines=PROMPT,
                          exclude=["zebra"])
    out = (tmp / "out").resolve()
    env = {**os.environ, "CONVFARM_BROKER_URL": redis_url}
    result = producer("run", str(config), "--out", str(out), env=env, timeout=1500)
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = [p for p in out.iterdir() if p.name.startswith("hostile-")]
    return {"dir": run_dir, "stdout": result.stdout, "tmp": tmp}


def card(run_dir: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = producer("card", str(run_dir), *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return (run_dir / "README.md").read_text(encoding="utf-8")


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def load(path: Path, config: str | None, cache: Path):
    os.environ.update(OFFLINE)  # before datasets is imported: it reads them once
    from datasets import load_dataset

    return load_dataset(str(path), config, split="train", cache_dir=str(cache))


def copy_run(run: dict, name: str) -> Path:
    target = run["tmp"] / name
    shutil.copytree(run["dir"], target)
    (target / "README.md").unlink(missing_ok=True)  # a card another test wrote
    shutil.rmtree(target / "plots", ignore_errors=True)
    return target


def rewrite_shards(run_dir: Path, change, *, compress: bool = False) -> None:
    """Test fixture: rewrite every shard's records with ``change`` (optionally as .jsonl.zst)."""
    for shard in sorted(run_dir.glob("*-*.jsonl")):
        lines = [json.dumps(change(json.loads(line)), ensure_ascii=False) + "\n"
                 for line in shard.read_text(encoding="utf-8").split("\n") if line]
        data = "".join(lines).encode()
        if compress:
            shard.with_name(shard.name + ".zst").write_bytes(zstandard.ZstdCompressor().compress(data))
            shard.unlink()
        else:
            shard.write_bytes(data)


# --- the real run ------------------------------------------------------------------------------
def test_producer_run_ends_with_where_the_card_goes(real_run: dict) -> None:
    run_dir = real_run["dir"]
    assert f"dataset card: {run_dir / 'README.md'}; write it (and its plots) with: producer card {run_dir}" \
        in real_run["stdout"]


def test_card_of_a_real_run(real_run: dict, tmp_path: Path) -> None:
    run_dir = real_run["dir"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    accepted, rejected = records(run_dir, "conversations"), records(run_dir, "rejected")
    assert manifest["status"] == "complete" and accepted and rejected, manifest["counts"]

    meta, body = split_card(card(run_dir))
    # front matter: the Hub's fields, and two configs that never mix
    assert meta["pretty_name"] == "hostile" and meta["license"] == "unknown" and meta["language"] == ["en"]
    assert meta["tags"][0] == "synthetic" and meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == ["n<1K"]
    assert [(c["config_name"], c["data_files"]) for c in meta["configs"]] == [
        ("default", [{"split": "train", "path": "conversations-*.jsonl*"}]),
        ("rejected", [{"split": "train", "path": "rejected-*.jsonl*"}])]
    assert "License: unknown" in body
    # the counts in the card are the manifest's, row by row
    rows = dict(re.findall(r"^\| (accepted|rejected: [^|]+?) \| (\d+) \|$", body, re.M))
    assert int(rows.pop("accepted")) == manifest["counts"]["accepted"] == len(accepted)
    assert {k.removeprefix("rejected: "): int(v) for k, v in rows.items()} == {
        md(k): v for k, v in manifest["counts"]["by_reason"].items()}
    assert f"| rejected, total | {manifest['counts']['rejected']} |" in body
    assert manifest["model"]["sha256"] in body
    assert f"mean turns per accepted conversation: {manifest['depth_and_cost']['mean_turns']}" in body
    assert f"**Short** of their quota after every attempt: {len(manifest['words']['short'])}" in body
    assert f"**Covered** (at least one accepted conversation): {len({r['word'] for r in accepted})}." in body
    assert "**Judge**: none." in body and "## Limits" in body

    # the plots: non-empty PNGs beside the card, linked from it; no temporary file left behind
    for name in ("turns", "completion_tokens", "outcomes", "accepted_over_time"):
        data = (run_dir / "plots" / f"{name}.png").read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
        assert f"](plots/{name}.png)" in body
    assert not (run_dir / "plots" / "relevance.png").exists() and "relevance.png" not in body  # no scores
    assert not [p.name for p in run_dir.rglob(".*")]

    # load_dataset through the card: accepted and rejected, messages as a chat template takes them
    train = load(run_dir, None, tmp_path / "cache")
    assert len(train) == manifest["counts"]["accepted"]
    assert sorted(map(json.dumps, train["messages"])) == sorted(json.dumps(r["messages"]) for r in accepted)
    assert all(m["role"] in ("user", "assistant") and isinstance(m["content"], str) for ms in train["messages"] for m in ms)
    refused = load(run_dir, "rejected", tmp_path / "cache")
    assert len(refused) == manifest["counts"]["rejected"] and set(refused["status"]) == {"rejected"}
    assert sorted(refused["reason"]) == sorted(r["reason"] for r in rejected)


def test_hostile_words_and_prompt_are_text_in_the_card(real_run: dict) -> None:
    run_dir = real_run["dir"]
    text = (run_dir / "README.md").read_text(encoding="utf-8") if (run_dir / "README.md").exists() else card(run_dir)
    _, body = split_card(text)
    html = MarkdownIt("commonmark").enable("table").render(body)
    # nothing from the run became markup: no tag, no link, no emphasis, no rule, no new heading
    assert "<script" not in html and "<b>" not in html and "<a " not in html and "<em>" not in html
    assert "<strong>star</strong>" not in html and "<hr" not in html
    assert [line for line in text.splitlines() if line == "---"] == ["---", "---"]  # the front matter's only
    # ... and it is all there as text: the prompt in a code block, short words and samples escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    for word in [*HOSTILE, "zebra"]:
        if word in json.loads((run_dir / "manifest.json").read_text())["words"]["short"]:
            assert md(word) in body, word


def test_relevance_plot_and_judge_when_records_carry_scores(real_run: dict, tmp_path: Path) -> None:
    scored = copy_run(real_run, "scored")
    manifest = json.loads((scored / "manifest.json").read_text())
    manifest["config"]["judge"] = {"min_relevance": 0.5}
    (scored / "manifest.json").write_text(json.dumps(manifest))
    judge = {"model": {"name": "smollm2-135m", "file": "judge.gguf", "sha256": "cd" * 32, "size": 1},
             "method": "yes-no", "version": 1}

    def with_score(record: dict) -> dict:  # test fixture: what a judge would have written
        relevance = 0.9 if record["status"] == "accepted" else 0.2
        return {**record, "scores": {"relevance": relevance}, "judge": judge}

    rewrite_shards(scored, with_score)
    _, body = split_card(card(scored))
    assert "records below **min_relevance 0.5** were rejected as off topic" in body
    assert "| judge\\.gguf | " + "cd" * 32 + " | yes\\-no | 1 |" in body
    data = (scored / "plots" / "relevance.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 5000 and "](plots/relevance.png)" in body
    train = load(scored, None, tmp_path / "cache")
    assert set(train["scores"][i]["relevance"] for i in range(len(train))) == {0.9}
    assert train[0]["judge"]["method"] == "yes-no"


def test_zstd_shards_and_a_run_without_rejected_records(real_run: dict, tmp_path: Path) -> None:
    packed = copy_run(real_run, "packed")
    for shard in packed.glob("rejected-*"):
        shard.unlink()
    rewrite_shards(packed, lambda r: r, compress=True)
    assert list(packed.glob("conversations-*.jsonl.zst"))
    meta, body = split_card(card(packed))
    assert [c["config_name"] for c in meta["configs"]] == ["default"]  # no config without files
    assert "This run rejected nothing, so there is no `rejected` config." in body
    train = load(packed, None, tmp_path / "cache")
    assert len(train) == len(records(real_run["dir"], "conversations"))
    with pytest.raises(ValueError, match="rejected"):
        load(packed, "rejected", tmp_path / "cache")


# --- producer push: everything before the upload ---------------------------------------------
def test_push_uploads_exactly_the_card_plots_manifest_and_shards(real_run: dict) -> None:
    from producer.dataset.push import upload_plan

    run_dir = real_run["dir"]
    card(run_dir)
    (run_dir / "exports").mkdir(exist_ok=True)
    (run_dir / "exports" / "openai.jsonl").write_text("{}\n")  # an export is not part of the dataset
    plan = upload_plan(run_dir)
    shards = sorted(p.name for p in run_dir.glob("*-*.jsonl*"))
    plots = sorted(f"plots/{p.name}" for p in (run_dir / "plots").glob("*.png"))
    assert sorted(u.path_in_repo for u in plan) == sorted(["README.md", "manifest.json", *plots, *shards])
    assert all(u.local == run_dir / u.path_in_repo for u in plan)
    result = producer("push", str(run_dir), "--repo", "someone/hostile", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"{len(plan)} file(s); nothing uploaded (--dry-run)"


@pytest.mark.parametrize(("status", "forever", "publishable"), [
    ("cancelled", True, True),  # a forever run ends when it is cancelled: what it wrote is its data
    ("cancelled", False, False),  # an ordinary run cut short is not the dataset its config asked for
])
def test_push_takes_a_cancelled_forever_run_only(real_run: dict, status: str, forever: bool, publishable: bool) -> None:
    run_dir = copy_run(real_run, f"{status}-{'forever' if forever else 'once'}")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (run_dir / "manifest.json").write_text(json.dumps({**manifest, "status": status, "forever": {"enabled": forever}}))
    card(run_dir)
    result = producer("push", str(run_dir), "--repo", "someone/hostile", "--dry-run")
    assert (result.returncode == 0) is publishable, result.stdout + result.stderr
    if not publishable:
        assert f"the run is {status}, not complete" in result.stderr


@pytest.mark.parametrize("case", ["active", "open-file", "no-card", "stale-card", "shard-missing"])
def test_push_refuses_a_run_that_is_not_ready(real_run: dict, case: str) -> None:
    run_dir = copy_run(real_run, f"refused-{case}")
    card(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    if case == "active":
        (run_dir / "manifest.json").write_text(json.dumps({**manifest, "status": "active"}))
        card(run_dir)  # a current card does not make an unfinished run publishable
    elif case == "open-file":
        (run_dir / ".open-conversations-collector1.jsonl").write_text("")
    elif case == "no-card":
        (run_dir / "README.md").unlink()
    elif case == "stale-card":
        (run_dir / "manifest.json").write_text(json.dumps({**manifest, "updated_at": "later"}))
    else:
        next(run_dir.glob("conversations-*.jsonl")).unlink()
    result = producer("push", str(run_dir), "--repo", "someone/hostile", env={**os.environ, "HF_TOKEN": "hf_never"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    expected = {"active": "the run is active, not complete", "open-file": "a collector is still writing",
                "no-card": "no dataset card; write it first with `producer card",
                "stale-card": "the card was written for an older manifest.json",
                "shard-missing": "the shards on disk and those in manifest.json differ"}[case]
    assert expected in result.stderr


def test_push_never_prints_the_token(real_run: dict, tmp_path: Path) -> None:
    run_dir = real_run["dir"]
    card(run_dir)
    secret = "hf_" + "S3cr3tT0ken" * 3
    # the Hub cannot be reached from here: offline mode makes the first request fail at once
    env = {**os.environ, **OFFLINE, "HF_TOKEN": secret, "HF_HOME": str(tmp_path / "hf")}
    result = producer("push", str(run_dir), "--repo", "someone/hostile", "--private", env=env, timeout=120)
    assert result.returncode == 1 and "upload to someone/hostile failed" in result.stderr, result.stderr
    assert secret not in result.stdout + result.stderr and "Traceback" not in result.stderr
    no_token = {k: v for k, v in env.items() if k != "HF_TOKEN"}
    result = producer("push", str(run_dir), "--repo", "someone/hostile", env=no_token, timeout=120)
    assert result.returncode == 1 and "no Hugging Face token: set HF_TOKEN" in result.stderr, result.stderr


def test_card_says_how_to_get_matplotlib_and_works_without_plots(real_run: dict, tmp_path: Path) -> None:
    plain = copy_run(real_run, "no-matplotlib")
    shim = tmp_path / "shim" / "matplotlib"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('matplotlib is not installed (test shim)')\n")
    env = {**os.environ, "PYTHONPATH": str(shim.parent)}
    result = producer("card", str(plain), env=env)
    assert result.returncode == 1 and "pip install 'convfarm[card]'" in result.stderr and "--no-plots" in result.stderr
    assert not (plain / "README.md").exists()
    _, body = split_card(card(plain, "--no-plots", env=env))
    assert "## Plots" not in body and not (plain / "plots").exists() and "## Counts" in body


# --- in-process: escaping, types, the hint ------------------------------------------------------
@pytest.mark.fast
def test_escaping_keeps_every_character_as_text() -> None:
    hostile = "<img src=x onerror=alert(1)> **b** _i_ [l](u) `c` # h | t \x1b[31mred\x1b[0m \u202egnp.exe & ---"
    html = MarkdownIt("commonmark").enable("table").render(md(hostile))
    assert html.startswith("<p>") and html.count("<") == 2  # one paragraph of text, nothing else
    assert "\x1b" not in md(hostile) and "\\x1b[31mred" in html and "\\u202e" in html
    block = code_block("```\n<b>x</b>\n---\x07")
    assert block.startswith("````text\n") and block.endswith("\n````") and "\\x07" in block
    assert MarkdownIt("commonmark").render(block).count("<pre>") == 1


@pytest.mark.fast
def test_declared_features_join_what_the_shards_disagree_on() -> None:
    schema = Schema()
    for record in ({"duplicate_of": None, "scores": {}, "params": {"temperature": 1}},
                   {"duplicate_of": "abc", "scores": {"relevance": 0.5}, "params": {"temperature": 0.8, "mode": "chat"}}):
        schema.add(record)
    assert schema.yaml_features() == [
        {"name": "duplicate_of", "dtype": "string"},
        {"name": "scores", "struct": [{"name": "relevance", "dtype": "float64"}]},
        {"name": "params", "struct": [{"name": "temperature", "dtype": "float64"}, {"name": "mode", "dtype": "string"}]}]


@pytest.mark.fast
def test_card_hint_for_enqueue_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from convfarm.settings import get_settings
    from producer.cli.dataset import card_hint

    monkeypatch.setenv("CONVFARM_OUT_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        # the collector's output is not on this machine: named on the collector's host
        assert card_hint("r-1", "") == ("dataset card: $CONVFARM_OUT_DIR/r-1/README.md on the collector's host; "
                                        "write it (and its plots) with: producer card $CONVFARM_OUT_DIR/r-1")
        (tmp_path / "sub" / "r-1").mkdir(parents=True)
        (tmp_path / "sub" / "r-1" / "manifest.json").write_text("{}")
        assert card_hint("r-1", "sub") == (f"dataset card: {tmp_path}/sub/r-1/README.md; write it (and its plots) "
                                           f"with: producer card {tmp_path}/sub/r-1")
    finally:
        get_settings.cache_clear()


def test_card_bad_input_is_one_line_exit_2(real_run: dict, tmp_path: Path) -> None:
    for args, message in (((str(real_run["dir"]), "--repo", "no-slash"), "--repo: 'no-slash' is not OWNER/NAME"),
                          ((str(real_run["dir"]), "--language", "English!"), "--language: 'English!' is not a language code"),
                          ((str(tmp_path),), "not a run directory")):
        result = producer("card", *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


# last: its worker and collector start once the `producer run` above is over, so neither takes the other's tasks
def test_enqueue_wait_ends_with_where_the_card_goes(farm: dict, tmp_path: Path) -> None:
    config = write_config(tmp_path / "waited.json", name="waited", max_tokens=16, words=["leaf"])
    result = producer("enqueue", str(config), "--wait", env=farm["env"], timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    run = re.search(r"run (\S+): sent", result.stdout).group(1)
    run_dir = farm["out"] / run
    assert result.stdout.strip().splitlines()[-1] == (
        f"dataset card: {run_dir / 'README.md'}; write it (and its plots) with: producer card {run_dir}")


@pytest.mark.fast
def test_shards_that_disagree_on_types_load_through_the_card(tmp_path: Path) -> None:
    """Without the card's declared features this rejected config fails in datasets ("Couldn't cast
    array of type string to null"): its first shard has duplicate_of null, its second a text."""
    from producer.dataset.card import write_card
    from producer.dataset.summary import summarise
    from tests.test_export import CONVERSATIONS, record

    run = tmp_path / "mixed-1234abcd"
    run.mkdir()
    built = [json.loads(record(run.name, w, p).to_json()) for w, p in CONVERSATIONS.items()]
    built[2]["scores"] = {"relevance": 0.9}
    built[3]["params"]["temperature"] = 1  # an int where the other records have a float
    rejected = [{**built[0], "id": "r1", "status": "rejected", "reason": "word_missing", "detail": "no word"},
                {**built[1], "id": "r2", "status": "rejected", "reason": "duplicate", "duplicate_of": "id-bridge"}]
    shards = {"conversations-00000.jsonl": built[:2], "conversations-00001.jsonl": built[2:],
              "rejected-00000.jsonl": rejected[:1], "rejected-00001.jsonl": rejected[1:]}
    for name, rows in shards.items():
        (run / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "manifest.json").write_text(json.dumps({"run": run.name, "status": "complete", "counts": {
        "accepted": 4, "rejected": 2, "by_reason": {"word_missing": 1, "duplicate": 1}}}))
    write_card(summarise(run), [], languages=["en"])
    # producer export works beside the card, and its output is not part of the dataset
    exported = producer("export", str(run), "--format", "parquet")
    assert exported.returncode == 0 and (run / "exports" / f"{run.name}.parquet").is_file(), exported.stderr
    train = load(run, None, tmp_path / "cache")
    assert [s["relevance"] for s in train["scores"]] == [None, None, 0.9, None]
    assert train[3]["params"]["temperature"] == 1.0 and train[0]["messages"] == built[0]["messages"]
    refused = load(run, "rejected", tmp_path / "cache")
    assert refused["duplicate_of"] == [None, "id-bridge"] and refused["reason"] == ["word_missing", "duplicate"]


def test_a_license_in_the_config_reaches_the_front_matter_and_the_body(real_run: dict) -> None:
    """The publisher's license (the config's optional ``license``) is the card's, in the Hub's
    front matter and in words; without one the card says the terms are unknown (test above)."""
    licensed = copy_run(real_run, "licensed")
    manifest = json.loads((licensed / "manifest.json").read_text())
    manifest["config"]["license"] = "cc-by-4.0"
    (licensed / "manifest.json").write_text(json.dumps(manifest))
    front, body = split_card(card(licensed, "--no-plots"))
    assert front["license"] == "cc-by-4.0"
    assert f"License: {md('cc-by-4.0')}." in body and "License: unknown" not in body  # escaped as every value is
