"""``producer enqueue`` and ``producer run``: start a run on a farm, or a whole farm here."""

from __future__ import annotations

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
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and show the plan; touch nothing.")] = False,
    forever: ForeverOpt = False,
    fresh: FreshOpt = False,
) -> None:
    """Validate CONFIG and send one generation task per wanted conversation.

    Re-running it for the same config only sends what is still missing. --out names a folder
    on the collector's host: a relative path is under the collector's CONVFARM_OUT_DIR, an
    absolute one is used as it is (a collector that cannot create it fails the run).
    """
    from convfarm.messages import queue_problem
    from producer.enqueue import enqueue as do_enqueue
    from producer.enqueue import plan_fresh

    if queue is not None and (problem := queue_problem(queue)):  # before anything is read or sent
        fail(f"--queue {queue!r}: {problem}")
    config = read_config(config_path, per_word=per_word, n_gpu_layers=n_gpu_layers)
    if dry_run:
        plan = plan_fresh(config, queue)
        console.print(f"run [bold]{escape(plan.run)}[/]: would send [bold]{len(plan.tasks)}[/] task(s) for "
                      f"{plan.words} word(s) to queue [bold]{escape(plan.queue)}[/]")
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
        warn_missing_output(info, out.resolve() if out else get_settings().out_dir.resolve())
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
    workers: Annotated[int, typer.Option(min=1, help="Generation worker processes to start.")] = 1,
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
            warn_missing_output(info, out_root)
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
    run_dir = (Path(info.out_dir) if info.out_dir else out_root) / run
    if run_dir.is_dir() and any(run_dir.iterdir()):
        fail(f"--fresh: {run_dir} still holds the run's output; move it away first (a fresh run numbers its shards from 0)")
    store.purge(run)
    err.print(f"run {run}: state forgotten; starting afresh", markup=False, highlight=False)


def warn_missing_output(info: RunInfo, out_root: Path) -> None:
    """The resume trap (a complete run whose output was deleted sends nothing): say so and how to start afresh."""
    from producer.enqueue import missing_output

    if (missing := missing_output(info, out_root)) is not None:
        err.print(f"[yellow]warning:[/] run {escape(info.run)} is complete, so nothing was sent, but its output "
                  f"directory {escape(str(missing))} does not exist here. To generate it again, add --fresh "
                  f"(or run `producer purge {escape(info.run)}` first).", highlight=False)
