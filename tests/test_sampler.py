"""The engine's repeat penalty against llama.cpp's own penalties stage: the same logits, bit for bit."""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np
import pytest

from convfarm.engine.sampler import RepeatPenalty

pytestmark = pytest.mark.fast
N_VOCAB = 512


def llama_cpp_penalised(logits: np.ndarray, history: list[int], last_n: int, penalty: float) -> np.ndarray:
    """What ``llama_sampler_init_penalties`` does to a full candidate array after accepting ``history``."""
    stage = llama_cpp.llama_sampler_init_penalties(N_VOCAB, last_n, penalty, 0.0, 0.0)
    try:
        for token in history:
            llama_cpp.llama_sampler_accept(stage, token)
        data = (llama_cpp.llama_token_data * N_VOCAB)(*[llama_cpp.llama_token_data(i, float(x), 0.0)
                                                       for i, x in enumerate(logits)])
        array = llama_cpp.llama_token_data_array(data, N_VOCAB, -1, False)
        llama_cpp.llama_sampler_apply(stage, ctypes.byref(array))
        out = np.empty(N_VOCAB, dtype=np.float32)
        for i in range(array.size):
            out[array.data[i].id] = array.data[i].logit
        return out
    finally:
        llama_cpp.llama_sampler_free(stage)


CASES = [
    # (last_n, penalty, history)
    (64, 1.1, []),
    (64, 1.1, [5, 5, 7, 0]),
    (4, 1.3, [1, 2, 3, 4, 5, 6, 1, 1]),  # window slides: 2, 3 and 4 leave it, 1 comes back
    (8, 1.1, [*range(30), 3, 3, 3]),
    (64, 1.0, [1, 2, 3]),  # penalty 1: disabled, as llama.cpp
    (0, 1.5, [1, 2, 3]),  # window 0: disabled
    (3, 0.9, [9, 9, 9, 9, 10]),  # a penalty below 1 raises (both ways round)
]


@pytest.mark.parametrize(("last_n", "penalty", "history"), CASES)
def test_repeat_penalty_equals_the_llama_cpp_stage(last_n: int, penalty: float, history: list[int]) -> None:
    rng = np.random.default_rng(len(history) + last_n)
    logits = rng.normal(0.0, 4.0, N_VOCAB).astype(np.float32)
    logits[[1, 5, 9]] = 0.0  # the x <= 0 branch at its edge
    expected = llama_cpp_penalised(logits, history, last_n, penalty)

    penalty_window = RepeatPenalty(last_n, penalty)
    for token in history:
        penalty_window.accept(token)
    row = logits.copy()
    penalty_window.apply_to(row)
    assert row.tobytes() == expected.tobytes()
    changed = set(np.flatnonzero(row != logits).tolist())
    assert changed <= set(history[-last_n:] if last_n else [])


def test_reset_forgets_the_window() -> None:
    penalty_window = RepeatPenalty(64, 1.1)
    for token in (3, 4):
        penalty_window.accept(token)
    penalty_window.reset()
    row = np.ones(N_VOCAB, dtype=np.float32)
    penalty_window.apply_to(row)
    assert (row == 1.0).all()
