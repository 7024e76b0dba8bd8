"""Run lifecycle commands: ``status``, ``runs``, ``cancel``, ``dlq``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.markup import escape

from convfarm.runstate import RunStore
from producer.cli.app import app
from producer.cli.console import connect, console, fail, print_whole
from producer.cli.options import JsonOpt, RunArg, YesOpt


def _store_and_run(ref: str | None, *, confirm: str | None = None, yes: bool = False) -> tuple[RunStore, str]:
    """The run ``ref`` names: a whole id, a unique prefix, a config file, or (None) the newest run.

    ``confirm`` (a destructive command's verb): unless ``ref`` is the whole id or ``--yes`` was
    given, say which run that is and ask; with no terminal to ask, refuse (exit 2)."""
    store = RunStore(connect())
    run_id = resolve_ref(store, ref)
    if confirm is not None and not yes and ref != run_id:
        info = store.get(run_id)
        what = (f"run {run_id} ({info.status}, {store.words_done(run_id)}/{info.total_words} words, created "
                f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(info.created_at))})") if info else f"run {run_id}"
        named = "the newest run" if ref is None else f"{ref!r}"
        if not sys.stdin.isatty():
            fail(f"{confirm}: {named} means {what}; give its whole id or add --yes")
        if not typer.confirm(f"{confirm} {what}?", default=False, err=True):
            fail(f"{confirm}: not confirmed; nothing changed", code=1)
    return store, run_id


def _reserved(count: int) -> str:
    return f"{count} reserved by workers remain: they drop them when they run them; " if count else ""


def resolve_ref(store: RunStore, ref: str | None) -> str:
    """A run id from a whole id, a unique prefix, a config file or (None) the newest run; else exit 2."""
    from producer.status import UnknownRun, resolve_run

    try:
        return resolve_run(store, _run_of_config(ref) if ref is not None and _is_config_file(ref) else ref)
    except UnknownRun as exc:
        fail(str(exc))


def _is_config_file(ref: str) -> bool:
    return ref.endswith(".json") or Path(ref).is_file()


def _run_of_config(ref: str) -> str:
    """``producer cancel physics.json``: the run that config makes (its id is the config's hash)."""
    from convfarm.runstate import run_id_for
    from producer.cli.console import read_config

    return run_id_for(read_config(Path(ref)))


@app.command()
def status(
    run: RunArg = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until the run ends (Ctrl-C to leave).")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes with --watch.")] = 2.0,
    as_json: JsonOpt = False,
) -> None:
    """Show a run: words, outcomes by reason, tokens/s, conversations/s, ETA, workers.

    Words are complete / in progress / pending / short / dead-lettered; rates are over the
    last minute; the worker figures are per worker process (model, tasks, tok/s).
    """
    from producer.status import render, run_status, to_json

    store, run_id = _store_and_run(run)
    if as_json:
        console.print(to_json(run_status(store, run_id)), markup=False, highlight=False, soft_wrap=True)
        return
    if not watch:
        console.print(render(run_status(store, run_id)))
        return
    try:
        with Live(render(run_status(store, run_id)), console=console, auto_refresh=False) as live:
            while True:
                current = run_status(store, run_id)
                live.update(render(current), refresh=True)
                if current["status"] != "active":
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        pass


@app.command()
def runs(as_json: JsonOpt = False) -> None:
    """List runs, newest first."""
    from producer.status import render_runs, runs_overview, to_json

    rows = runs_overview(RunStore(connect()))
    if as_json:
        console.print(to_json(rows), markup=False, highlight=False, soft_wrap=True)
    elif not rows:
        console.print("no runs yet (start one with `producer enqueue CONFIG`)")
    else:
        print_whole(render_runs(rows))  # run ids whole: they are what status, cancel and purge take


@app.command()
def cancel(run: RunArg = None, yes: YesOpt = False) -> None:
    """Stop a run (default: the newest); its state stays readable, `producer enqueue CONFIG` resumes it.

    Queued tasks are dropped when a worker takes them; running ones finish and are written.
    """
    store, run_id = _store_and_run(run, confirm="cancel", yes=yes)
    current = store.status(run_id)
    if current == "cancelled":
        console.print(f"run {run_id} is already cancelled", highlight=False, markup=False)
        return
    if current == "complete" and not store.get(run_id).forever:
        console.print(f"run {run_id} is already complete; nothing to stop", highlight=False, markup=False)
        return
    store.set_status(run_id, "cancelled")
    from producer.queued import remove_queued

    info = store.get(run_id)
    removed = remove_queued(store.redis, info.queue, run_id)
    # taken out of the queue, they never reach a worker: counted as dropped here (as a worker
    # counts a cancelled run's task), so a resume issues them again at once
    for word, attempt in removed.attempts:
        store.record_outcome(info, word, attempt, "dropped", None)
    console.print(f"run [bold]{escape(run_id)}[/] cancelled: {len(removed.attempts)} queued task(s) removed from "
                  f"{escape(info.queue)}; {_reserved(removed.reserved)}running ones finish; "
                  "`producer enqueue CONFIG` resumes it", highlight=False)


