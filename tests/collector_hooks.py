"""Test hooks a real collector process loads (``CONVFARM_TEST_HOOKS=tests.collector_hooks``,
see workers/collector/service.py): the chaos tests' fault injection, kept out of the collector.

``CONVFARM_FAULT`` names a commit checkpoint (``before_write``, ``after_write``,
``after_rename``, ``before_ack``) where the collector SIGKILLs itself; ``CONVFARM_FAULT_AFTER``:
the Nth time it gets there (default 1). ``CONVFARM_FAULT_SIGNAL=SIGSTOP`` stops it there instead
(a collector that stalls: the test SIGCONTs it later).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter
from typing import Any

FAULT_ENV, FAULT_AFTER_ENV, FAULT_SIGNAL_ENV = "CONVFARM_FAULT", "CONVFARM_FAULT_AFTER", "CONVFARM_FAULT_SIGNAL"
HOOKS_ENV = {"CONVFARM_TEST_HOOKS": "tests.collector_hooks"}  # what a test adds to a collector's environment


def install_collector(collector: Any) -> None:
    point = os.environ.get(FAULT_ENV)
    if not point:
        return
    if point not in collector.checkpoints.POINTS:
        raise ValueError(f"{FAULT_ENV}={point}: not a checkpoint ({', '.join(collector.checkpoints.POINTS)})")
    after = int(os.environ.get(FAULT_AFTER_ENV, "1"))
    hits: Counter[str] = Counter()
    sig = signal.Signals[os.environ.get(FAULT_SIGNAL_ENV, "SIGKILL")]

    def kill_at(reached: str) -> None:
        if reached != point:
            return
        hits[reached] += 1
        if hits[reached] == after or (hits[reached] > after and sig is signal.SIGKILL):
            logging.getLogger("workers.collector").error("convfarm collector: fault injection: %s at %s",
                                                         sig.name, point)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), sig)
            time.sleep(0.5)  # a stop takes hold at the next system call: not one step further

    collector.checkpoints.observers.append(kill_at)
