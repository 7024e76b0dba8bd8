"""The resident model and the generation of conversations.

:class:`ResidentModel` holds one llama.cpp model for the life of a worker process.
:meth:`ResidentModel.generate` takes a *list* of :class:`GenerationRequest` and yields an
outcome per request; it prepares each request (prompt tokens, sampling, the streaming judge)
and hands it to the batched engine (:mod:`convfarm.engine.batched`: several sequences in one
``llama_decode``), which task threads of one worker share. Right after a conversation ends
the same engine scores it with the relevance judge (docs/design.md "Relevance judge"): no
second model, no extra hop. The engine alone (N = 1) is the baseline the batches are measured
and checked against.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from convfarm.config import RunConfig
from convfarm.engine.backends import load_backend_modules
from convfarm.engine.cpu_buffers import model_defaults, use_extra_buffers
from convfarm.engine.grammar import structure_for
from convfarm.engine.request import GenerationOutcome, GenerationRequest
from convfarm.judge import JudgeMethod, method_for, relevance
from convfarm.judge.scoring import RELEVANCE, judged_by_generator, llama_tokenizer, off_topic
from convfarm.judging import prompt_setup, rule_context
from convfarm.messages import JudgeIdentity, ModelIdentity, Turn
from convfarm.model_files import model_identity, resolve_model
from convfarm.prompt import PromptSetup
from convfarm.rules import OFF_TOPIC, TranscriptJudge
from convfarm.settings import default_threads, get_settings

log = logging.getLogger(__name__)

CHAT_INSTRUCTION = (
    "Write the conversation as a transcript: one line per turn, each line starting with the "
    "speaker's name in capitals and a colon, like '{first}: ...' and '{second}: ...'. "
    "Write nothing else."
)


def chat_messages(config: RunConfig, setup: PromptSetup) -> list[dict[str, str]]:
    """Chat mode's request: the prompt's preamble and the transcript instruction as the user's turn.

    With ``chat_prefill`` (the default) the conversation lines of the prompt are not in the
    request: they start the assistant's answer (see :meth:`ResidentModel._chat_prompt`).
    """
    speakers = setup.speakers or ("STUDENT", "TEACHER")
    first, second = speakers[0], speakers[1] if len(speakers) > 1 else "TEACHER"
    instruction = (config.chat_instruction or CHAT_INSTRUCTION).replace("{first}", first).replace("{second}", second)
    parts = [setup.preamble, instruction]
    if not config.chat_prefill and setup.transcript_lines:
        parts.append("Begin the transcript with:\n" + "\n".join(setup.transcript_lines))
    return [{"role": "user", "content": "\n\n".join(p for p in parts if p)}]


class ResidentModel:
    """One loaded llama.cpp model. Not thread-safe (nor is ``Llama``): one per process."""

    loads = 0  # how many models this process has loaded (the worker proves "once")

    def __init__(self, ref: str, *, n_ctx: int, n_gpu_layers: int, n_threads: int | None,
                 batch_size: int = 1, extra_buffers: bool | None = None, kv_layout: str | None = None,
                 logits_all: bool = False) -> None:
        """``extra_buffers``: llama.cpp's extra CPU weight buffers (None: ``CONVFARM_CPU_EXTRA_BUFFERS``,
        off on AMX CPUs — see :mod:`convfarm.engine.cpu_buffers`); ``kv_layout``: the batched
        engine's KV cache, "unified" or "per-sequence" (None: ``CONVFARM_KV_LAYOUT``);
        ``logits_all``: ``self.llama`` keeps every position's logits, for
        :func:`convfarm.judge.read_with_llama` (the one-at-a-time judge)."""
        from llama_cpp import Llama  # imported here: never in a parent process before fork

        self.ref = ref
        self.batch_size = batch_size
        self.kv_layout = kv_layout or get_settings().kv_layout
        self._engine: Any = None  # the BatchedEngine, created on first use
        self._engine_lock = threading.Lock()
        self.path: Path = resolve_model(ref)
        self.settings = (n_ctx, n_gpu_layers, n_threads)
        started = time.perf_counter()
        threads = n_threads or default_threads()
        if extra_buffers is None:
            extra_buffers = use_extra_buffers(get_settings().cpu_extra_buffers)
        self.extra_buffers = extra_buffers
        load_backend_modules()  # a GGML_BACKEND_DL build (the images): its CPU variants and GPU modules
        with model_defaults(use_extra_bufts=extra_buffers):
            self.llama = Llama(model_path=str(self.path), n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_threads=threads,
                               n_threads_batch=threads, logits_all=logits_all, verbose=False)
        self.load_seconds = time.perf_counter() - started
        self._identity: ModelIdentity | None = None
        ResidentModel.loads += 1
        log.info("convfarm: loaded model %s (%s) in %.2fs, %d CPU thread(s) [load #%d in pid %d]%s",
                 ref, self.path.name, self.load_seconds, threads, ResidentModel.loads, os.getpid(),
                 "" if extra_buffers else " [CPU extra buffers off]")

    @property
    def identity(self) -> ModelIdentity:
        if self._identity is None:  # hashing a multi-GB file once, not per task
            self._identity = model_identity(self.ref, self.path)
        return self._identity

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        self.llama.close()

    # --- batched engine ----------------------------------------------------------------
    @property
    def engine(self) -> Any:
        """The process's :class:`~convfarm.engine.batched.BatchedEngine`: ``batch_size`` slots on this model."""
        with self._engine_lock:  # task threads race for the first use
            if self._engine is None:
                from convfarm.engine.batched import BatchedEngine

                n_ctx, _, n_threads = self.settings
                unified = self.kv_layout == "unified"
                self._engine = BatchedEngine(self.llama._model.model, n_slots=self.batch_size, n_ctx_per_seq=n_ctx,
                                             n_threads=n_threads or default_threads(), kv_unified=unified)
            return self._engine

    def generate(self, requests: Sequence[GenerationRequest], *, early_stop: bool = True,
                 time_limit: float | None = None, score: bool = True) -> Iterator[GenerationOutcome]:
        """One outcome per request, in order, decoded together by the batched engine.

        Thread-safe: task threads of one worker call it at the same time and their requests
        share the engine's batch. ``early_stop=False`` decodes to EOS/max_tokens anyway (to
        measure the saving); ``time_limit`` (seconds) fails a request that runs longer.
        ``score``: accepted conversations are scored by the relevance judge on this model
        when their config does not name another judge model (:meth:`judge_outcome`).
        """
        from convfarm.engine.batched import EngineJob
        from convfarm.engine.sampler import SamplingParams

        pending: list[tuple[GenerationOutcome, Any]] = []
        for request in requests:
            config = request.config
            setup = prompt_setup(config, request.word)
            judge = self._judge_for(request, setup)
            structure = structure_for(config, request.word, setup)  # the grammar, or free
            outcome = GenerationOutcome(request=request, structure=structure.structure)
            if judge.decided:  # doomed by the prompt itself: decode (and tokenise) nothing
                outcome.take_verdict(judge)
                pending.append((outcome, None))
                continue
            tokens, stop = self._prompt_tokens(request, setup)
            params = SamplingParams.for_config(config, seed=request.seed)
            job = EngineJob(tokens=tokens, max_tokens=config.max_tokens, params=params, judge=judge,
                            grammar=structure.gbnf, stop=stop,
                            early_stop=early_stop, time_limit=time_limit, result=outcome)
            pending.append((outcome, self.engine.submit(job)))
        for outcome, future in pending:
            if future is not None:
                future.result()  # the engine filled ``outcome`` in
            config = outcome.request.config
            # the judge runs when the config asks for it: on the bundled model it costs more than the
            # generation and separates on- from off-topic only weakly (docs/judge.md)
            if score and outcome.reason is None and config.judge is not None and judged_by_generator(config):
                self.judge_outcome(outcome)
            yield outcome

    def judge_outcome(self, outcome: GenerationOutcome, method: JudgeMethod | None = None) -> None:
        """Score a finished conversation with the relevance judge, through the engine, and apply the bar.

        Only accepted conversations are scored (a rule's rejection is final: its score would
        change nothing, and the prefill is not free). Under ``judge.min_relevance`` the
        conversation is rejected as ``off_topic``, its score kept.
        """
        config = outcome.request.config
        method = method or method_for(config)
        started = time.perf_counter()
        try:
            outcome.scores[RELEVANCE] = self.relevance(method, topic=config.topic, word=outcome.request.word,
                                                       turns=outcome.turns)
            outcome.judge = JudgeIdentity(model=self.identity, method=method.name, version=method.version)
        except ValueError as exc:  # a transcript plus the judge's question longer than the context
            log.warning("convfarm: could not score %r: %s", outcome.request.word, exc)
        outcome.judge_seconds = time.perf_counter() - started
        if outcome.reason is None and (why := off_topic(config, outcome.scores)):
            outcome.reason, outcome.detail = OFF_TOPIC, why

    def relevance(self, method: JudgeMethod, *, topic: str | None, word: str, turns: Sequence[Turn]) -> float:
        """The method's score for one conversation, its requests served by the engine beside any generation."""
        tokenize, bos = llama_tokenizer(self.llama)
        requests = method.requests(topic=topic, word=word, turns=turns, tokenize=tokenize, bos=bos)
        futures = [self.engine.score(request) for request in requests]
        return relevance(method, [future.result() for future in futures])

    def _prompt_tokens(self, request: GenerationRequest, setup: PromptSetup) -> tuple[list[int], list[str]]:
        """The tokens ``create_completion`` would decode for this request, and its stop strings."""
        if request.config.mode == "chat":
            return self._chat_prompt(request.config, setup)
        # create_completion(str): BOS (CLS) when the model adds one, the text with special tokens
        # parsed, EOS (SEP) when the model adds one (llama-cpp-python 0.3.x)
        model = self.llama._model
        first = model.token_cls() if model.token_cls() != -1 else self.llama.token_bos()
        head = [first] if model.add_bos_token() and first != -1 else []
        sep = model.token_sep()
        tail = [sep if sep != -1 else self.llama.token_eos()] if model.add_eos_token() or sep != -1 else []
        prompt = request.config.prompt_for(request.word)
        return head + self.llama.tokenize(prompt.encode(), add_bos=False, special=True) + tail, []

    def _chat_prompt(self, config: RunConfig, setup: PromptSetup) -> tuple[list[int], list[str]]:
        """The request rendered with the model's own chat template, plus the answer's first lines.

        We render the template ourselves (llama-cpp-python's ``Jinja2ChatFormatter``, what
        ``create_chat_completion`` uses) so the assistant's answer can be *started* with the
        prompt's transcript lines ("STUDENT: What does ...", "TEACHER:"): the model continues a
        transcript instead of answering in prose, and the same streaming judge applies.
        """
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"model {self.ref} has no chat template: use \"mode\": \"completion\"")
        model = self.llama._model
        eos, bos = self.llama.token_eos(), self.llama.token_bos()
        formatter = Jinja2ChatFormatter(template=template, eos_token=model.token_get_text(eos) if eos != -1 else "",
                                        bos_token=model.token_get_text(bos) if bos != -1 else "")
        rendered = formatter(messages=chat_messages(config, setup))
        tokens = self.llama.tokenize(rendered.prompt.encode(), add_bos=not rendered.added_special, special=True)
        if config.chat_prefill and setup.transcript_lines:
            tokens += self.llama.tokenize("\n".join(setup.transcript_lines).encode(), add_bos=False, special=False)
        stop = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        return tokens, stop

    def _judge_for(self, request: GenerationRequest, setup: PromptSetup) -> TranscriptJudge:
        ctx = rule_context(request.config, request.word, setup)
        if request.config.mode == "chat" and not request.config.chat_prefill:
            return TranscriptJudge(ctx)  # the model writes every line itself, labels included
        opening = setup.opening
        return TranscriptJudge(ctx, opening_speaker=opening.speaker if opening else None,
                               prompt_turns=setup.turns, opening_text=opening.text if opening else "")
