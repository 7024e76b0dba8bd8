"""Progress display and the end-of-run summary (rich)."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from convfarm.depth import depth_and_cost
from convfarm.runstate import RunStore


class RunFailed(RuntimeError):
    pass


def wait_for_run(store: RunStore, run: str, total: int, console: Console, *,
                 check: Callable[[], None] | None = None, poll: float = 0.5) -> None:
    """Show a progress bar until the collector marks the run complete (or cancelled)."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("words  [green]{task.fields[accepted]} accepted[/]  [yellow]{task.fields[rejected]} rejected[/]"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(run, total=total, accepted=0, rejected=0)
        while True:
            counts = store.counts(run)
            done = store.words_done(run)
            meta = store.meta(run, "status", "forever", "round")
            status, forever, round_ = (meta[k] or "" for k in ("status", "forever", "round"))
            # forever mode: the bar shows the current round, which starts over when it is raised
            description = f"{run} round {round_}" if forever == "1" else run
            progress.update(bar, description=description, completed=done, accepted=counts.accepted,
                            rejected=counts.rejected)
            if status in ("complete", "cancelled"):
                progress.update(bar, completed=done)
                if status == "cancelled":
                    console.print(f"run {run} was cancelled (`producer enqueue CONFIG` resumes it)", highlight=False)
                return
            if check is not None:
                check()
            time.sleep(poll)


def summary_table(store: RunStore, run: str) -> Table:
    counts = store.counts(run)
    table = Table(title=f"run {run}", show_header=True)
    table.add_column("outcome")
    table.add_column("conversations", justify="right")
    table.add_row("[green]accepted[/]", str(counts.accepted))
    for reason, value in counts.by_reason.items():
        table.add_row(f"[yellow]rejected: {escape(reason)}[/]", str(value))
    if counts.dropped:
        table.add_row("dropped (cancelled / covered)", str(counts.dropped))
    short = store.short_words(run)
    if short:
        table.add_row("[red]words short of their quota[/]", str(len(short)))
    cost = depth_and_cost(counts)  # issue 12: depth, and what an accepted conversation cost (rejections included)
    if cost["mean_turns"] is not None:
        table.add_row("mean turns per accepted conversation", f"{cost['mean_turns']:.1f}")
        table.add_row("tokens per accepted conversation", f"{cost['tokens_per_accepted']:.0f}")
        table.add_row("generation seconds per accepted conversation", f"{cost['generation_seconds_per_accepted']:.2f}")
    return table
