"""Test hooks, injected from the tests and never kept in the farm's code paths.

When ``CONVFARM_TEST_HOOKS`` names a module (the chaos tests set ``tests.collector_hooks`` on a
collector and ``tests.worker_hooks`` on a generation worker), a farm process imports it and calls
its ``install_collector(collector)`` (the commit's named checkpoints, convfarm.commit.Checkpoints)
or ``install_worker(TASK_CHECKPOINTS)`` (the generation task's), whichever the module defines. A
hook may then watch those points, e.g. SIGKILL the process at one. Unset in production: nothing is
imported and no checkpoint has an observer.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from typing import Any

TEST_HOOKS_ENV = "CONVFARM_TEST_HOOKS"


class TaskCheckpoints:
    """Named points of a generation task, each seen with the task's word: ``before_generate``
    (its delivery counted, its lease held, the model about to run)."""

    POINTS = ("before_generate",)

    def __init__(self) -> None:
        self.observers: list[Callable[[str, str], None]] = []

    def hit(self, point: str, word: str) -> None:
        for observer in self.observers:
            observer(point, word)


TASK_CHECKPOINTS = TaskCheckpoints()


def install_test_hooks(target: Any, who: str) -> None:
    """Call the hooks module's ``install_<who>(target)``, when CONVFARM_TEST_HOOKS names one that has it."""
    name = os.environ.get(TEST_HOOKS_ENV)
    install = getattr(importlib.import_module(name), f"install_{who}", None) if name else None
    if install is not None:
        logging.getLogger("convfarm").warning("convfarm %s: test hooks from %s installed", who, name)
        install(target)
