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

Grammar: with a grammar, the chosen token is checked against it and the draw is
redone with the grammar applied only when the grammar rejects it (llama.cpp's
``common_sampler`` does the same), which keeps the unconstrained fast path fast.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import llama_cpp

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

        add(llama_cpp.llama_sampler_init_penalties(self.n_vocab, p.penalty_last_n, p.repeat_penalty, 0.0, 0.0))
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
        """The next token from the logits at batch row ``idx``; the chain accepts it (penalties, RNG)."""
        if self._chain is None:
            raise RuntimeError("sampler closed")
        if self._gate is not None:  # grammar: convfarm/engine/grammar_sampler.py
            return sample_with_grammar(self._chain, self._gate, ctx, idx, self.n_vocab)
        # llama_sampler_sample applies the chain and accepts the chosen token, as Llama.sample does
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, idx))

    def reset(self) -> None:
        """Back to the state right after construction (penalty history cleared, RNG reseeded)."""
        if self._chain is not None:
            llama_cpp.llama_sampler_reset(self._chain)
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


def _seed(seed: int) -> int:
    """llama.cpp takes a uint32; 0xFFFFFFFF (LLAMA_DEFAULT_SEED) would mean "random"."""
    value = ctypes.c_uint32(seed).value
    return value if value != llama_cpp.LLAMA_DEFAULT_SEED else value - 1
