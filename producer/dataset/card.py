"""The dataset card: ``RUN_DIR/README.md`` in the Hugging Face Hub's conventions.

YAML front matter (``configs`` with ``data_files`` so that ``datasets.load_dataset(RUN_DIR)``
loads the accepted shards and ``load_dataset(RUN_DIR, "rejected")`` the rejected ones, never
mixed; ``license``, ``language``, ``task_categories``, ``size_categories``, ``tags``,
``pretty_name``; ``dataset_info.features``, see :mod:`producer.dataset.features`), then a
body generated from the manifest and the records.

Everything that comes from the run (words, prompts, conversations, worker names, reasons) is
data, never markup: inline text is escaped character by character (HTML entities for ``& < >``,
a backslash before every other ASCII punctuation character), longer text goes into fenced code
blocks whose fence is longer than any run of backticks inside, and control characters (an
ESC sequence, a bidi override) are written as visible ``\\xNN`` / ``\\uNNNN`` escapes.
"""

from __future__ import annotations

import hashlib
import re
import string
from pathlib import Path
from typing import Any

import yaml

from convfarm.depth import describe
from convfarm.rundir.files import atomic_write
from convfarm.rundir.layout import MANIFEST, shard_files
from producer.dataset.plots import Plot
from producer.dataset.summary import DEDUP_REASONS, RunSummary

CARD = "README.md"
ACCEPTED_FILES = "conversations-*.jsonl*"
REJECTED_FILES = "rejected-*.jsonl*"
MAX_SHORT_WORDS = 300  # listed in the card; the rest are counted
STAMP = re.compile(r"<!-- convfarm-card manifest-sha256=(?P<sha>[0-9a-f]{64}) -->")
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))
_BIDI = {*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C}
_ESCAPED = set(string.punctuation) - set("&<>")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


# --- escaping ----------------------------------------------------------------------------------
def visible(text: str) -> str:
    """Control characters (but newline and tab) and bidi overrides as visible escapes."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in "\n\t" or not (code < 0x20 or 0x7F <= code < 0xA0 or code in _BIDI):
            out.append(ch)
        else:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def md(text: Any) -> str:
    """``text`` as literal inline Markdown: no markup, no HTML, one line."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return str(text)  # a number is never markup where the card puts it (mid-line)
    flat = visible(str(text)).replace("\r", " ").replace("\n", " ")
    return "".join(_ENTITIES.get(ch) or ("\\" + ch if ch in _ESCAPED else ch) for ch in flat)


def code_block(text: str, info: str = "text") -> str:
    """A fenced code block that nothing inside can close (CommonMark: a longer fence)."""
    body = visible(text).replace("\r", "\\x0d")
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{body}\n{fence}"


# --- front matter --------------------------------------------------------------------------------
def size_category(n: int) -> str:
    for limit, name in SIZE_CATEGORIES:
        if n < limit:
            return name
    return "n>1B"


def front_matter(summary: RunSummary, languages: list[str]) -> dict[str, Any]:
    config = summary.config
    configs: list[dict[str, Any]] = [
        {"config_name": "default", "data_files": [{"split": "train", "path": ACCEPTED_FILES}], "default": True}]
    infos = [{"config_name": "default", "features": summary.schemas["conversations"].yaml_features()}]
    if shard_files(summary.run_dir, "rejected"):
        # a config without files would fail to load: it is listed only when the run rejected something
        configs.append({"config_name": "rejected", "data_files": [{"split": "train", "path": REJECTED_FILES}]})
        infos.append({"config_name": "rejected", "features": summary.schemas["rejected"].yaml_features()})
    return {
        "pretty_name": str(config.get("name") or summary.manifest.get("run") or summary.run_dir.name),
        "license": config.get("license") or "unknown",
        "language": languages,
        "task_categories": ["text-generation"],
        "size_categories": [size_category(summary.accepted)],
        "tags": ["synthetic", "conversational", "convfarm"],
        "configs": configs,
        "dataset_info": infos,
    }


