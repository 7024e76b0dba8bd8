"""``producer enqueue`` and ``producer run``: start a run on a farm, or a whole farm here."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import redis
import typer
from rich.markup import escape

from convfarm.config import RunConfig
from convfarm.judge.scoring import judged_by_generator
from convfarm.runstate import RunInfo
from convfarm.settings import get_settings
from producer.cli.app import app
from producer.cli.console import connect, console, err, fail, read_config
from producer.cli.dataset import card_hint
from producer.cli.options import ConfigArg, ForeverOpt, FreshOpt, NglOpt, PerWordOpt
from producer.cli.options import OutRootOpt as OutOpt


@app.command()
def enqueue(
    config_path: ConfigArg,
    out: OutOpt = None,
    per_word: PerWordOpt = None,
    n_gpu_layers: NglOpt = None,
    queue: Annotated[str | None, typer.Option(help="Queue to send to (default: the model's queue).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until the run is complete.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and say what a real enqueue would send now "
                                          "(read from Redis when it answers), with an estimate; touch nothing.")] = False,
    forever: ForeverOpt = False,
    fresh: FreshOpt = False,
    no_workers_ok: Annotated[bool, typer.Option("--no-workers-ok", help="Do not warn when no live worker serves the "
                                                "queue (workers that start later, e.g. autoscaled from the queue "
                                                "length, take the tasks then).")] = False,
) -> None:
    """Validate CONFIG and send one generation task per wanted conversation.

    Re-running it for the same config only sends what is still missing. --out names a folder
    on the collector's host: a relative path is under the collector's CONVFARM_OUT_DIR, an
    absolute one is used as it is (a collector that cannot create it fails the run).
    """
    from convfarm.messages import queue_problem
    from producer.enqueue import enqueue as do_enqueue

    if queue is not None and (problem := queue_problem(queue)):  # before anything is read or sent
        fail(f"--queue {queue!r}: {problem}")
    config = read_config(config_path, per_word=per_word, n_gpu_layers=n_gpu_layers)
    if dry_run:
        show_dry_run(config, queue)
        first_word = config.words[0]
        console.print(f"prompt for {first_word!r}:\n{config.prompt_for(first_word)}", highlight=False, markup=False)
        return
    from convfarm.broker import celery_client
    from convfarm.runstate import RunStore
    from producer.progress import RunFailed, summary_table, wait_for_run

    client = connect()
    if fresh:
        start_afresh(client, config, out.resolve() if out else get_settings().out_dir.resolve())
    info, plan = do_enqueue(config, client=client, celery=celery_client(),
                            out_dir=out, queue=queue, forever=forever)
    console.print(f"run [bold]{escape(info.run)}[/]: sent [bold]{len(plan.tasks)}[/] task(s) for {plan.words} word(s) "
                  f"to queue [bold]{escape(info.queue)}[/]", highlight=False)
    if not plan.tasks:
        console.print(f"nothing missing: run is {info.status}")
        warn_missing_output(client, info)
    elif not no_workers_ok:
        warn_unserved(client, info.queue, len(plan.tasks))
    if wait:
        store = RunStore(client)
        try:
            wait_for_run(store, info.run, info.total_words, console)
        except RunFailed as exc:
            fail(str(exc), code=1)
        console.print(summary_table(store, info.run))
        console.print(card_hint(info.run, info.out_dir), highlight=False, markup=False)


@app.command()
def run(
    config_path: ConfigArg,
    out: OutOpt = None,
    per_word: PerWordOpt = None,
    n_gpu_layers: NglOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="Generation worker processes to start; on a CPU each gets "
                                         "its share of the cores (CONVFARM_N_THREADS).")] = 1,
    embedded_redis: Annotated[bool, typer.Option("--embedded-redis",
                                                 help="Always start a private redis-server (AOF under OUT/.convfarm).")] = False,
    forever: ForeverOpt = False,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help="Conversations each worker decodes together (its CONVFARM_BATCH_SIZE; "
                                    "default: the environment's, else 8).")] = None,
    fresh: FreshOpt = False,
) -> None:
    """Run a whole farm on this machine: Redis, a collector and a generation worker.

    Uses CONVFARM_BROKER_URL / REDIS_URL if set, else Redis on 127.0.0.1:6379 if it answers,
    else starts an embedded redis-server with a password (--embedded-redis: always). The first
    line names the Redis used. Exits 0 when every word is accounted for.
    """
    from convfarm.broker import celery_client, redis_client
    from convfarm.messages import judge_queue_for_model, queue_for_model
    from convfarm.model_files import ModelNotFound, resolve_model
    from convfarm.runstate import RunStore, run_id_for
    from convfarm.settings import Settings
    from producer.enqueue import enqueue as do_enqueue
    from producer.local import LocalFarmError, local_farm
    from producer.progress import RunFailed, summary_table, wait_for_run

    config = read_config(config_path, per_word=per_word, n_gpu_layers=n_gpu_layers)
    # another judge model: one judge worker beside the generation workers (docs/design.md "Relevance judge")
    judge_model = None if judged_by_generator(config) else config.judge.model  # type: ignore[union-attr]
    try:
        model_path = resolve_model(config.model)
        if judge_model is not None:
            console.print(f"judge model {judge_model} -> {resolve_model(judge_model)}", highlight=False)
    except ModelNotFound as exc:
        fail(f"{config_path}: field '{'model' if judge_model is None else 'model or judge.model'}': {exc}")
    out_root = (out or get_settings().out_dir).resolve()
    queue = queue_for_model(config.model)
    def announce(redis_line: str) -> None:  # the first line: which Redis this farm uses (masked), then the model
        console.print(redis_line, highlight=False, markup=False)
        console.print(f"model {config.model} -> {model_path}", highlight=False, markup=False)

    try:
        with local_farm(queue, out_root, generation_workers=workers, embedded_redis=embedded_redis,
                        batch_size=batch_size, announce=announce,
                        judge_queue=judge_queue_for_model(judge_model) if judge_model else None) as (url, farm):
            settings = Settings(broker_url=url)
            client = redis_client(settings)
            if fresh:
                start_afresh(client, config, out_root)
            info, plan = do_enqueue(config, client=client, celery=celery_client(settings), out_dir=out_root,
                                    forever=forever)
            warn_missing_output(client, info)
            console.print(f"run [bold]{escape(info.run)}[/]: {len(plan.tasks)} task(s) on {escape(queue)}; "
                          f"logs in {escape(str(farm.log_dir))}", highlight=False)

            def check() -> None:
                if dead := farm.dead():
                    raise RunFailed(f"{dead[0]} exited unexpectedly:\n{farm.log_tail(dead[0])}")

            store = RunStore(client)
            wait_for_run(store, info.run, info.total_words, console, check=check)
            console.print(summary_table(store, info.run))
            console.print(f"output: {out_root / run_id_for(config)}", highlight=False)
            console.print(card_hint(info.run, out_root), highlight=False, markup=False)
    except LocalFarmError as exc:
        fail(str(exc), code=1)
    except RunFailed as exc:
        fail(str(exc), code=1)
    except KeyboardInterrupt:
        err.print("interrupted: workers stopped; run again to resume")
        raise typer.Exit(130) from None


def show_dry_run(config: RunConfig, queue: str | None) -> None:
    """``enqueue --dry-run``: what a real enqueue would send now, and an estimate of its cost."""
    from convfarm.broker import redis_client
    from producer.enqueue import dry_run

    client = redis_client()
    try:
        client.ping()
    except (redis.RedisError, OSError):
        client = None
    plan = dry_run(config, client, queue)
    where = f"to queue [bold]{escape(plan.queue)}[/]"
    if plan.state == "new":
        head = f"run [bold]{escape(plan.run)}[/] (new): a real enqueue would send [bold]{plan.tasks}[/] task(s) " \
               f"for {plan.words} word(s) {where}"
    elif plan.state == "unknown":
        head = f"run [bold]{escape(plan.run)}[/]: Redis does not answer, so as for a new run: a real enqueue would " \
               f"send [bold]{plan.tasks}[/] task(s) for {plan.words} word(s) {where}"
    else:
        head = f"run [bold]{escape(plan.run)}[/] ({escape(plan.state)}, {plan.words_done}/{plan.total_words} words " \
               f"done): a real enqueue would send [bold]{plan.tasks}[/] task(s) for {plan.words} word(s) {where}"
        if plan.tasks == 0:
            head += " — nothing is missing" + ("; --fresh starts it again" if plan.state == "complete" else "")
    console.print(head, highlight=False)
    if plan.tasks:
        if plan.tokens_per_task is not None:
            tokens = plan.tasks * plan.tokens_per_task
            line = (f"estimate: ~{tokens:,.0f} tokens ({plan.tokens_per_task:.0f} per attempt, measured over "
                    f"{plan.measured_tasks} earlier task(s) of {config.model})")
            if plan.tokens_per_second:
                line += (f", ~{_duration(tokens / plan.tokens_per_second)} of worker time at "
                         f"{plan.tokens_per_second:.1f} tok/s per worker (divide by the workers serving it)")
        else:
            line = (f"estimate: at most {plan.tasks * config.max_tokens:,} tokens (max_tokens {config.max_tokens} per "
                    f"attempt); no measured rate for {config.model} yet, so no time estimate")
        console.print(line, highlight=False, markup=False)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def start_afresh(client: redis.Redis, config: RunConfig, out_root: Path) -> None:
    """``--fresh``: forget a finished or cancelled run's Redis state so that it runs again."""
    from convfarm.runstate import RunStore, run_id_for

    store = RunStore(client)
    run = run_id_for(config)
    info = store.get(run)
    if info is None:
        return  # nothing to forget: it starts afresh anyway
    if info.status == "active":
        fail(f"--fresh: run {run} is active; stop it first with `producer cancel {run}`")
    from producer.enqueue import output_place

    place = output_place(store, run)  # where its collector wrote: the run's state knows, not this disk
    run_dir = place.path if place is not None else (Path(info.out_dir) if info.out_dir else out_root) / run
    if (place is None or place.visible) and run_dir.is_dir() and any(run_dir.iterdir()):
        fail(f"--fresh: {run_dir} still holds the run's output; move it away first (a fresh run numbers its shards from 0)")
    if place is not None and not place.visible:
        err.print(f"run {run}: its output {run_dir} is on {place.host}, not visible here: if it is still there, "
                  "the collector refuses to append to it and the run fails with that reason", markup=False,
                  highlight=False)
    store.purge(run)
    err.print(f"run {run}: state forgotten; starting afresh", markup=False, highlight=False)


