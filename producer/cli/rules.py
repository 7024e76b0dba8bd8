"""The rule-related commands: ``producer try`` and ``producer filter``.

Neither needs Redis: they work on a config, a model and run directories on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from convfarm.config import word_problem
from producer.cli.app import app
from producer.cli.console import console, err, fail, read_config, run_dir_or_fail
from producer.cli.options import ConfigArg, NglOpt, RunDirArg


@app.command("try")
def try_command(
    config_path: ConfigArg,
    word: Annotated[str, typer.Option("--word", "-w", help="The word to make a conversation about.")],
    seed: Annotated[int | None, typer.Option(min=0, help="Sampling seed (default: the run's seed for this word).")] = None,
    mode: Annotated[str | None, typer.Option(help="Override the config's mode: completion or chat.")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Override the config's max_tokens.")] = None,
    structure: Annotated[str | None, typer.Option(help="Override the config's structure: grammar or free.")] = None,
    n_gpu_layers: NglOpt = None,
    raw: Annotated[bool, typer.Option("--raw/--no-raw", help="Show the raw completion.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead.")] = False,
) -> None:
    """Generate one conversation here and now and show every rule's verdict (no Redis needed)."""
    from convfarm.model_files import ModelNotFound
    from producer.try_one import render, try_word

    if mode is not None and mode not in ("completion", "chat"):
        fail(f"--mode: {mode!r} is not one of: completion, chat")
    if structure is not None and structure not in ("grammar", "free"):
        fail(f"--structure: {structure!r} is not one of: grammar, free")
    if problem := word_problem(word):
        fail(f"--word: {word!r} {problem}")
    config = read_config(config_path, mode=mode, max_tokens=max_tokens, n_gpu_layers=n_gpu_layers, structure=structure)
    try:
        result = try_word(config, word.strip(), seed)
    except ModelNotFound as exc:
        fail(f"{config_path}: field 'model': {exc}")
    except ValueError as exc:  # e.g. chat mode on a model without a chat template
        fail(str(exc))
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        render(result, console, show_raw=raw)


@app.command("filter")
def filter_command(
    config_path: ConfigArg,
    run_dir: RunDirArg,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="New run directory (default: RUN_DIR-filtered).")] = None,
    words: Annotated[Path | None, typer.Option(help="Keep only these words (JSON list or one per line).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier output of producer filter, and filter "
                                        "even with a config that shares no word with the run.")] = False,
) -> None:
    """Re-apply CONFIG's rules to the conversations of RUN_DIR, writing a new filtered run directory.

    Every rejection names its rule, where, and for excluded the pattern and what it matched.
    A config of another run (no word in common) is refused with exit 1 unless --force.
    """
    from producer.refilter import FilterError, check_same_run, refilter
    from producer.words.clean import WordSourceError, read_word_file

    config = read_config(config_path)
    source = run_dir_or_fail(run_dir)
    target = out or source.with_name(source.name + "-filtered")
    try:
        word_list = read_word_file(words) if words is not None else None
        if (mismatch := check_same_run(config, source, word_list)) is not None:
            if not force:
                fail(f"{mismatch}; is it the right config? (--force filters anyway)", code=1)
            err.print(f"[yellow]warning:[/] {escape(mismatch)}", highlight=False)
        result = refilter(config, source, target, words=word_list, force=force)
    except (FilterError, WordSourceError) as exc:
        fail(str(exc))
    dropped = ", ".join(f"{reason} {n}" for reason, n in result.by_reason.most_common()) or "none"
    console.print(f"kept [bold]{result.kept}[/], dropped {sum(result.by_reason.values())} ({dropped})", highlight=False)
    console.print(f"output: {target}", highlight=False)


@app.command("judge")
def judge_command(
    config_path: ConfigArg,
    path: Annotated[Path, typer.Argument(help="A run directory, or a JSONL file of records.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help='Print one {"id": ..., "relevance": ...} per line.')] = False,
    rejected: Annotated[bool, typer.Option("--rejected", help="Also score a run directory's rejected records.")] = False,
    one_at_a_time: Annotated[bool, typer.Option("--one-at-a-time", help="Score request by request with llama.cpp "
                                                "(the reference) instead of the batched engine.")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write a re-scored run directory here (as producer "
                                             "filter: the config's rules, then judge.min_relevance).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out written by filter or judge.")] = False,
) -> None:
    """Score every record of PATH with CONFIG's relevance judge (topic, judge model); PATH is never changed."""
    from convfarm.judge.distribution import on_topic_bar
    from convfarm.model_files import ModelNotFound
    from producer.judge_run import JudgeInputError, judge_identity, judge_model, read_records, rescored, score_records
    from producer.refilter import FilterError, refilter

    config = read_config(config_path)
    if not path.exists():
        fail(f"{path}: no such file or directory")
    if out is not None and not path.is_dir():
        fail(f"--out: needs a run directory to re-score, and {path} is a file")
    if out is not None and rejected:
        fail("--out writes the run's conversations re-scored: --rejected does not apply")
    try:
        records = list(read_records(path, rejected=rejected))  # read (and checked) before the model loads
        model = judge_model(config, one_at_a_time=one_at_a_time)
    except JudgeInputError as exc:
        fail(str(exc))
    except ModelNotFound as exc:
        fail(f"{config_path}: field 'judge.model' or 'model': {exc}")
    try:
        scored = score_records(config, iter(records), model, one_at_a_time=one_at_a_time)
        if out is not None:
            result = refilter(config, path, out, force=force, records=map(rescored(judge_identity(config, model)), scored))
            dropped = ", ".join(f"{reason} {n}" for reason, n in result.by_reason.most_common()) or "none"
            console.print(f"kept [bold]{result.kept}[/], dropped {sum(result.by_reason.values())} ({dropped})",
                          highlight=False)
            console.print(f"output: {out}", highlight=False)
            return
        bar, below = on_topic_bar(config), 0
        for item in scored:
            below += item.relevance < bar
            if as_json:
                print(json.dumps({"id": item.record.get("id"), "relevance": round(item.relevance, 4)}), flush=True)
            else:
                console.print(f"{item.relevance:.3f}  {item.record['word']}  {item.record.get('id', '')}",
                              highlight=False, markup=False)
        if not as_json:
            console.print(f"{len(records)} scored, {below} below {bar:g}", highlight=False)
    except FilterError as exc:
        fail(str(exc))
    except ValueError as exc:  # a conversation with the judge's question longer than the model's context
        fail(f"{path}: {exc}")
    finally:
        model.close()
