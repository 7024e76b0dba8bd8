"""The Celery app of the farm. Start workers with the ordinary command line:

Generation worker (one per GPU / CPU slot, one model each)::

    celery -A workers worker -Q convfarm.gen.smollm2-135m -c 1 -n gen0@%h

Collector (filters, deduplicates and writes the shards; one is enough, more may run)::

    celery -A workers worker --collector -Q convfarm.collector -P solo -c 1 -n collector@%h
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, bootsteps
from celery.signals import after_setup_logger, after_setup_task_logger, celeryd_after_setup
from click import Option

import workers.heartbeat  # noqa: F401  (registers the liveness heartbeat step, see that module)
from convfarm import model_files
from convfarm.settings import get_settings, mask_credentials
from workers.celeryconfig import wants_ack_emulation, worker_config

COLLECTOR_QUEUE = "convfarm.collector"

app = Celery("convfarm", include=["workers.tasks", "workers.judge_task"])
app.conf.update(worker_config(get_settings()))

app.user_options["worker"].add(
    Option(
        ("--collector",),
        is_flag=True,
        default=False,
        help="Run the convfarm collector in this worker (reads the results stream, writes shards).",
    )
)


class CollectorStep(bootsteps.StartStopStep):
    """Runs the collector loop beside the worker's consumer when ``--collector`` is given.

    The collector reads a Redis stream rather than a Celery queue (see
    ``workers.collector``); hosting it in a Celery worker gives it the same command line,
    logging, Flower presence and shutdown handling as every other farm process.
    """

    def __init__(self, parent: object, collector: bool = False, **options: object) -> None:
        super().__init__(parent, **options)
        self.enabled = bool(collector)
        self.service = None

    def start(self, parent: object) -> None:
        from workers.collector import CollectorService

        self.service = CollectorService.from_worker(parent)
        self.service.start()

    def stop(self, parent: object) -> None:
        if self.service is not None:
            self.service.stop()


app.steps["worker"].add(CollectorStep)


class MaskCredentials(logging.Filter):
    """Every log line of a farm process with URL passwords masked (a Redis error may quote the URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_credentials(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


@after_setup_logger.connect
@after_setup_task_logger.connect
def _mask_log_credentials(logger: logging.Logger, **_: object) -> None:
    for handler in logger.handlers:
        handler.addFilter(MaskCredentials())


@celeryd_after_setup.connect  # -Q applied; the consumer's broker connection is not made yet
def _choose_ack_emulation(instance: Any, conf: Any, **_: object) -> None:
    queues = instance.app.amqp.queues.consume_from or {}
    emulate = wants_ack_emulation(get_settings(), queues)
    # a new dict: the result backend's options are the same object (workers/celeryconfig.py)
    conf.broker_transport_options = {**conf.broker_transport_options, "ack_emulation": emulate}
    logging.getLogger("convfarm").info(
        "convfarm: broker acknowledgement emulation %s", "on" if emulate else "off (leases re-issue lost messages)")


@celeryd_after_setup.connect  # logging is set up, the consumer and its pool not started yet
def _fetch_models(**_: object) -> None:
    """Download CONVFARM_MODELS now, then forbid downloads: a task never downloads a model (a
    multi-GB download would run into its time limit and be repeated by every redelivery).
    The pool's processes are forked after this and inherit the rule."""
    refs = get_settings().model_refs
    log = logging.getLogger("convfarm")
    try:
        with model_files.downloads_allowed():  # once per machine, under the cache's file lock
            for path in model_files.fetch_models(refs):
                log.info("convfarm: model ready: %s", path)
    except model_files.ModelNotFound as exc:
        log.error("convfarm: %s", exc)
        raise SystemExit(1) from None
    model_files.forbid_downloads()
