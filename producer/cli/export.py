"""``producer export``: a run's accepted conversations in a training format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from producer.cli.app import app
from producer.cli.console import console, fail, run_dir_or_fail
from producer.cli.options import RunDirArg


@app.command("export")
def export_command(
    run_dir: RunDirArg,
    fmt: Annotated[str, typer.Option("--format", "-f", help="seed-text, symbols, openai, sharegpt or parquet.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output file; '-' for stdout (default: "
                                             "RUN_DIR/exports/FORMAT.EXT; parquet: RUN_DIR/exports/RUN.parquet).")] = None,
    roles: Annotated[str | None, typer.Option(help="Speaker to role, e.g. STUDENT=user,TEACHER=assistant "
                                              "(default: the opening speaker is user).")] = None,
    symbols: Annotated[str | None, typer.Option(help="symbols format: prefixes for user, assistant and TERM lines.")] = "=,#,~",
) -> None:
    """Write the accepted conversations of RUN_DIR in a training format."""
    from producer.export import FORMATS, ExportError, ExportOptions, default_name, export_run, parse_roles, parse_symbols

    if fmt not in FORMATS:
        fail(f"--format: unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    source = run_dir_or_fail(run_dir)
    to_stdout = out is not None and str(out) == "-"
    target = None if to_stdout else out or source / "exports" / default_name(source, fmt)
    try:
        options = ExportOptions(roles=parse_roles(roles), symbols=parse_symbols(symbols))
        count = export_run(source, fmt, target, options)
    except ExportError as exc:
        fail(str(exc))
    if target is not None:
        console.print(f"{count} conversation(s) -> {target}", highlight=False)
