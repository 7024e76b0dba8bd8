"""``producer enqueue`` and ``producer run``: start a run on a farm, or a whole farm here."""

from __future__ import annotations

from typing import Annotated

import typer

from convfarm.settings import get_settings
from producer.cli.app import app
from producer.cli.console import connect, console, err, fail, read_config
from producer.cli.options import ConfigArg, ForeverOpt, NglOpt, PerWordOpt
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
) -> None:
    """Validate CONFIG and send one generation task per wanted conversation.

    Re-running it for the same config only sends what is still missing. --out names a folder
    on the collector's host: a relative path is under the collector's CONVFARM_OUT_DIR, an
    absolute one is used as it is (a collector that cannot create it fails the run).
    """
    from producer.enqueue import enqueue as do_enqueue
    from producer.enqueue import plan_fresh

    config = read_config(config_path, per_word=per_word, n_gpu_layers=n_gpu_layers)
    if dry_run:
        plan = plan_fresh(config, queue)
        console.print(f"run [bold]{plan.run}[/]: would send [bold]{len(plan.tasks)}[/] task(s) for "
                      f"{plan.words} word(s) to queue [bold]{plan.queue}[/]")
        first_word = config.words[0]
        console.print(f"prompt for {first_word!r}:\n{config.prompt_for(first_word)}", highlight=False, markup=False)
        return
    from convfarm.broker import celery_client
    from convfarm.runstate import RunStore
    from producer.progress import RunFailed, summary_table, wait_for_run

    client = connect()
    info, plan = do_enqueue(config, client=client, celery=celery_client(),
                            out_dir=out, queue=queue, forever=forever)
    console.print(f"run [bold]{info.run}[/]: sent [bold]{len(plan.tasks)}[/] task(s) for {plan.words} word(s) "
                  f"to queue [bold]{info.queue}[/]", highlight=False)
    if not plan.tasks:
        console.print(f"nothing missing: run is {info.status}")
    if wait:
        store = RunStore(client)
        try:
            wait_for_run(store, info.run, info.total_words, console)
        except RunFailed as exc:
            fail(str(exc), code=1)
        console.print(summary_table(store, info.run))


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
) -> None:
    """Run a whole farm on this machine: Redis, a collector and a generation worker.

    Uses CONVFARM_BROKER_URL / REDIS_URL if set, else Redis on 127.0.0.1:6379 if it answers,
    else starts an embedded redis-server. Exits 0 when every word is accounted for.
    """
    from convfarm.broker import celery_client, redis_client
    from convfarm.messages import queue_for_model
    from convfarm.model_files import ModelNotFound, resolve_model
    from convfarm.runstate import RunStore, run_id_for
    from convfarm.settings import Settings
    from producer.enqueue import enqueue as do_enqueue
    from producer.local import LocalFarmError, local_farm
    from producer.progress import RunFailed, summary_table, wait_for_run

    config = read_config(config_path, per_word=per_word, n_gpu_layers=n_gpu_layers)
    try:
        model_path = resolve_model(config.model)
    except ModelNotFound as exc:
        fail(f"{config_path}: field 'model': {exc}")
    out_root = (out or get_settings().out_dir).resolve()
    queue = queue_for_model(config.model)
    console.print(f"model {config.model} -> {model_path}", highlight=False)
    try:
        with local_farm(queue, out_root, generation_workers=workers, embedded_redis=embedded_redis) as (url, farm):
            settings = Settings(broker_url=url)
            client = redis_client(settings)
            info, plan = do_enqueue(config, client=client, celery=celery_client(settings), out_dir=out_root,
                                    forever=forever)
            console.print(f"redis {url}  run [bold]{info.run}[/]: {len(plan.tasks)} task(s) on {queue}; "
                          f"logs in {farm.log_dir}", highlight=False)

            def check() -> None:
                if dead := farm.dead():
                    raise RunFailed(f"{dead[0]} exited unexpectedly:\n{farm.log_tail(dead[0])}")

            store = RunStore(client)
            wait_for_run(store, info.run, info.total_words, console, check=check)
            console.print(summary_table(store, info.run))
            console.print(f"output: {out_root / run_id_for(config)}", highlight=False)
    except LocalFarmError as exc:
        fail(str(exc), code=1)
    except RunFailed as exc:
        fail(str(exc), code=1)
    except KeyboardInterrupt:
        err.print("interrupted: workers stopped; run again to resume")
        raise typer.Exit(130) from None