# --- body --------------------------------------------------------------------------------------
def _how_made(summary: RunSummary) -> list[str]:
    config, model = summary.config, summary.manifest.get("model") or {}
    lines = ["## How the data was made", ""]
    lines.append(f"- **Generator model**: {md(model.get('file') or model.get('name') or config.get('model'))} "
                 f"(config reference {md(model.get('name') or config.get('model'))}), sha256 "
                 f"{md(model.get('sha256') or 'not recorded')}, {md(model.get('size') or '?')} bytes; llama.cpp.")
    structure = config.get("structure", "grammar")
    lines.append(f"- **Mode**: {md(config.get('mode', 'completion'))}; **structure**: {md(structure)} "
                 + ("(decoded under a grammar: every line is a well-formed turn, the speakers alternate, the word is in "
                    "the first turn)" if structure == "grammar" else "(free decoding; the rules sorted the output)") + ".")
    sampling = ", ".join(f"{k} {md(config[k])}" for k in ("max_tokens", "temperature", "top_p", "top_k", "repeat_penalty",
                                                           "seed") if k in config)
    lines.append(f"- **Sampling**: {sampling} (each attempt's seed derives from the base seed, the run, the word and "
                 "the attempt).")
    speakers = config.get("speakers")
    lines.append(f"- **Rules**: speakers {md(' / '.join(speakers) if speakers else 'inferred from the prompt')}, "
                 f"{md(config.get('min_turns', '?'))} to {md(config.get('max_turns', '?'))} turns, at most "
                 f"{md(config.get('max_line_chars', '?'))} characters a line; {len(config.get('exclude') or [])} exclude "
                 "pattern(s) (below).")
    lines.append(f"- **Run**: {md(summary.manifest.get('run', summary.run_dir.name))}, config hash "
                 f"{md(summary.manifest.get('config_hash', '?'))}, status {md(summary.manifest.get('status', '?'))}, "
                 f"manifest updated {md(summary.manifest.get('updated_at', '?'))}.")
    lines += ["", "The prompt (`{word}` is replaced by each word of the list):", "",
              code_block("\n".join(config.get("prompt_lines") or []))]
    if config.get("exclude"):
        lines += ["", "Exclude patterns (regular expressions, case-insensitive; a match on any line rejects):", "",
                  code_block("\n".join(config["exclude"]))]
    lines += ["", *_judge(summary)]
    return lines


def _judge(summary: RunSummary) -> list[str]:
    configured = summary.config.get("judge")
    if not summary.judges and not summary.has_scores:
        if configured:
            return ["**Judge**: configured in the config, but no record carries a judge's score."]
        return ["**Judge**: none. No model scored these conversations for relevance; only the rules above and "
                "deduplication filtered them."]
    lines = ["**Judge**: a relevance judge scored the records (score in [0, 1]); "
             + (f"records below **min_relevance {md(summary.min_relevance)}** were rejected as off topic."
                if summary.min_relevance is not None else "no threshold was set: the scores are information only."), ""]
    lines += ["| judge model file | sha256 | method | version | records scored |", "|---|---|---|---:|---:|"]
    for (file, sha, method, version), n in summary.judges.most_common():
        lines.append(f"| {md(file)} | {md(sha)} | {md(method)} | {version} | {n} |")
    if not summary.judges:
        lines.append("| not recorded in the records | | | | |")
    if topic := summary.config.get("topic"):
        lines += ["", f"Topic the judge asked about: {md(topic)}."]
    return lines


def _counts(summary: RunSummary) -> list[str]:
    counts = summary.counts
    by_reason: dict[str, int] = counts.get("by_reason") or {}
    lines = ["## Counts", "", "Every attempt ends accepted or rejected with a reason (`reason` in the rejected records).",
             "", "| outcome | attempts |", "|---|---:|", f"| accepted | {summary.accepted} |"]
    lines += [f"| rejected: {md(reason)} | {n} |" for reason, n in sorted(by_reason.items(), key=lambda item: -item[1])]
    lines.append(f"| rejected, total | {summary.rejected} |")
    if counts.get("dropped"):
        lines.append(f"| dropped (never ran: cancelled or covered) | {counts['dropped']} |")
    if summary.manifest.get("dead_letters"):
        lines.append(f"| dead letters (attempts workers gave up on) | {summary.manifest['dead_letters']} |")
    if (summary.records["conversations"], summary.records["rejected"]) != (summary.accepted, summary.rejected):
        lines += ["", f"Note: the shards hold {summary.records['conversations']} accepted and "
                      f"{summary.records['rejected']} rejected records, not the manifest's figures above."]
    return lines


