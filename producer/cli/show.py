"""``producer show``: read a run's conversations as a user judges them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from producer.cli.app import app
from producer.cli.console import console, fail, run_dir_or_fail


@app.command("show")
def show_command(
    run: Annotated[str, typer.Argument(metavar="RUN", show_default=False,
                                       help="A run directory, or a run id / unique prefix / config file whose "
                                            "directory is on this machine.")],
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="Conversations to show.")] = 5,
    rejected: Annotated[bool, typer.Option("--rejected", help="Show rejected conversations, with the rule "
                                                              "that dropped each.")] = False,
    word: Annotated[str | None, typer.Option("--word", "-w", help="Only this word's conversations.")] = None,
) -> None:
    """Print sample conversations of a run, wrapped, with their verdicts (accepted, or the reason)."""
    from producer.show import render, sample

    run_dir = run_dir_or_fail(_run_dir(run))
    records = sample(run_dir, count=count, rejected=rejected, word=word)
    if not records:
        kind = "rejected" if rejected else "accepted"
        console.print(f"{run_dir}: no {kind} conversations" + (f" for {word!r}" if word else ""), highlight=False,
                      markup=False)
        return
    render(records, console)


def _run_dir(ref: str) -> Path:
    """A directory as given, else the output directory of the run ``ref`` names (Redis knows where)."""
    if Path(ref).is_dir():
        return Path(ref)
    from convfarm.runstate import RunStore
    from convfarm.settings import get_settings
    from producer.cli.console import connect
    from producer.cli.runs import resolve_ref

    store = RunStore(connect())
    run_id = resolve_ref(store, ref)
    info = store.get(run_id)
    root = Path(info.out_dir) if info and info.out_dir else get_settings().out_dir
    run_dir = root / run_id
    if not run_dir.is_dir():
        fail(f"run {run_id}: its directory {run_dir} is not on this machine (the collector writes on its host); "
             "give the run directory's path")
    return run_dir
