"""One sampler chain per sequence, on llama.cpp's own sampler API.

The batched engine decodes many sequences in one ``llama_decode``; each sequence still needs
its own sampling state (its seed's random stream, the tokens its repeat penalty looks back
on). :class:`SequenceSampler` is that state: a ``llama_sampler`` chain built from the low-level
bindings, so sampling runs in C over the logits of one batch row.

The chain is the one llama-cpp-python's high-level ``Llama`` builds for the same parameters
(``Llama._init_sampler`` in 0.3.x), stage for stage, so that a sequence decoded alone by the
engine draws the same tokens as ``Llama.create_completion(..., seed=S)``:

    penalties(last 64, repeat) -> top_k -> typical(1.0) -> top_p -> min_p(0.05) -> temp -> dist(seed)

(temperature 0 ends in greedy instead; a negative temperature samples from the raw
distribution). ``min_p`` 0.05 and ``typical_p`` 1.0 are ``create_completion``'s defaults, which
the one-at-a-time path never overrides; they are fields here so a caller can.

Repeat penalty: llama.cpp's penalties stage walks the *whole vocabulary* at every token (a
hash lookup per candidate: 190 of the chain's 235 µs a token on the bundled model's 49,152
tokens, measured here), although only the at most ``penalty_last_n`` distinct tokens of the
recent window can change. :class:`RepeatPenalty` applies the same arithmetic to just those,
in the row's logits, before the chain runs; the chain then starts at top_k. The logits it
leaves are bit for bit the ones the stage would have produced (float32 ``*``/``/`` by the same
float32 penalty), so the draws are unchanged.

Grammar: with a grammar, the chosen token is checked against it and the draw is
redone with the grammar applied only when the grammar rejects it (llama.cpp's
``common_sampler`` does the same), which keeps the unconstrained fast path fast.
"""

from __future__ import annotations

import ctypes
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np

from convfarm.engine.grammar_sampler import GrammarGate, sample_with_grammar


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_k: int
    top_p: float
    repeat_penalty: float
    seed: int
    # create_completion's defaults, which the one-at-a-time path relies on
    min_p: float = 0.05
    typical_p: float = 1.0
    penalty_last_n: int = 64  # Llama(last_n_tokens_size=64)

    @classmethod
    def for_config(cls, config: Any, *, seed: int) -> SamplingParams:
        """A run's sampling (:func:`convfarm.engine.request.generation_params`, the one spelling) with a seed."""
        from convfarm.engine.request import generation_params

        params = generation_params(config)
        return cls(temperature=params["temperature"], top_k=params["top_k"], top_p=params["top_p"],
                   repeat_penalty=params["repeat_penalty"], seed=seed)