def _words(summary: RunSummary) -> list[str]:
    words = summary.manifest.get("words") or {}
    short: list[str] = list(words.get("short") or [])
    total = words.get("total")
    per_word = summary.manifest.get("per_word", summary.config.get("per_word", 1))
    lines = ["## Words", "",
             f"- {md(total if total is not None else '?')} words in the list, {md(per_word)} accepted conversation(s) "
             f"wanted per word, {summary.config.get('max_attempts', '?')} attempts each.",
             f"- **Covered** (at least one accepted conversation): {len(summary.words_accepted)}.",
             f"- **Short** of their quota after every attempt: {len(short)}" + (":" if short else ".")]
    if short:
        listed = ", ".join(md(w) for w in short[:MAX_SHORT_WORDS])
        more = f", and {len(short) - MAX_SHORT_WORDS} more (manifest.json lists them all)" if len(short) > MAX_SHORT_WORDS else ""
        lines += ["", listed + more]
    return lines


def _depth(summary: RunSummary) -> list[str]:
    cost = summary.manifest.get("depth_and_cost") or {}
    lines = ["## Depth and cost", ""]
    if cost.get("mean_turns") is None:
        return [*lines, "No accepted conversation." if not summary.accepted else "Not recorded in the manifest."]
    return [*lines, f"{md(describe(cost))}.", "",
            f"- mean turns per accepted conversation: {cost['mean_turns']}",
            f"- completion tokens per accepted conversation: {cost['tokens_per_accepted']} "
            f"({cost.get('completion_tokens', '?')} in all, rejected attempts included)",
            # machine time: each record's share of its worker's busy time (a manifest before it: the latency)
            f"- machine seconds per accepted conversation: "
            f"{cost.get('machine_seconds_per_accepted', cost.get('generation_seconds_per_accepted'))} "
            f"({cost.get('machine_seconds', cost.get('generation_seconds', '?'))} s in all)"]


def _dedup(summary: RunSummary) -> list[str]:
    by_reason = summary.counts.get("by_reason") or {}
    exact, near = (int(by_reason.get(r, 0)) for r in DEDUP_REASONS)
    threshold = summary.config.get("near_dup_threshold")
    attempts = summary.accepted + exact + near
    share = f" ({100 * (exact + near) / attempts:.1f} % of the conversations that passed the rules)" if attempts else ""
    near_text = (f"near duplicates (MinHash LSH, Jaccard similarity ≥ {md(threshold)} on word "
                 f"{md(summary.config.get('near_dup_shingle', 3))}-shingles): {near}"
                 if threshold is not None else "near-duplicate detection: off (exact only)")
    return ["## Deduplication", "",
            f"- exact duplicates dropped (same normalised text): {exact}", f"- {near_text}",
            f"- dropped as duplicates in all: {exact + near}{share}."]


def _plots(plots: list[Plot]) -> list[str]:
    if not plots:
        return []
    lines = ["## Plots", ""]
    for plot in plots:
        lines += [f"![{md(plot.title)}]({plot.file})", ""]
    return lines[:-1]


def _samples(summary: RunSummary) -> list[str]:
    lines = ["## Sample conversations", ""]
    if not summary.samples:
        return [*lines, "No accepted conversation."]
    for record in summary.samples:
        text = "\n".join(f"{t.get('speaker', '?')}: {t.get('text', '')}" for t in record.get("turns") or [])
        lines += [f"Word {md(record.get('word', ''))} (record {md(record.get('id', ''))}):", "", code_block(text), ""]
    return lines[:-1]


