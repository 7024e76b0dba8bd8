"""The collector loop on a thread of a Celery worker (``--collector``, see workers/app.py)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from convfarm.messages import GENERATE_TASK, RESULTS_STREAM, task_id
from convfarm.runstate import RunInfo
from workers.collector.collector import Collector
from workers.testhooks import install_test_hooks

log = logging.getLogger("workers.collector")



class CollectorService:
    restart_delay = 5.0  # seconds after an unexpected error (a full disk, a corrupt shard) before retrying

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="convfarm-collector", daemon=True)

    @classmethod
    def from_worker(cls, worker: Any) -> CollectorService:
        from convfarm.broker import broker_redis_client, redis_client

        app = worker.app

        def send(info: RunInfo, word: str, attempt: int) -> None:
            app.send_task(GENERATE_TASK, args=[info.run, word, attempt],
                          task_id=task_id(info.run, word, attempt), queue=info.queue)

        collector = Collector(redis_client(), worker.hostname, send, broker=broker_redis_client())
        install_test_hooks(collector, "collector")  # tests only (workers/testhooks.py)
        return cls(collector)

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.collector.run_forever(self.stop_event)
            except Exception:
                log.exception("convfarm collector: error; restarting the loop in %g s", self.restart_delay)
                self.collector.forget_runs()  # re-open runs: recovery rereads the open files
                self.stop_event.wait(self.restart_delay)

    def start(self) -> None:
        log.info("convfarm collector %s started on stream %s", self.collector.name, RESULTS_STREAM)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)