@app.command()
def dlq(
    run: RunArg = None,
    retry: Annotated[bool, typer.Option("--retry", help="Re-enqueue the dead-lettered words (a new attempt each).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the attempts workers gave up on, or retry them (--retry).

    An attempt is given up when it kept raising, hit its time limit or killed its worker.
    """
    from rich.table import Table
    from rich.text import Text

    from producer import deadletters
    from producer.status import to_json

    store, run_id = _store_and_run(run)
    if not retry:
        found = deadletters.letters(store, run_id)
        if as_json:
            console.print(to_json(found), markup=False, highlight=False, soft_wrap=True)
            return
        if not found:
            console.print(f"run {run_id}: no dead letters", highlight=False, markup=False)
            return
        table = Table(title=f"dead letters of {escape(run_id)}", title_justify="left")
        for column in ("word", "attempt", "error", "worker", "when"):
            table.add_column(column)
        for letter in found:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(letter.get("at", 0)))
            # words, errors and worker names are data, never markup ("[/b]" crashed rich)
            table.add_row(Text(str(letter["word"])), str(letter["attempt"]), Text(str(letter.get("error", ""))),
                          Text(str(letter.get("worker", ""))), when)
        console.print(table)
        console.print("retry them with `producer dlq RUN --retry`")
        return
    from convfarm.broker import celery_client

    if store.status(run_id) == "cancelled":
        fail(f"run {run_id} is cancelled; resume it with `producer enqueue CONFIG` first")
    info = store.get(run_id)
    result = deadletters.retry(store, celery_client(), info)
    if as_json:
        console.print(to_json({"sent": [{"word": w, "attempt": a} for w, a in result.sent],
                                   "already_met": result.already_met}), markup=False, highlight=False, soft_wrap=True)
        return
    console.print(f"run {run_id}: re-enqueued {len(result.sent)} attempt(s) for "
                      f"{len({w for w, _ in result.sent})} word(s)", highlight=False, markup=False)
    if result.already_met:
        console.print(f"{len(result.already_met)} dead-lettered word(s) have their quota by now: not retried")


@app.command()
def purge(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run id, a unique prefix of one or the config file.",
                                       show_default=False)],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the keys that would be deleted; delete nothing.")] = False,
    yes: YesOpt = False,
) -> None:
    """Delete a finished or cancelled run's state from Redis (progress, outcomes, dedup state).

    Its output directory is not touched. Enqueueing the same config afterwards starts the run
    afresh. Finished runs' state also expires by itself after CONVFARM_RUN_RETENTION_DAYS.
    """
    store, run_id = _store_and_run(run, confirm=None if dry_run else "purge", yes=yes)
    if store.status(run_id) == "active":
        fail(f"run {run_id} is active; stop it first with `producer cancel {run_id}`")
    from producer.enqueue import output_place
    from producer.queued import remove_queued

    place = output_place(store, run_id)
    info = store.get(run_id)
    removed = remove_queued(store.redis, info.queue, run_id, dry_run=dry_run) if info else None
    keys = store.purge(run_id, dry_run=dry_run)
    if dry_run:
        for key in keys:
            console.print(key, markup=False, highlight=False)
        console.print(f"run {run_id}: would delete {len(keys)} key(s)" + (
            f" and remove {len(removed.attempts)} queued task(s)" if removed else ""), markup=False, highlight=False)
    else:
        console.print(f"run {run_id}: deleted {len(keys)} key(s); enqueueing its config starts it afresh",
                      markup=False, highlight=False)
        if removed is not None:
            console.print(f"removed {len(removed.attempts)} queued task(s) from {info.queue}; "
                          f"{_reserved(removed.reserved)}".rstrip("; "), markup=False, highlight=False)
        if place is not None:
            # a fresh incarnation never appends to this one's directory: the collector would fail the run
            console.print(f"its output stays in {place.path} on {place.host}: move it away (or export it) before "
                          "enqueueing the config again", markup=False, highlight=False)