def _loading(summary: RunSummary, repo: str | None, has_rejected: bool) -> list[str]:
    where = repo or str(summary.run_dir)
    lines = ["## Loading", "", code_block(
        "from datasets import load_dataset\n\n"
        f"train = load_dataset({where!r}, split=\"train\")  # the accepted conversations\n"
        + (f"rejected = load_dataset({where!r}, \"rejected\", split=\"train\")  # every rejected attempt, with its reason\n"
           if has_rejected else "")
        + "\n# messages are the common chat form, for a chat template as they are:\n"
        "# tokenizer.apply_chat_template(train[0][\"messages\"], tokenize=False)", "python"), ""]
    if not has_rejected:
        lines += ["This run rejected nothing, so there is no `rejected` config.", ""]
    lines += [
        "Each record: `messages` (`role` user/assistant, `content`: the speaker who opens is the user), `turns` "
        "(the speakers as the prompt named them), `word`, `raw` (the completion as the model wrote it), `ended_by`, "
        "`model`, `params`, `seed`, `worker`, `tokens`, `generation_seconds` (latency), `machine_seconds` (its share "
        "of the worker's busy time), `scores` and `judge` (when a judge ran), `created_at`, and in rejected records "
        "`reason` and `detail`. `messages` always ends on an assistant turn; `turns` keeps the transcript as "
        "generated, a last unanswered question included.", "",
        f"`{MANIFEST}` holds the run's config, model identity, counts and the shards' sha256."]
    return lines


LIMITS = """## Limits

- **Synthetic, from a small model.** Every conversation was written by the generator model above, not by
  people. A small model states wrong facts with confidence, repeats itself and drifts off topic; the rules
  only check the shape of a conversation (speakers, turns, the word in the first turn, excluded patterns,
  duplicates), not whether what it says is true.
- **No human review.** Nothing here was read by a person before publishing, unless the publisher says so.
- **Narrow by construction.** The conversations follow one prompt template and one word list; they inherit
  the template's framing and the word list's gaps and biases.
- **Use it** for experiments, format and pipeline tests, and as a seed to filter further, not as a source
  of facts."""


def render(summary: RunSummary, plots: list[Plot], *, languages: list[str], repo: str | None = None) -> str:
    """The whole card: front matter and body."""
    meta = front_matter(summary, languages)
    has_rejected = any(c["config_name"] == "rejected" for c in meta["configs"])
    model = md((summary.manifest.get("model") or {}).get("file") or summary.config.get("model", "?"))
    intro = (f"{summary.accepted} synthetic conversations about a list of words, generated by the language model "
             f"{model} with convfarm (a llama.cpp farm), filtered by rules and deduplicated."
             + (" The rejected attempts are published beside them, each with the reason it was rejected."
                if has_rejected else ""))
    license_line = (f"License: {md(summary.config['license'])}." if summary.config.get("license") else
                    "License: unknown. The run config has no `license` field: the publisher has not said under "
                    "which terms these conversations may be used.")
    manifest_sha = hashlib.sha256((summary.run_dir / MANIFEST).read_bytes()).hexdigest()
    body = [
        f"# {md(meta['pretty_name'])}", "", intro, "", license_line, "",
        *_how_made(summary), "", *_counts(summary), "", *_words(summary), "", *_depth(summary), "",
        *_dedup(summary), "", *_plots(plots), "", *_samples(summary), "", *_loading(summary, repo, has_rejected), "",
        LIMITS, "",
        f"<!-- convfarm-card manifest-sha256={manifest_sha} -->",
    ]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)
    return "---\n" + front + "---\n\n" + "\n".join(body) + "\n"


def write_card(summary: RunSummary, plots: list[Plot], *, languages: list[str], repo: str | None = None) -> Path:
    return atomic_write(summary.run_dir / CARD, render(summary, plots, languages=languages, repo=repo))


def card_is_current(run_dir: Path) -> bool | None:
    """Whether ``README.md`` was written for the manifest as it is now (None: no convfarm card there)."""
    try:
        card = (run_dir / CARD).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    if (stamp := STAMP.search(card)) is None:
        return None
    return stamp["sha"] == hashlib.sha256((run_dir / MANIFEST).read_bytes()).hexdigest()