def warn_unserved(client: redis.Redis, queue: str, tasks: int) -> None:
    """Tasks sent to a queue no live worker consumes wait for ever (a mistyped model names a queue
    nobody serves): say so, with the queues workers do serve."""
    import difflib

    from convfarm.runstate.presence import Presence

    presence = Presence(client)
    if presence.serving(queue):
        return
    last = presence.last_served(queue)
    known = sorted(presence.known_queues() - {queue})
    why = (f"its last worker was seen {time.time() - last:.0f} s ago" if last is not None
           else "no worker has served it recently")
    line = f"[yellow]warning:[/] no live worker serves queue {escape(queue)} ({why}): the {tasks} task(s) wait until one starts"
    if close := difflib.get_close_matches(queue, known, n=1):
        line += f"; did you mean {escape(close[0])} (check the config's model)?"
    elif known:
        line += f"; workers serve: {escape(', '.join(known))}"
    err.print(line + f" — e.g. celery -A workers worker -Q {escape(queue)}", highlight=False)


def warn_missing_output(client: redis.Redis, info: RunInfo) -> None:
    """The resume trap (a complete run whose output was deleted sends nothing): say so and how to
    start afresh — asking the run's state where its collector wrote, never this machine's disk."""
    from convfarm.runstate import RunStore
    from producer.enqueue import missing_output, output_place

    store = RunStore(client)
    if (missing := missing_output(store, info)) is not None:
        err.print(f"[yellow]warning:[/] run {escape(info.run)} is complete, so nothing was sent, but its output "
                  f"directory {escape(str(missing.path))} (written by the collector on {escape(missing.host)}) is gone. "
                  f"To generate it again, add --fresh.", highlight=False)
    elif info.status == "complete" and (place := output_place(store, info.run)) is not None and not place.visible:
        console.print(f"its output is on the collector's host {escape(place.host)}: {escape(str(place.path))}",
                      highlight=False)
