"""Worker settings (docs/design.md, "Delivery guarantees") on top of the sender's (``convfarm.broker``).

Why each one:
* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged only after it
  ran; if its process dies (SIGKILL, OOM, a llama.cpp crash) the message goes back to the
  queue instead of being lost (celery#1628).
* ``worker_prefetch_multiplier = 1``: a worker holds one task it is not working on, not
  dozens that would wait behind a slow generation while other workers idle.
* visibility timeout (in ``convfarm.broker``) > hard time limit: otherwise Redis hands a
  still-running task to a second worker.
* the model is loaded lazily in the task (never before the fork, and not in
  ``worker_process_init``, whose handlers must finish within ``worker_proc_alive_timeout``).
* no ``worker_max_tasks_per_child``: recycling a child reloads the model.
* ``CONVFARM_BATCH_SIZE`` > 1: the threads pool with that many threads, one per request the
  batched engine decodes together (see ``workers/tasks.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from convfarm.broker import base_celery_config
from convfarm.messages import QUEUE_PREFIX
from convfarm.settings import Settings


def worker_config(settings: Settings) -> dict[str, Any]:
    if settings.visibility_timeout <= settings.hard_time_limit:
        raise ValueError(
            f"CONVFARM_VISIBILITY_TIMEOUT ({settings.visibility_timeout}s) must exceed "
            f"CONVFARM_HARD_TIME_LIMIT ({settings.hard_time_limit}s)"
        )
    if settings.lease <= settings.hard_time_limit:
        raise ValueError(
            f"CONVFARM_LEASE_SECONDS ({settings.lease}s) must exceed "
            f"CONVFARM_HARD_TIME_LIMIT ({settings.hard_time_limit}s)"
        )
    config = base_celery_config(settings)
    config.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.soft_time_limit,
        task_time_limit=settings.hard_time_limit,
        # Task events (received, started, succeeded: ~2 PUBLISH per task) only while someone
        # watches: Flower (--enable_events, as compose and k8s run it) turns them on in every
        # worker every 5 s; without a Flower they would be Redis load nobody reads (docs/scaling.md).
        worker_send_task_events=False,
        worker_proc_alive_timeout=120.0,
        worker_hijack_root_logger=False,
        worker_max_tasks_per_child=None,
        broker_connection_retry=True,
        # a warm shutdown (SIGTERM) waits for the running task; SIGQUIT / soft shutdown
        # gives it this long, then requeues it at once
        worker_soft_shutdown_timeout=10.0,
        worker_enable_soft_shutdown_on_idle=True,
        result_backend_transport_options=config["broker_transport_options"],
    )
    # batched decoding: N task threads feed one engine (see workers/tasks.py); N = 1 is
    # the one-at-a-time prefork child. A command line's -P/-c still win (the collector: -P solo -c 1).
    if settings.batch_size > 1:
        config.update(worker_pool="threads", worker_concurrency=settings.batch_size)
    else:
        config.update(worker_pool="prefork", worker_concurrency=1)
    return config


def wants_ack_emulation(settings: Settings, queues: Iterable[str]) -> bool:
    """Whether a worker consuming ``queues`` keeps kombu's acknowledgement emulation.

    kombu's Redis transport emulates acks with an ``unacked`` hash and index: a MULTI/ZADD/HSET/EXEC
    when a message is delivered and a MULTI/ZREM/HDEL/EXEC when it is acked, 8 of a generation
    attempt's ~40 Redis commands, the whole message body written each time. A generation message
    needs none of it: it is ``(run, word, attempt)``, and the attempt's lease in the run state
    issues it again when a worker dies holding it (docs/design.md, "Delivery guarantees"). So a
    worker that serves only generation queues turns it off. Any other worker keeps it: a judge
    message is a whole generated conversation, worth redelivering rather than regenerating, and a
    worker with no ``-Q`` serves queues we do not know. ``CONVFARM_ACK_EMULATION`` decides outright.
    """
    if settings.ack_emulation is not None:
        return settings.ack_emulation
    names = list(queues)
    return not names or not all(name.startswith(QUEUE_PREFIX) for name in names)
