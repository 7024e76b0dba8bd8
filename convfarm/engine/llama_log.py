"""llama.cpp's log, minus one warning that is false for the batched engine.

The batched engine's context holds ``n_ctx`` cells for each of its N + 1 sequences in one
unified KV cache, and llama.cpp then reports the *whole* cache as the per-sequence context:
``n_ctx_seq (18432) > n_ctx_train (8192) -- possible training context overflow``. No
conversation ever uses more than ``n_ctx`` positions (the engine cuts it at ``n_ctx`` like the
one-at-a-time path), so the warning, printed by every worker, only misleads; it is dropped
while the engine creates its context, every other line goes to llama-cpp-python's own logger.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterator
from contextlib import contextmanager

import llama_cpp
from llama_cpp import _logger

_FALSE_OVERFLOW = re.compile(rb"n_ctx_seq \(\d+\) > n_ctx_train \(\d+\)")


@llama_cpp.llama_log_callback
def _filtered(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    if not _FALSE_OVERFLOW.search(text):
        _logger.llama_log_callback(level, text, user_data)


@contextmanager
def without_false_overflow_warning() -> Iterator[None]:
    llama_cpp.llama_log_set(_filtered, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
