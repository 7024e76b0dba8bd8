"""``producer``: the user's side of convfarm.

Exit status: 0 success, 1 a failure of the environment (Redis unreachable, a worker
died), 2 bad input (config, arguments) — with one line naming the problem and nothing
enqueued.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from producer.commands_rules import register as register_rule_commands
from producer.commands_runs import register as register_run_commands
from producer.commands_words import config_app, words_app
from producer.console import connect, console, err, fail, read_config
from producer.settings import get_settings

app = typer.Typer(
    name="producer",
    help="Generate conversation training data with a farm of llama.cpp workers.\n\n"
    "Quick start on one machine:  producer run examples/example.json",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
ConfigArg = Annotated[Path, typer.Argument(help="The run config (JSON), see README 'Config reference'.",
                                           show_default=False)]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output root; the run writes to OUT/<run>/.")]
PerWordOpt = Annotated[int | None, typer.Option("--per-word", min=1, help="Accepted conversations wanted per word.")]
ForeverOpt = Annotated[bool, typer.Option("--forever", help="Keep topping up: when every word has its quota, raise it by "
                                          "per_word and go on, until `producer cancel RUN` (the seed's run.sh).")]
NglOpt = Annotated[int | None, typer.Option("--n-gpu-layers", "-ngl", min=-1,
                                            help="Layers to offload to the GPU (-1 = all), like llama.cpp's -ngl.")]


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

    Re-running it for the same config only sends what is still missing.
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
    from producer.broker import celery_client
    from producer.progress import summary_table, wait_for_run
    from producer.runstate import RunStore

    client = connect()
    info, plan = do_enqueue(config, client=client, celery=celery_client(),
                            out_dir=out.resolve() if out else None, queue=queue, forever=forever)
    console.print(f"run [bold]{info.run}[/]: sent [bold]{len(plan.tasks)}[/] task(s) for {plan.words} word(s) "
                  f"to queue [bold]{info.queue}[/]", highlight=False)
    if not plan.tasks:
        console.print(f"nothing missing: run is {info.status}")
    if wait:
        store = RunStore(client)
        wait_for_run(store, info.run, info.total_words, console)
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
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help="Conversations each worker decodes together (its CONVFARM_BATCH_SIZE; "
                                    "default: the environment's, else 8).")] = None,
) -> None:
    """Run a whole farm on this machine: Redis, a collector and a generation worker.

    Uses CONVFARM_BROKER_URL / REDIS_URL if set, else Redis on 127.0.0.1:6379 if it answers,
    else starts an embedded redis-server. Exits 0 when every word is accounted for.
    """
    from producer.broker import celery_client, redis_client
    from producer.enqueue import enqueue as do_enqueue
    from producer.local import LocalFarmError, local_farm
    from producer.messages import queue_for_model
    from producer.progress import RunFailed, summary_table, wait_for_run
    from producer.runstate import RunStore, run_id_for
    from producer.settings import Settings
    from workers.model_files import ModelNotFound, resolve_model

    config = read_config(config_path, per_word=per_word, n_gpu_layers=n_gpu_layers)
    try:
        model_path = resolve_model(config.model)
    except ModelNotFound as exc:
        fail(f"{config_path}: field 'model': {exc}")
    out_root = (out or get_settings().out_dir).resolve()
    queue = queue_for_model(config.model)
    console.print(f"model {config.model} -> {model_path}", highlight=False)
    try:
        with local_farm(queue, out_root, generation_workers=workers, embedded_redis=embedded_redis,
                        batch_size=batch_size) as (url, farm):
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


# The other commands live beside their logic; registered after enqueue/run so --help lists those first.
register_rule_commands(app)  # try, filter, export
register_run_commands(app)  # status, runs, cancel, dlq
app.add_typer(words_app)  # words glossary|generate
app.add_typer(config_app)  # config new


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
