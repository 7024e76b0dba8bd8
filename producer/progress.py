"""Progress display and the end-of-run summary (rich)."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from convfarm.depth import depth_and_cost
from convfarm.judge.distribution import describe_scores, run_scores
from convfarm.runstate import RunStore
from producer.status import farm_problems

PROBLEM_GRACE = 10.0  # seconds: a farm started with the wait (producer run) is not reported missing at once


class RunFailed(RuntimeError):
    pass


def check_progress(store: RunStore, run: str, started: float, stall_seconds: float) -> None:
    """Raise :class:`RunFailed` when the run can no longer progress: a collector marked it
    failed, or no collector has turned its loop for ``stall_seconds`` (none runs, or all died)."""
    meta = store.meta(run, "status", "error")
    if meta["status"] == "failed":
        raise RunFailed(f"run {run} failed: {meta['error'] or 'no reason recorded'}")
    seen = store.collectors.last_seen()
    now = time.time()
    if now - max(seen or 0.0, started) > stall_seconds:
        when = f"for {now - seen:.0f} s" if seen else "since the wait began"
        raise RunFailed(f"run {run} cannot progress: no collector has been alive {when} "
                        f"(start one: celery -A workers worker --collector ...)")


def wait_for_run(store: RunStore, run: str, total: int, console: Console, *,
                 check: Callable[[], None] | None = None, poll: float = 0.5) -> None:
    """Show a progress bar until the collector marks the run complete (or cancelled); raise
    :class:`RunFailed` when it can no longer progress."""
    from convfarm.settings import get_settings

    started, stall_seconds = time.time(), get_settings().stall_seconds
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("words  [green]{task.fields[accepted]} accepted[/]  [yellow]{task.fields[rejected]} rejected[/]"),
               TimeElapsedColumn(), TimeRemainingColumn())
    queue = store.meta(run, "queue")["queue"] or ""
    last_look = 0.0
    problem = ""
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(run, total=total, accepted=0, rejected=0)
        while True:
            counts = store.counts(run)
            done = store.words_done(run)
            meta = store.meta(run, "status", "forever", "round")
            status, forever, round_ = (meta[k] or "" for k in ("status", "forever", "round"))
            # forever mode: the bar shows the current round, which starts over when it is raised
            description = f"{run} round {round_}" if forever == "1" else run
            # who serves the run: a few reads every 2 s, after a grace for processes just started
            if time.time() - started > PROBLEM_GRACE and time.monotonic() - last_look > 2.0:
                last_look = time.monotonic()
                now_problem = "; ".join(farm_problems(store, queue)) if queue else ""
                if now_problem != problem:  # a line above the bar each time it changes, whole
                    problem = now_problem
                    progress.console.print(f"[bold red]waiting:[/] {escape(problem)}" if problem
                                           else "[green]farm ok:[/] a worker and a collector serve the run",
                                           highlight=False, soft_wrap=True)
            progress.update(bar, description=description, completed=done, accepted=counts.accepted,
                            rejected=counts.rejected)
            if status in ("complete", "cancelled"):
                progress.update(bar, completed=done)
                if status == "cancelled":
                    console.print(f"run {run} was cancelled (`producer enqueue CONFIG` resumes it)", highlight=False)
                return
            check_progress(store, run, started, stall_seconds)
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
    cost = depth_and_cost(counts)  # depth, and what an accepted conversation cost (rejections included)
    if cost["mean_turns"] is not None:
        table.add_row("mean turns per accepted conversation", f"{cost['mean_turns']:.1f}")
        table.add_row("tokens per accepted conversation", f"{cost['tokens_per_accepted']:.0f}")
        # machine time: each record's share of its worker's busy time, so it adds up under batching
        table.add_row("machine seconds per accepted conversation", f"{cost['machine_seconds_per_accepted']:.2f}")
    info = store.get(run)
    scores = run_scores(counts, info.config) if info else None
    if scores and scores["scored"]:  # the relevance judge's distribution and the on-topic yield
        table.add_row("relevance", describe_scores(scores))
    return table