class SequenceSampler:
    """The sampling state of one sequence. Not thread-safe: the engine's decode thread owns it."""

    def __init__(self, model: Any, params: SamplingParams, grammar: str | None = None) -> None:
        """``model`` is a ``llama_model_p`` (``Llama._model.model``, or the engine's own)."""
        self.model = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.params = params
        self.grammar = grammar
        self._penalty = RepeatPenalty(params.penalty_last_n, params.repeat_penalty)
        self._chain: Any = self._build_chain(params)
        # --- grammar: sample first, check, apply the grammar only on a miss -----------------
        self._gate: GrammarGate | None = None
        if grammar is not None:
            try:
                self._gate = GrammarGate(self.vocab, grammar)  # GrammarError when llama.cpp cannot parse it
            except Exception:
                self.close()
                raise
        # --- end grammar ------------------------------------------------------------------

    def _build_chain(self, p: SamplingParams) -> Any:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

        def add(stage: Any) -> None:
            llama_cpp.llama_sampler_chain_add(chain, stage)  # the chain owns (and frees) its stages

        # penalties: RepeatPenalty, on the row's logits before the chain runs
        if p.temperature < 0.0:
            add(llama_cpp.llama_sampler_init_dist(_seed(p.seed)))
        elif p.temperature == 0.0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            min_keep = 1
            add(llama_cpp.llama_sampler_init_top_k(p.top_k))
            add(llama_cpp.llama_sampler_init_typical(p.typical_p, min_keep))
            add(llama_cpp.llama_sampler_init_top_p(p.top_p, min_keep))
            add(llama_cpp.llama_sampler_init_min_p(p.min_p, min_keep))
            add(llama_cpp.llama_sampler_init_temp(p.temperature))
            add(llama_cpp.llama_sampler_init_dist(_seed(p.seed)))
        return chain

    def sample(self, ctx: Any, idx: int) -> int:
        """The next token from the logits at batch row ``idx``; the penalty window and the chain (RNG) take it."""
        if self._chain is None:
            raise RuntimeError("sampler closed")
        self._penalty.apply(ctx, idx)
        if self._gate is not None:  # grammar: convfarm/engine/grammar_sampler.py
            token = sample_with_grammar(self._chain, self._gate, ctx, idx, self.n_vocab)
        else:
            # llama_sampler_sample applies the chain and accepts the chosen token (the RNG), as Llama.sample does
            token = int(llama_cpp.llama_sampler_sample(self._chain, ctx, idx))
        self._penalty.accept(token)
        return token

    def reset(self) -> None:
        """Back to the state right after construction (penalty history cleared, RNG reseeded)."""
        if self._chain is not None:
            llama_cpp.llama_sampler_reset(self._chain)
        self._penalty.reset()
        if self._gate is not None:  # grammar: back to the start of the transcript
            self._gate.reset()

    def close(self) -> None:
        if getattr(self, "_gate", None) is not None:
            self._gate.close()  # type: ignore[union-attr]
            self._gate = None
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self) -> None:  # a forgotten close() must not leak the C chain
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the library may already be gone
            pass


class RepeatPenalty:
    """llama.cpp's penalties stage with only a repeat penalty, on the tokens it can touch.

    Same window (the last ``last_n`` accepted tokens, a ring) and the same update of a logit
    whose token is in it: ``x * penalty`` when ``x <= 0``, else ``x / penalty``, in float32.
    Frequency and presence penalties are not offered (the farm's configs have none).
    """

    def __init__(self, last_n: int, penalty: float) -> None:
        # llama.cpp: a non-positive window or a penalty of 1 disables the stage
        self.enabled = last_n > 0 and np.float32(penalty) != np.float32(1.0)
        self.penalty = float(np.float32(penalty))  # the float32 value llama.cpp multiplies by
        self.window: deque[int] = deque(maxlen=max(last_n, 1))
        self.counts: Counter[int] = Counter()

    def apply(self, ctx: Any, idx: int) -> None:
        """Penalise, in place, the logits of batch row ``idx`` whose tokens are in the window."""
        if not (self.enabled and self.counts):
            return
        logits = llama_cpp.llama_get_logits_ith(ctx, idx)
        if not logits:
            raise RuntimeError(f"no logits for batch row {idx}")
        self.apply_to(logits)

    def apply_to(self, row: Any) -> None:
        """Penalise, in place, the entries of a float32 row (a ctypes pointer or an array).

        A plain loop over the <= ``last_n`` tokens: a quarter of numpy's fancy-indexing cost at
        this size. Python computes in double; for one float32 ``*`` or ``/`` the double result
        rounded to float32 is the float32 result, so the logits match llama.cpp's bit for bit.
        """
        if not (self.enabled and self.counts):
            return
        penalty = self.penalty
        for token in self.counts:
            logit = row[token]
            row[token] = logit * penalty if logit <= 0 else logit / penalty

    def accept(self, token: int) -> None:
        if not self.enabled:
            return
        if len(self.window) == self.window.maxlen:
            oldest = self.window[0]
            self.counts[oldest] -= 1
            if not self.counts[oldest]:
                del self.counts[oldest]
        self.window.append(token)
        self.counts[token] += 1

    def reset(self) -> None:
        self.window.clear()
        self.counts.clear()


def _seed(seed: int) -> int:
    """llama.cpp takes a uint32; 0xFFFFFFFF (LLAMA_DEFAULT_SEED) would mean "random"."""
    value = ctypes.c_uint32(seed).value
    return value if value != llama_cpp.LLAMA_DEFAULT_SEED else value - 1
