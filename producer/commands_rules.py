"""The rule-related commands: ``producer try``, ``producer filter``, ``producer export``.

Registered on the main app by :func:`register` (see the bottom of ``producer/cli.py``).
None of them needs Redis: they work on a config, a model and run directories on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from producer.console import console, fail, read_config

ConfigArg = Annotated[Path, typer.Argument(help="The run config (JSON).", show_default=False)]
RunDirArg = Annotated[Path, typer.Argument(help="A run directory (OUT/<run>/ with shards and manifest.json).",
                                           show_default=False)]


def _run_dir(path: Path) -> Path:
    from producer.rundir import NotARun, check_run_dir

    try:
        return check_run_dir(path)
    except NotARun as exc:
        fail(str(exc))


def try_command(
    config_path: ConfigArg,
    word: Annotated[str, typer.Option("--word", "-w", help="The word to make a conversation about.")],
    seed: Annotated[int | None, typer.Option(min=0, help="Sampling seed (default: the run's seed for this word).")] = None,
    mode: Annotated[str | None, typer.Option(help="Override the config's mode: completion or chat.")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Override the config's max_tokens.")] = None,
    structure: Annotated[str | None, typer.Option(help="Override the config's structure: grammar or free.")] = None,
    n_gpu_layers: Annotated[int | None, typer.Option("--n-gpu-layers", "-ngl", min=-1, help="Layers on the GPU.")] = None,
    raw: Annotated[bool, typer.Option("--raw/--no-raw", help="Show the raw completion.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead.")] = False,
) -> None:
    """Generate one conversation here and now and show every rule's verdict (no Redis needed)."""
    from producer.try_one import render, try_word
    from workers.model_files import ModelNotFound

    if mode is not None and mode not in ("completion", "chat"):
        fail(f"--mode: {mode!r} is not one of: completion, chat")
    if structure is not None and structure not in ("grammar", "free"):  # issue 12
        fail(f"--structure: {structure!r} is not one of: grammar, free")
    if not word.strip() or "{" in word or "}" in word or "\n" in word:
        fail(f"--word: {word!r} is not a usable word (blank, a brace or a line break)")
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


def filter_command(
    config_path: ConfigArg,
    run_dir: RunDirArg,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="New run directory (default: RUN_DIR-filtered).")] = None,
    words: Annotated[Path | None, typer.Option(help="Keep only these words (JSON list or one per line).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")] = False,
) -> None:
    """Re-apply CONFIG's rules to the conversations of RUN_DIR, writing a new filtered run directory."""
    from producer.refilter import FilterError, refilter
    from producer.words.clean import WordSourceError, read_word_file

    config = read_config(config_path)
    source = _run_dir(run_dir)
    target = out or source.with_name(source.name + "-filtered")
    try:
        word_list = read_word_file(words) if words is not None else None
        result = refilter(config, source, target, words=word_list, force=force)
    except (FilterError, WordSourceError) as exc:
        fail(str(exc))
    dropped = ", ".join(f"{reason} {n}" for reason, n in result.by_reason.most_common()) or "none"
    console.print(f"kept [bold]{result.kept}[/], dropped {sum(result.by_reason.values())} ({dropped})", highlight=False)
    console.print(f"output: {target}", highlight=False)


def export_command(
    run_dir: RunDirArg,
    fmt: Annotated[str, typer.Option("--format", "-f", help="seed-text, symbols, openai, sharegpt or parquet.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output file; '-' for stdout "
                                             "(default: RUN_DIR/exports/FORMAT.EXT).")] = None,
    roles: Annotated[str | None, typer.Option(help="Speaker to role, e.g. STUDENT=user,TEACHER=assistant "
                                              "(default: the opening speaker is user).")] = None,
    symbols: Annotated[str | None, typer.Option(help="symbols format: prefixes for user, assistant and TERM lines.")] = "=,#,~",
) -> None:
    """Write the accepted conversations of RUN_DIR in a training format."""
    from producer.export import FORMATS, ExportError, ExportOptions, export_run, parse_roles, parse_symbols

    if fmt not in FORMATS:
        fail(f"--format: unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    source = _run_dir(run_dir)
    to_stdout = out is not None and str(out) == "-"
    target = None if to_stdout else out or source / "exports" / f"{fmt}.{FORMATS[fmt]}"
    try:
        options = ExportOptions(roles=parse_roles(roles), symbols=parse_symbols(symbols))
        count = export_run(source, fmt, target, options)
    except ExportError as exc:
        fail(str(exc))
    if target is not None:
        console.print(f"{count} conversation(s) -> {target}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("try")(try_command)
    app.command("filter")(filter_command)
    app.command("export")(export_command)
