"""The batched engine: up to N conversations decoded together, one ``llama_decode`` per step.

A one-at-a-time worker spends each ``llama_decode`` on one token of one sequence; the
weights are read from memory once per step whatever the batch holds, so decoding 8 or 16
sequences in the same step costs little more than one (llama.cpp's ``llama-batched-bench``
on this 2-core CPU: 88 tok/s with 1 sequence, 214 with 8). This module is that loop, on
llama-cpp-python's low-level bindings (its high-level ``Llama`` has no batching):

* one context with ``n_seq_max`` = slots + 2 and one ``llama_batch``;
  every step adds the next token of every live sequence (and prompt tokens of newly admitted
  ones, chunked to ``n_batch``) and decodes them together;
* **continuous batching**: a sequence that ends (EOS, ``max_tokens``, a stop string) or that
  its streaming judge decides (a doomed or finished transcript) leaves at once: its KV cells
  are removed (``llama_memory_seq_rm``) and the next waiting job takes the slot in the next step;
* **shared prompt prefix**: the prompts of a run differ only in the word, so the common
  prefix is decoded once and copied in the KV cache (``llama_memory_seq_cp``) to each new
  sequence instead of being decoded again. An extra sequence id (the last one) keeps the
  prefix alive between jobs;
* one :class:`~convfarm.engine.sampler.SequenceSampler` (own seed, own penalty history) and
  one streaming judge per sequence; the text is detokenised per sequence the way
  ``Llama.create_completion(stream=True)`` does (incomplete UTF-8 held back, text that could
  start a stop string held back), so the judge sees the chunks a llama.cpp stream would give;
* **score jobs** (:meth:`BatchedEngine.score`, docs/design.md "Relevance judge"): a relevance
  judge's :class:`~convfarm.judge.ScoreRequest` is a prefill that samples nothing. It takes a
  sequence id like a conversation, its tokens go into the same steps as the generation's
  (logits asked for only at the positions it reads), and once its last token is decoded it
  leaves with a :class:`~convfarm.judge.ScoreReading` and its cells are freed. It does not share
  the run's prompt prefix (its tokens are the judge's question, not the prompt), but the judge's
  own: the request's ``shared`` leading tokens (a method's fixed preamble, e.g. its worked
  examples) are decoded once, their KV cells saved (``llama_state_seq_get_data``, from a second
  extra sequence id that holds them for that moment only) and written back into every later
  score job that starts with them (``llama_state_seq_set_data``), which then decodes only its
  conversation and question (docs/judge.md, "The judge's cost"). Saved, not held in the cache:
  held cells would change where every later sequence's cells go, and its logits' last bits.

KV layout (docs/batched-decoding.md), chosen by the worker (``CONVFARM_KV_LAYOUT``):

* **unified** (``kv_unified=True``, the default, what llama.cpp's server uses): one cache the
  sequences share. llama.cpp decodes any batch in one ubatch, and a shared prefix is shared
  without a copy (its cells are tagged with one more sequence id). The attention sums then
  run over cells interleaved with other sequences': once several sequences share the cache,
  the last bits of the logits move and a sampled conversation drifts from its
  one-at-a-time self (alone in the engine it is still that self: tested).
* **per-sequence** (``kv_unified=False``): every sequence has its own KV stream, laid out as
  the one-at-a-time path lays it out, so a sequence decoded in a batch of N is token for token
  the one it would be alone (tested). The price: llama.cpp splits a batch into ubatches of
  *consecutive* sequence ids with equal token counts (``split_equal(sequential=true)``), so
  the engine orders every step by sequence id, a prompt being decoded costs one more graph
  computation, and a prefix is shared by copying the whole stream buffer (a memcpy per admission).

Jobs arrive tokenised (:class:`EngineJob`): the engine knows nothing of configs or prompts.
:meth:`BatchedEngine.submit` is thread-safe and returns a future; one daemon thread runs
the decode loop and owns every llama.cpp object of the engine.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from convfarm.engine.llama_log import without_false_overflow_warning
from convfarm.engine.request import EngineResult
from convfarm.engine.sampler import SamplingParams, SequenceSampler
from convfarm.judge import ScoreReading, ScoreRequest
from convfarm.rules import TranscriptJudge

log = logging.getLogger(__name__)

MIN_SHARED_PREFIX = 8  # tokens; below this a common prefix is a coincidence ("We"), not a run's prompt


class EngineTimeout(TimeoutError):
    """A job ran past its time limit (the engine's soft time limit: the threads pool has none)."""


@dataclass
class EngineJob:
    """One conversation to generate: the prompt's tokens and how to sample and judge them."""

    tokens: Sequence[int]
    max_tokens: int
    params: SamplingParams
    judge: TranscriptJudge
    grammar: str | None = None
    stop: Sequence[str] = ()
    early_stop: bool = True  # False: decode to EOS/max_tokens after the judge decided (to measure the saving)
    time_limit: float | None = None  # seconds from admission
    # the object the engine fills in and returns: a caller's subclass (GenerationOutcome) carries its
    # own fields through, so the result is not copied into another shape afterwards
    result: EngineResult = field(default_factory=EngineResult)


@dataclass
class _ScoreSlot:
    """A score job in flight: a prefill whose log-probabilities are read as its chunks are decoded."""

    seq: int
    request: ScoreRequest
    future: Future[ScoreReading]
    n_prompt_done: int = 0
    preamble_kept: bool = False  # its preamble is in the score prefix sequence (copied from or into it)
    candidates: tuple[float, ...] = ()
    span: list[float] = field(default_factory=list)
    probed: dict[int, tuple[float, ...]] = field(default_factory=dict)  # probe position -> its candidates' readings
    probe_at: dict[int, tuple[int, ...]] = field(init=False)  # the request's probes by position (looked up per token)

    def __post_init__(self) -> None:
        self.probe_at = dict(self.request.probes)

    def reads_span(self, i: int) -> bool:
        """Whether the logits after ``tokens[i]`` give a span reading (the log-probability of ``tokens[i + 1]``)."""
        start = self.request.span_start
        return start is not None and max(1, start) - 1 <= i < len(self.request.tokens) - 1

    def reads(self, i: int) -> bool:
        """Whether the logits after ``tokens[i]`` are read: the next-token candidates, a probe's, or a span token's."""
        if i == len(self.request.tokens) - 1 and self.request.candidates:
            return True
        return i in self.probe_at or self.reads_span(i)


@dataclass
class _Slot:
    """A sequence in flight: its KV sequence id, sampler and the text state of its stream."""

    seq: int
    job: EngineJob
    future: Future[EngineResult]
    sampler: SequenceSampler
    started: float
    admitted_step: int = 0
    n_prompt_done: int = 0  # prompt tokens already in the KV cache (shared prefix included)
    n_past: int = 0  # the position of the next token
    next_token: int | None = None  # sampled, to be decoded in the next step
    completion: list[int] = field(default_factory=list)
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="ignore"))
    held: str = ""  # decoded text not yet streamed: it could be the start of a stop string
    pieces: list[str] = field(default_factory=list)
    finish: str | None = None  # "eos" | "length" | "stop" once the stream is over
    machine_seconds: float = 0.0  # its share of the engine's busy time so far (_accrue)

    @property
    def prefilling(self) -> bool:
        return self.n_prompt_done < len(self.job.tokens)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class BatchedEngine:
    """Continuous batched decoding of :class:`EngineJob` on one llama.cpp model.

    ``model`` is a loaded ``llama_model_p`` (shared with the process's ``Llama``; weights are
    not loaded twice). ``n_ctx_per_seq`` is what one conversation may use (prompt + tokens),
    as ``n_ctx`` is for the one-at-a-time path; the cache holds ``n_slots + 2`` of those (the run's
    prompt prefix, and the judge's preamble while it is saved). ``keep_score_prefix=False`` decodes every score job
    whole (to measure what the kept preamble saves).
    """

    def __init__(self, model: Any, *, n_slots: int, n_ctx_per_seq: int, n_threads: int,
                 n_batch: int = 512, kv_unified: bool = True, flash_attn: bool = False,
                 keep_score_prefix: bool = True) -> None:
        if n_slots < 1:
            raise ValueError("n_slots must be >= 1")
        self.model = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_slots = n_slots
        self.n_ctx_per_seq = n_ctx_per_seq
        self.prefix_seq = n_slots  # the extra sequence id that keeps the shared prefix
        self.score_prefix_seq = n_slots + 1  # ... and the one the judge's preamble is saved from
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx_per_seq * (n_slots + 2)
        params.n_seq_max = n_slots + 2
        # what Llama(n_ctx, n_batch=512) sets, so one sequence alone decodes as the one-at-a-time path does
        params.n_batch = min(n_batch, params.n_ctx)
        params.n_ubatch = params.n_batch
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        # off by default, as Llama(flash_attn=False); the GPU table measures both (benchmarks/gpu/)
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        params.kv_unified = kv_unified
        params.no_perf = True
        with without_false_overflow_warning():  # each sequence still uses at most n_ctx_per_seq (llama_log.py)
            self.ctx = llama_cpp.llama_init_from_model(model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {params.n_ctx} cells for {n_slots} sequences")
        self.kv_unified = kv_unified
        self.n_batch = int(params.n_batch)
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._piece = ctypes.create_string_buffer(256)
        self._prefix: list[int] = []  # the tokens the prefix sequence holds
        self._score_prefix: list[int] = []  # the judge's preamble kept: its tokens, and its KV cells saved
        self._score_state: Any = None  # (llama_state_seq_get_data of a sequence holding exactly those)
        self.keep_score_prefix = keep_score_prefix
        self._waiting: deque[tuple[EngineJob | ScoreRequest, Future[Any]]] = deque()
        self._slots: dict[int, _Slot] = {}
        self._scoring: dict[int, _ScoreSlot] = {}
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        # figures for benchmarks and logs
        self.steps = 0
        self.decoded_tokens = 0  # every token through llama_decode (prompt + sampled)
        self.sampled_tokens = 0
        self.shared_prompt_tokens = 0  # prompt tokens not decoded thanks to the shared prefix
        self.completion_tokens = 0
        self.scored_tokens = 0  # score jobs' prefill tokens (decoded)
        self.score_prefix_tokens = 0  # score jobs' tokens not decoded thanks to the kept judge preamble
        # the loop's rounds (admissions + a step) that decoded with every slot busy: a worker in
        # a long run, without the last wave's drain (benchmarks/throughput.py reports it)
        self.full_seconds = 0.0
        self.full_completion_tokens = 0
        self._accounted = time.perf_counter()  # busy time up to here is shared out (_accrue)

    # --- the caller's side (any thread) ---------------------------------------------------------
    def submit(self, job: EngineJob) -> Future[EngineResult]:
        return self._enqueue(job, job.tokens)

    def score(self, request: ScoreRequest) -> Future[ScoreReading]:
        """Serve a judge's score request beside the generation: the log-probabilities it asks for."""
        return self._enqueue(request, request.tokens)

    def _enqueue(self, job: EngineJob | ScoreRequest, tokens: Sequence[int]) -> Future[Any]:
        future: Future[Any] = Future()
        if len(tokens) == 0:
            future.set_exception(ValueError("a job needs at least one prompt token"))
            return future
        if len(tokens) >= self.n_ctx_per_seq:
            future.set_exception(ValueError(
                f"Requested tokens ({len(tokens)}) exceed context window of {self.n_ctx_per_seq}"))
            return future
        with self._cond:
            if self._closing:
                raise RuntimeError("engine closed")
            self._waiting.append((job, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="convfarm-engine", daemon=True)
                self._thread.start()
            self._cond.notify()
        return future

    def run(self, jobs: Sequence[EngineJob]) -> list[EngineResult]:
        """Submit all, wait for all (in-process use: tests, benchmarks, ``producer try``)."""
        futures = [self.submit(job) for job in jobs]
        return [f.result() for f in futures]

    @property
    def busy(self) -> int:
        with self._cond:
            return len(self._slots) + len(self._scoring) + len(self._waiting)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        for _job, future in self._waiting:
            future.set_exception(RuntimeError("engine closed"))
        self._waiting.clear()
        if self.ctx:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    # --- the decode loop (the engine's thread) -------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._waiting and not self._slots and not self._scoring:
                    self._cond.wait()
                    self._accounted = time.perf_counter()  # idle time is nobody's machine time
                if self._closing:
                    break
                began, completed = time.perf_counter(), self.completion_tokens
                admitted = self._take_waiting()
            for job, future in admitted:
                if isinstance(job, ScoreRequest):
                    seq = self._free_seq()
                    self._scoring[seq] = _ScoreSlot(seq=seq, request=job, future=future)
                    self._share_score_prefix(self._scoring[seq])
                else:
                    self._admit(job, future)
            if self._slots or self._scoring:
                full = len(self._slots) == self.n_slots
                try:
                    self._step()
                    if full:
                        self.full_seconds += time.perf_counter() - began
                        self.full_completion_tokens += self.completion_tokens - completed
                except Exception as exc:
                    log.exception("convfarm: batched decode failed; failing %d job(s)",
                                  len(self._slots) + len(self._scoring))
                    self._fail_all(exc)
        self._fail_all(RuntimeError("engine closed"))

    def _fail_all(self, exc: BaseException) -> None:
        for slot in list(self._slots.values()):
            self._release(slot)
            if not slot.future.done():
                slot.future.set_exception(exc)
        for scoring in list(self._scoring.values()):
            self._release_score(scoring)
            if not scoring.future.done():
                scoring.future.set_exception(exc)

    def _free_seq(self) -> int:
        return next(s for s in range(self.n_slots) if s not in self._slots and s not in self._scoring)

    def _take_waiting(self) -> list[tuple[EngineJob | ScoreRequest, Future[Any]]]:
        free = self.n_slots - len(self._slots) - len(self._scoring)
        taken = []
        while free > 0 and self._waiting:
            job, future = self._waiting.popleft()
            if future.set_running_or_notify_cancel():
                taken.append((job, future))
                free -= 1
        return taken

    def _admit(self, job: EngineJob, future: Future[EngineResult]) -> None:
        started = time.perf_counter()
        if job.judge.decided:  # doomed by the prompt itself: decode nothing
            job.result.take_verdict(job.judge)  # no slot taken, nothing decoded
            future.set_result(job.result)
            return
        seq = self._free_seq()
        try:
            sampler = SequenceSampler(self.model, job.params, job.grammar)
        except Exception as exc:  # noqa: BLE001 - e.g. a grammar that does not parse: this job fails
            future.set_exception(exc)
            return
        slot = _Slot(seq=seq, job=job, future=future, sampler=sampler, started=started, admitted_step=self.steps)
        self._share_prefix(slot)
        self._slots[seq] = slot

    def _share_prefix(self, slot: _Slot) -> None:
        """Start the slot's KV with the longest prompt prefix already in the cache.

        Sources: the prefix sequence, and live sequences whose prompt is decoded (a new run's
        first jobs, or another attempt at the same word). At least one prompt token is left to
        decode: its logits give the first sampled token.
        """
        tokens = slot.job.tokens
        limit = len(tokens) - 1
        best, source = min(common_prefix(tokens, self._prefix), limit), self.prefix_seq
        for other in self._slots.values():
            n = min(common_prefix(tokens, other.job.tokens), other.n_prompt_done, limit)
            if n > best:
                best, source = n, other.seq
        if best < MIN_SHARED_PREFIX:
            if self._prefix and common_prefix(tokens, self._prefix) < MIN_SHARED_PREFIX:
                # another run's prompt: free its cells now, so this prompt is laid out from cell 0
                # as the one-at-a-time path lays it out (the attention sums follow the cell order)
                llama_cpp.llama_memory_seq_rm(self.mem, self.prefix_seq, -1, -1)
                self._prefix = []
            return
        self._copy(source, slot.seq, best)
        slot.n_prompt_done = slot.n_past = best
        self.shared_prompt_tokens += best
        self._keep_prefix(tokens, source, best)

    def _keep_prefix(self, tokens: Sequence[int], source: int, shared: int) -> None:
        """Keep the part of the prompt that jobs share in the prefix sequence.

        A prefix that the new prompt only partly shares is cut to the shared part (the first
        two prompts of a run leave exactly the run's common prefix); one that it does not
        share at all (a new run) is replaced.
        """
        held = common_prefix(tokens, self._prefix)
        if held >= MIN_SHARED_PREFIX:
            if held < len(self._prefix):
                llama_cpp.llama_memory_seq_rm(self.mem, self.prefix_seq, held, -1)
                self._prefix = self._prefix[:held]
            return
        if source != self.prefix_seq:
            self._copy(source, self.prefix_seq, shared)
            self._prefix = list(tokens[:shared])

    def _copy(self, source: int, dest: int, n: int) -> None:
        """``dest`` holds exactly positions [0, n) of ``source``.

        In a unified cache the cells are only tagged with ``dest`` too. With one stream per
        sequence llama.cpp copies only whole streams: copy all, then cut the tail.
        """
        llama_cpp.llama_memory_seq_rm(self.mem, dest, -1, -1)
        if self.kv_unified:
            llama_cpp.llama_memory_seq_cp(self.mem, source, dest, 0, n)
        else:
            llama_cpp.llama_memory_seq_cp(self.mem, source, dest, -1, -1)
            llama_cpp.llama_memory_seq_rm(self.mem, dest, n, -1)

    def _step(self) -> None:
        batch = self.batch
        n = 0
        outputs: list[tuple[int, _Slot]] = []

        def add(token: int, pos: int, seq: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq
            batch.logits[n] = logits
            n += 1

        # In increasing sequence id, generating sequences first (one token each), then prompts
        # with what is left. With a KV stream per sequence llama.cpp cuts a batch into ubatches
        # of *consecutive* sequence ids taking the same number of tokens from each
        # (``llama_batch_allocr::split_equal(sequential=true)``), one graph computation each:
        # in admission order a full batch of 8 fell apart into up to 8 computations per step.
        # Sorted, and with new jobs taking the lowest free id, a step of generating sequences
        # is one computation; a prompt being decoded adds one.
        live = sorted(self._slots.values(), key=lambda s: s.seq)
        for slot in live:
            if slot.next_token is not None:
                outputs.append((n, slot))
                add(slot.next_token, slot.n_past, slot.seq, True)
                slot.n_past += 1
                slot.next_token = None
        prefills: list[_Slot | _ScoreSlot] = sorted(
            [*(s for s in live if s.prefilling), *self._scoring.values()], key=lambda s: s.seq)
        reads: list[tuple[int, _ScoreSlot, int]] = []  # (batch index, score job, token position)
        for slot in prefills:
            if n >= self.n_batch:
                break
            if isinstance(slot, _ScoreSlot):
                tokens = slot.request.tokens
                take = min(self.n_batch - n, len(tokens) - slot.n_prompt_done)
                for i in range(slot.n_prompt_done, slot.n_prompt_done + take):
                    if read := slot.reads(i):
                        reads.append((n, slot, i))
                    add(tokens[i], i, slot.seq, read)
                slot.n_prompt_done += take
                self.scored_tokens += take
                continue
            tokens = slot.job.tokens
            take = min(self.n_batch - n, len(tokens) - slot.n_prompt_done)
            for i in range(slot.n_prompt_done, slot.n_prompt_done + take):
                last = i == len(tokens) - 1
                if last:
                    outputs.append((n, slot))
                add(tokens[i], i, slot.seq, last)
            slot.n_prompt_done += take
            slot.n_past = slot.n_prompt_done
        if n == 0:
            return
        batch.n_tokens = n
        status = llama_cpp.llama_decode(self.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status} for a batch of {n} tokens in {len(self._slots)} sequences")
        self.steps += 1
        self.decoded_tokens += n
        self._read_scores(reads)
        self._accrue(live)  # the step's decode (and the admissions before it), shared by its slots
        now = time.perf_counter()
        for index, slot in outputs:
            token = slot.sampler.sample(self.ctx, index)
            self.sampled_tokens += 1
            if self._accept(slot, token):
                self._finish(slot)
            elif slot.job.time_limit is not None and now - slot.started > slot.job.time_limit:
                self._release(slot)
                slot.future.set_exception(EngineTimeout(f"soft time limit ({slot.job.time_limit:.0f}s) exceeded"))
            else:
                slot.next_token = token
        self._accrue([slot for slot in live if self._slots.get(slot.seq) is slot])

    def _accrue(self, slots: Sequence[_Slot]) -> None:
        """Share the busy time since the last share equally among ``slots`` (with none, it
        carries over to the next share): every busy second lands on exactly one job."""
        if slots:
            now = time.perf_counter()
            share = (now - self._accounted) / len(slots)
            for slot in slots:
                slot.machine_seconds += share
            self._accounted = now

    # --- score jobs -----------------------------------------------------------------------------
    def _score_prefix_limit(self, request: ScoreRequest) -> int:
        """How many leading tokens of a score job may come from the kept preamble: its ``shared``
        tokens, but none whose logits it reads, and at least two decoded (a single token decoded
        alone takes llama.cpp's one-row path, whose logits differ from a prefill's: relevance.py)."""
        limit = min(request.shared, len(request.tokens) - 2)
        if request.span_start is not None:
            limit = min(limit, max(1, request.span_start) - 1)
        if request.probes:  # a probe's position is decoded here, not taken from the kept preamble
            limit = min(limit, min(at for at, _ in request.probes))
        return limit if self.keep_score_prefix else 0

    def _share_score_prefix(self, slot: _ScoreSlot) -> None:
        """Start a score job's KV with the judge's preamble when it is kept: in a unified cache its
        cells are written back into the job's sequence from the saved state, laid out where its own
        decode would lay them; with a stream per sequence the held stream is copied."""
        limit = self._score_prefix_limit(slot.request)
        n = min(common_prefix(slot.request.tokens, self._score_prefix), limit)
        if n < MIN_SHARED_PREFIX:
            return
        if not self.kv_unified:
            self._copy(self.score_prefix_seq, slot.seq, n)
        elif llama_cpp.llama_state_seq_set_data(self.ctx, self._score_state, len(self._score_state), slot.seq) == 0:
            log.warning("convfarm: could not restore the judge's preamble; decoding it")
            llama_cpp.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
            return
        if n < len(self._score_prefix):
            llama_cpp.llama_memory_seq_rm(self.mem, slot.seq, n, -1)
        slot.n_prompt_done = n
        slot.preamble_kept = n == limit
        self.score_prefix_tokens += n

    def _keep_score_prefix(self, slot: _ScoreSlot) -> None:
        """Keep a decoded preamble that is not kept yet (the first job of a method, or another method's
        preamble: the latest one is kept). In a unified cache it is saved as a state, not held: held
        cells would sit in the way of every later sequence's layout (the attention sums follow the cell
        order). A stream per sequence is a layout of its own: there the score prefix sequence holds it
        (a saved state written back into a stream of its own gave wrong readings with llama-cpp-python
        0.3.36's llama.cpp, measured in tests/test_judge_engine.py; the cause was not looked into)."""
        limit = self._score_prefix_limit(slot.request)
        if slot.preamble_kept or limit < MIN_SHARED_PREFIX or slot.n_prompt_done < limit:
            return
        slot.preamble_kept = True
        tokens = slot.request.tokens
        if common_prefix(tokens, self._score_prefix) >= limit:
            return
        self._copy(slot.seq, self.score_prefix_seq, limit)  # exactly the preamble's positions, in a sequence of their own
        if not self.kv_unified:
            self._score_prefix = list(tokens[:limit])
            return
        size = llama_cpp.llama_state_seq_get_size(self.ctx, self.score_prefix_seq)
        state = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self.ctx, state, size, self.score_prefix_seq)
        llama_cpp.llama_memory_seq_rm(self.mem, self.score_prefix_seq, -1, -1)
        if written:
            self._score_state, self._score_prefix = state, list(tokens[:limit])

    def _read_scores(self, reads: list[tuple[int, _ScoreSlot, int]]) -> None:
        """Read the log-probabilities the score jobs asked for; a job whose prefill is done leaves."""
        for index, slot, i in reads:
            row = log_softmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, index),
                                                    shape=(self.n_vocab,)))
            tokens = slot.request.tokens
            if i == len(tokens) - 1 and slot.request.candidates:
                slot.candidates = tuple(float(row[c]) for c in slot.request.candidates)
            if (ids := slot.probe_at.get(i)) is not None:
                slot.probed[i] = tuple(float(row[c]) for c in ids)
            if slot.reads_span(i):
                slot.span.append(float(row[tokens[i + 1]]))
        for slot in self._scoring.values():
            self._keep_score_prefix(slot)
        for slot in [s for s in self._scoring.values() if s.n_prompt_done == len(s.request.tokens)]:
            self._release_score(slot)
            slot.future.set_result(ScoreReading(candidates=slot.candidates, span=tuple(slot.span),
                                                probes=tuple(slot.probed[at] for at, _ in slot.request.probes)))

    def _release_score(self, slot: _ScoreSlot) -> None:
        self._scoring.pop(slot.seq, None)
        llama_cpp.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)

    # --- one sequence's stream -----------------------------------------------------------------
    def _accept(self, slot: _Slot, token: int) -> bool:
        """Take a sampled token into the slot's stream; True when the sequence is over.

        The order of checks is ``create_completion``'s: end-of-generation, incomplete UTF-8,
        stop strings, then the streamed chunk (the judge sees it), then ``max_tokens``.
        """
        job = slot.job
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            slot.finish = "eos"
            self._flush(slot)
            return True
        slot.completion.append(token)
        self.completion_tokens += 1
        n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False)
        text = slot.decoder.decode(self._piece.raw[:max(n, 0)])
        if text == "" and slot.decoder.getstate()[0]:
            return False  # an incomplete UTF-8 character: wait for its other bytes (no max_tokens check, as Llama)
        text = slot.held + text
        slot.held = ""
        if job.stop:
            cut = min((i for i in (text.find(s) for s in job.stop) if i >= 0), default=-1)
            if cut >= 0:
                slot.finish = "stop"
                self._chunk(slot, text[:cut])
                return True
            keep = max((k for s in job.stop for k in range(min(len(s) - 1, len(text)), 0, -1)
                        if text.endswith(s[:k])), default=0)
            if keep:
                text, slot.held = text[:-keep], text[-keep:]
        self._chunk(slot, text)
        if slot.job.judge.decided and job.early_stop:
            return True
        if len(slot.completion) >= self._max_tokens(slot):
            slot.finish = "length"
            self._flush(slot)
            return True
        return False

    def _max_tokens(self, slot: _Slot) -> int:
        prompt = len(slot.job.tokens)
        wanted = slot.job.max_tokens
        if wanted <= 0 or wanted + prompt >= self.n_ctx_per_seq:  # Llama's truncation to the context
            return self.n_ctx_per_seq - prompt
        return wanted

    def _flush(self, slot: _Slot) -> None:
        if slot.held:
            text, slot.held = slot.held, ""
            self._chunk(slot, text)

    def _chunk(self, slot: _Slot, text: str) -> None:
        """A streamed chunk: the text keeps it, the judge reads it line by line."""
        slot.pieces.append(text)
        slot.job.judge.feed_text(text)

    def _finish(self, slot: _Slot) -> None:
        self._accrue([slot])  # its own sampling since the step's share
        self._release(slot)
        job = slot.job
        job.judge.end_stream(slot.finish)
        result = job.result
        result.take_verdict(job.judge)
        result.raw = "".join(slot.pieces)
        result.prompt_tokens, result.completion_tokens = len(job.tokens), len(slot.completion)
        result.seconds = time.perf_counter() - slot.started
        result.admitted_step, result.finished_step, result.slot = slot.admitted_step, self.steps, slot.seq
        result.machine_seconds = slot.machine_seconds
        slot.future.set_result(result)

    def _release(self, slot: _Slot) -> None:
        """Free the slot now: its cells go (the prefix's stay: they are tagged with the prefix id too)."""
        self._slots.pop(slot.seq, None)
        if not slot.prefilling and len(self._prefix) < MIN_SHARED_PREFIX:
            # nothing kept yet (a lone sequence, N=1): keep this prompt; the next one cuts it to what they share
            self._copy(slot.seq, self.prefix_seq, len(slot.job.tokens))
            self._prefix = list(slot.job.tokens)
        llama_cpp.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
        slot.sampler.close()


def log_softmax(row: Any) -> Any:
    """Log-probabilities from a row of logits, in float64 (as :func:`convfarm.judge.read_with_llama` reads them)."""
    row = np.asarray(row, dtype=np.float64)
    top = row.max()
    return row - top - math.log(float(np.exp(row - top).sum()))
