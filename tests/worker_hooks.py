"""Test hooks a real generation worker loads (``CONVFARM_TEST_HOOKS=tests.worker_hooks``, see
workers/testhooks.py): the chaos tests' fault injection, kept out of the task's code.

``CONVFARM_FAULT_POISON_WORD``: a task for this word SIGKILLs its own process just before it
generates, every time it is delivered (a prompt that crashes llama.cpp).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

POISON_WORD_ENV = "CONVFARM_FAULT_POISON_WORD"


def worker_env(poison_word: str) -> dict[str, str]:
    """What a test adds to a generation worker's environment to make ``poison_word`` fatal."""
    return {"CONVFARM_TEST_HOOKS": "tests.worker_hooks", POISON_WORD_ENV: poison_word}


def install_worker(checkpoints: Any) -> None:
    poison = os.environ.get(POISON_WORD_ENV)
    if not poison:
        return

    def kill_on_poison(point: str, word: str) -> None:
        if point == "before_generate" and word == poison:
            logging.getLogger("convfarm").error("convfarm worker: fault injection: SIGKILL on the word %r", word)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoints.observers.append(kill_on_poison)
