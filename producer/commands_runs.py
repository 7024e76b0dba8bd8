"""Run lifecycle commands: ``status``, ``runs``, ``cancel``, ``dlq``, and ``--forever``.

:func:`register` adds them to the ``producer`` app (producer/cli.py) and gives its
``enqueue`` and ``run`` commands the ``--forever`` option. The option is added here, by
extending those commands' signatures, so that the commands in cli.py stay as they are:
``producer.enqueue.enqueue`` reads the flag from a context variable.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, get_type_hints

import redis
import typer
from rich.console import Console
from rich.live import Live

from producer.enqueue import FOREVER
from producer.runstate import RunStore

RunArg = Annotated[str, typer.Argument(help="Run id (or a unique prefix of one, e.g. the config name); see `producer runs`.",
                                       show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ForeverOpt = Annotated[bool, typer.Option("--forever", help="Keep topping up: when every word has its quota, raise it by "
                                          "per_word and go on, until `producer cancel RUN`.")]


class _Cli:
    """Output and errors the way producer/cli.py does them (one red line, exit 2 bad input / 1 environment)."""

    console = Console()
    err = Console(stderr=True)

    def fail(self, message: str, code: int = 2) -> NoReturn:
        self.err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(code)

    def connect(self) -> redis.Redis:
        from producer.broker import redis_client
        from producer.settings import get_settings

        client = redis_client()
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            self.fail(f"cannot reach Redis at {get_settings().redis_url} ({exc}); set CONVFARM_BROKER_URL", code=1)
        return client


_cli_instance = _Cli()


def _cli() -> _Cli:
    return _cli_instance


def _store_and_run(ref: str | None) -> tuple[RunStore, str]:
    from producer.status import UnknownRun, resolve_run

    cli = _cli()
    store = RunStore(cli.connect())
    try:
        return store, resolve_run(store, ref)
    except UnknownRun as exc:
        cli.fail(str(exc))


def status(
    run: Annotated[str | None, typer.Argument(help="Run id or prefix (default: the newest run).", show_default=False)] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until the run ends (Ctrl-C to leave).")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes with --watch.")] = 2.0,
    as_json: JsonOpt = False,
) -> None:
    """Show a run: words, outcomes by reason, tokens/s, conversations/s, ETA, workers.

    Words are complete / in progress / pending / short / dead-lettered; rates are over the
    last minute; the worker figures are per worker process (model, tasks, tok/s).
    """
    from producer.status import render, run_status, to_json

    cli = _cli()
    store, run_id = _store_and_run(run)
    if as_json:
        cli.console.print(to_json(run_status(store, run_id)), markup=False, highlight=False, soft_wrap=True)
        return
    if not watch:
        cli.console.print(render(run_status(store, run_id)))
        return
    try:
        with Live(render(run_status(store, run_id)), console=cli.console, auto_refresh=False) as live:
            while True:
                current = run_status(store, run_id)
                live.update(render(current), refresh=True)
                if current["status"] != "active":
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        pass


def runs(as_json: JsonOpt = False) -> None:
    """List runs, newest first."""
    from producer.status import render_runs, runs_overview, to_json

    cli = _cli()
    rows = runs_overview(RunStore(cli.connect()))
    if as_json:
        cli.console.print(to_json(rows), markup=False, highlight=False, soft_wrap=True)
    elif not rows:
        cli.console.print("no runs yet (start one with `producer enqueue CONFIG`)")
    else:
        cli.console.print(render_runs(rows))


def cancel(run: RunArg) -> None:
    """Stop a run; its state stays readable, `producer enqueue CONFIG` resumes it.

    Queued tasks are dropped when a worker takes them; running ones finish and are written.
    """
    cli = _cli()
    store, run_id = _store_and_run(run)
    current = store.status(run_id)
    if current == "cancelled":
        cli.console.print(f"run {run_id} is already cancelled", highlight=False)
        return
    if current == "complete" and not store.get(run_id).forever:
        cli.console.print(f"run {run_id} is already complete; nothing to stop", highlight=False)
        return
    store.set_status(run_id, "cancelled")
    cli.console.print(f"run [bold]{run_id}[/] cancelled: queued tasks will be dropped, running ones finish; "
                      "`producer enqueue CONFIG` resumes it", highlight=False)


def dlq(
    run: RunArg,
    retry: Annotated[bool, typer.Option("--retry", help="Re-enqueue the dead-lettered words (a new attempt each).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the attempts workers gave up on, or retry them (--retry).

    An attempt is given up when it kept raising, hit its time limit or killed its worker.
    """
    from rich.table import Table

    from producer import deadletters
    from producer.status import to_json

    cli = _cli()
    store, run_id = _store_and_run(run)
    if not retry:
        found = deadletters.letters(store, run_id)
        if as_json:
            cli.console.print(to_json(found), markup=False, highlight=False, soft_wrap=True)
            return
        if not found:
            cli.console.print(f"run {run_id}: no dead letters", highlight=False)
            return
        table = Table(title=f"dead letters of {run_id}", title_justify="left")
        for column in ("word", "attempt", "error", "worker", "when"):
            table.add_column(column)
        for letter in found:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(letter.get("at", 0)))
            table.add_row(letter["word"], str(letter["attempt"]), letter.get("error", ""), letter.get("worker", ""), when)
        cli.console.print(table)
        cli.console.print("retry them with `producer dlq RUN --retry`")
        return
    from producer.broker import celery_client

    if store.status(run_id) == "cancelled":
        cli.fail(f"run {run_id} is cancelled; resume it with `producer enqueue CONFIG` first")
    info = store.get(run_id)
    result = deadletters.retry(store, celery_client(), info)
    if as_json:
        cli.console.print(to_json({"sent": [{"word": w, "attempt": a} for w, a in result.sent],
                                   "already_met": result.already_met}), markup=False, highlight=False, soft_wrap=True)
        return
    cli.console.print(f"run {run_id}: re-enqueued {len(result.sent)} attempt(s) for "
                      f"{len({w for w, _ in result.sent})} word(s)", highlight=False)
    if result.already_met:
        cli.console.print(f"{len(result.already_met)} dead-lettered word(s) have their quota by now: not retried")


def with_forever(callback: Callable[..., Any]) -> Callable[..., Any]:
    """``callback`` with a ``--forever`` option that sets :data:`producer.enqueue.FOREVER` while it runs."""
    hints = get_type_hints(callback, include_extras=True)
    signature = inspect.signature(callback, eval_str=True)
    if "forever" in signature.parameters:
        return callback  # the command has the option already

    @functools.wraps(callback)
    def command(*args: Any, forever: bool = False, **kwargs: Any) -> Any:
        token = FOREVER.set(forever)
        try:
            return callback(*args, **kwargs)
        finally:
            FOREVER.reset(token)

    param = inspect.Parameter("forever", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=ForeverOpt)
    command.__signature__ = signature.replace(parameters=[*signature.parameters.values(), param])  # type: ignore[attr-defined]
    command.__annotations__ = {**hints, "forever": ForeverOpt}
    del command.__wrapped__  # typer must read our signature, not the wrapped one's
    return command


def register(app: typer.Typer) -> None:
    for info in app.registered_commands:
        name = info.name or (info.callback.__name__ if info.callback else "")
        if name in ("enqueue", "run") and info.callback is not None:
            info.callback = with_forever(info.callback)
    app.command()(status)
    app.command()(runs)
    app.command()(cancel)
    app.command()(dlq)
