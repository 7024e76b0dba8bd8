"""Grammar-constrained sampling at the cost of a check: sample first, apply the grammar only on a miss.

llama-cpp-python's high-level ``Llama`` puts the grammar inside the sampler chain, so the
grammar filters the *whole vocabulary* (tens of thousands of token pieces matched against
the grammar's stacks) at every token: on the bundled model that halved tok/s.
llama.cpp's own ``common/sampling.cpp`` does it the other way round, and so do we:

1. fill the candidates from the logits and run the ordinary chain (penalties … dist);
2. check the chosen token alone against the grammar — a one-element candidate array;
3. only when the grammar rejects it, refill the candidates, apply the grammar to all of them,
   and run the chain again;
4. accept the token into the grammar and into the chain.

The model mostly writes what the grammar allows, so step 3 is rare and the cost is one
one-token check and one accept per token. Until the grammar first intervenes, the tokens
are the ones the free chain would have drawn with the same seed.

:class:`GrammarGate` wraps llama.cpp's grammar sampler; :class:`Candidates` is the
candidate array filled from one batch row's logits (what ``llama_sampler_sample`` builds in C,
which we cannot use here: it accepts the token into the chain before we have checked it).
"""

from __future__ import annotations

import ctypes
import math
import threading
from typing import Any

import llama_cpp
import numpy as np

_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


class GrammarError(ValueError):
    """llama.cpp could not parse the grammar (its parser logs the details)."""


class GrammarGate:
    """One sequence's grammar state: check a token, filter candidates, accept a token."""

    def __init__(self, vocab: Any, gbnf: str, root: str = "root") -> None:
        self._sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), root.encode())
        if not self._sampler:
            raise GrammarError("llama.cpp could not parse the grammar")
        # the one-token candidate array, allocated once: the check runs for every token
        self._one = llama_cpp.llama_token_data()
        self._one_array = llama_cpp.llama_token_data_array()

    def allows(self, token: int) -> bool:
        """Would the grammar let ``token`` come next? (An end-of-generation token: is the grammar complete?)"""
        self._one.id, self._one.logit, self._one.p = token, 1.0, 0.0
        # a sampler may repoint ``data``: set every field each time
        self._one_array.data = ctypes.pointer(self._one)
        self._one_array.size, self._one_array.selected, self._one_array.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(self._one_array))
        return not math.isinf(self._one_array.data[0].logit)

    def apply(self, candidates: Candidates) -> None:
        """Set every candidate the grammar does not allow to -inf."""
        llama_cpp.llama_sampler_apply(self._sampler, candidates.pointer)

    def accept(self, token: int) -> None:
        """Advance the grammar. Only for an allowed token: llama.cpp throws on one it cannot accept."""
        llama_cpp.llama_sampler_accept(self._sampler, token)

    def reset(self) -> None:
        if self._sampler:
            llama_cpp.llama_sampler_reset(self._sampler)

    def close(self) -> None:
        if self._sampler:
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None

    def __del__(self) -> None:  # a forgotten close() must not leak the C sampler
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the library may already be gone
            pass


class Candidates:
    """All tokens with their logits from one batch row, as a ``llama_token_data_array``."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self.data = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._ids = np.arange(n_vocab, dtype=np.intc)
        self._base = self.data.ctypes.data_as(llama_cpp.llama_token_data_p)
        self.array = llama_cpp.llama_token_data_array()
        self.pointer = ctypes.pointer(self.array)

    def fill(self, ctx: Any, idx: int) -> None:
        logits = llama_cpp.llama_get_logits_ith(ctx, idx)
        if not logits:
            raise RuntimeError(f"no logits for batch row {idx}")
        self.data["id"] = self._ids
        self.data["logit"] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        self.data["p"] = 0.0
        self.array.data, self.array.size, self.array.selected, self.array.sorted = self._base, self.n_vocab, -1, False

    def selected(self) -> int:
        if self.array.selected < 0:
            raise RuntimeError("the sampler chain selected no token")
        return int(self.array.data[self.array.selected].id)  # via ``data``: a sampler may have repointed it


_scratch = threading.local()


def candidates_for(n_vocab: int) -> Candidates:
    """A candidate buffer per thread and vocabulary size: the samplers of a batch take turns with it,
    so a batch of many sequences does not hold a vocabulary-sized array each."""
    buffers: dict[int, Candidates] = _scratch.__dict__.setdefault("buffers", {})
    if n_vocab not in buffers:
        buffers[n_vocab] = Candidates(n_vocab)
    return buffers[n_vocab]


def sample_with_grammar(chain: Any, gate: GrammarGate, ctx: Any, idx: int, n_vocab: int) -> int:
    """The next token of one sequence: chain first, grammar only when the chain's choice breaks it.

    Accepts the token into both the grammar and the chain (penalty history, RNG), as
    ``llama_sampler_sample`` does for the chain alone.
    """
    candidates = candidates_for(n_vocab)
    candidates.fill(ctx, idx)
    llama_cpp.llama_sampler_apply(chain, candidates.pointer)
    token = candidates.selected()
    if not gate.allows(token):
        candidates.fill(ctx, idx)
        gate.apply(candidates)
        llama_cpp.llama_sampler_apply(chain, candidates.pointer)
        token = candidates.selected()
    gate.accept(token)
    llama_cpp.llama_sampler_accept(chain, token)
    return token
