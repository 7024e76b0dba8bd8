"""A liveness heartbeat file for farm workers, and the check that reads it.

Why not ``celery inspect ping``: it goes through the broker, takes seconds, needs every
worker to answer a broadcast, and a busy prefork worker answers late — Kubernetes would
restart healthy workers in the middle of a generation. Instead the worker's own event loop
touches a file every few seconds; the liveness probe only looks at the file's age::

    python -m workers.heartbeat /tmp/convfarm-heartbeat --max-age 60

exits 0 when the file was touched within the last 60 s, else 1 with one line saying why.

What a fresh file proves: the worker's main process runs and its event loop (the one that
fetches messages, supervises the pool and enforces time limits) is turning. A generation
running in a prefork child does not stop the beat; a hung child is the hard time limit's
job. A worker that waits for an unreachable Redis keeps beating on purpose, so restarting
Redis does not make every pod restart too.

Enabled by ``CONVFARM_HEARTBEAT_FILE`` (off when unset); ``CONVFARM_HEARTBEAT_INTERVAL``
sets the period (seconds, default 10). The step is added to every worker blueprint through
the ``worker_init`` signal, which Celery sends before it builds the blueprint, so
``workers/app.py`` only has to import this module.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from celery import bootsteps, signals

log = logging.getLogger(__name__)

HEARTBEAT_FILE_ENV = "CONVFARM_HEARTBEAT_FILE"
HEARTBEAT_INTERVAL_ENV = "CONVFARM_HEARTBEAT_INTERVAL"
DEFAULT_INTERVAL = 10.0


def beat(path: Path) -> None:
    """Write the current time atomically (a probe never reads a half-written file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{time.time():.3f}\n")
    os.replace(tmp, path)


def age(path: Path, now: float | None = None) -> float:
    """Seconds since the last beat (by mtime, which ``beat`` sets)."""
    return (now if now is not None else time.time()) - path.stat().st_mtime


class HeartbeatStep(bootsteps.StartStopStep):
    """Touches the heartbeat file from the worker's timer, i.e. from its event loop."""

    # the timer exists only after these steps created it; with the event loop (prefork
    # and solo on Redis) the hub drives the timer, so a stuck loop stops the beat
    requires = ("celery.worker.components:Timer", "celery.worker.components:Hub")

    def __init__(self, parent: Any, **options: Any) -> None:
        super().__init__(parent, **options)
        configured = os.environ.get(HEARTBEAT_FILE_ENV, "").strip()
        self.path = Path(configured) if configured else None
        self.interval = float(os.environ.get(HEARTBEAT_INTERVAL_ENV, DEFAULT_INTERVAL))
        self.enabled = self.path is not None
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._beat()
        self.tref = parent.timer.call_repeatedly(self.interval, self._beat, priority=10)
        log.info("convfarm: heartbeat every %.0fs to %s", self.interval, self.path)

    def _beat(self) -> None:
        assert self.path is not None
        try:
            beat(self.path)
        except OSError as exc:  # a full disk must not take the worker down; the probe will notice
            log.warning("convfarm: cannot write heartbeat %s: %s", self.path, exc)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
        # a stopped worker is not alive: the probe must not see the last beat as fresh
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class PresenceBeat:
    """This process's row in Redis (convfarm/runstate/presence.py), refreshed from a thread:
    ``producer status`` shows it, and ``enqueue``/``--wait`` say when no worker serves a queue.
    A thread, not the worker's timer: with ``-P threads`` a busy engine must not delay it."""

    def __init__(self, name: str, kind: str, queues: list[str]) -> None:
        self.name, self.kind, self.queues = name, kind, queues
        self.started = time.time()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="convfarm-presence", daemon=True)

    def _run(self) -> None:
        from convfarm.broker import redis_client
        from convfarm.runstate.presence import BEAT_SECONDS, Presence

        presence = Presence(redis_client())
        while True:
            try:
                presence.beat(self.name, kind=self.kind, queues=self.queues, pid=os.getpid(), started=self.started)
            except Exception as exc:  # noqa: BLE001 - Redis away: the row goes stale, the worker goes on
                log.warning("convfarm: presence beat failed: %s", exc)
            if self.stop_event.wait(BEAT_SECONDS):
                break
        try:
            presence.leave(self.name)  # stopped cleanly: gone at once, not after GONE_AFTER
        except Exception as exc:  # noqa: BLE001
            log.warning("convfarm: could not remove presence row: %s", exc)


_presence: PresenceBeat | None = None


@signals.worker_ready.connect
def _start_presence(sender: Any = None, **_: Any) -> None:
    global _presence
    try:
        queues = sorted(q.name for q in sender.task_consumer.queues) if sender is not None else []
    except AttributeError:
        queues = []
    hostname = getattr(sender, "hostname", None) or socket.gethostname()
    kind = "collector" if "convfarm.collector" in queues else "worker"
    _presence = PresenceBeat(hostname, kind, queues)
    _presence.thread.start()


@signals.worker_shutdown.connect
def _stop_presence(**_: Any) -> None:
    if _presence is not None:
        _presence.stop_event.set()
        _presence.thread.join(5)


@signals.worker_init.connect
def _add_heartbeat_step(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is not None:
        app.steps["worker"].add(HeartbeatStep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.heartbeat",
                                     description="Exit 0 if the worker's heartbeat file is fresh (liveness probe).")
    parser.add_argument("file", nargs="?", default=os.environ.get(HEARTBEAT_FILE_ENV),
                        help=f"the heartbeat file (default: ${HEARTBEAT_FILE_ENV})")
    parser.add_argument("--max-age", type=float, default=60.0, help="seconds a beat stays fresh (default 60)")
    args = parser.parse_args(argv)
    if not args.file:
        print(f"heartbeat: no file given and {HEARTBEAT_FILE_ENV} is not set", file=sys.stderr)
        return 2
    path = Path(args.file)
    try:
        seconds = age(path)
    except FileNotFoundError:
        print(f"heartbeat: {path} does not exist (worker not started, or stopped)", file=sys.stderr)
        return 1
    if seconds > args.max_age:
        print(f"heartbeat: {path} is {seconds:.0f}s old (limit {args.max_age:.0f}s)", file=sys.stderr)
        return 1
    print(f"heartbeat: ok, {seconds:.1f}s old")
    return 0


if __name__ == "__main__":
    sys.exit(main())
