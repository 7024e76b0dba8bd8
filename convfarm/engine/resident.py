"""The resident model and the generation of conversations.

:class:`ResidentModel` holds one llama.cpp model for the life of a worker process.
:meth:`ResidentModel.generate` takes a *list* of :class:`GenerationRequest` and yields an
outcome per request; it prepares each request (prompt tokens, sampling, the streaming judge)
and hands it to the batched engine (:mod:`convfarm.engine.batched`: several sequences in one
``llama_decode``), which task threads of one worker share. The one-at-a-time path
(``Llama.create_completion``) stays as :meth:`ResidentModel.generate_one_at_a_time`: the
baseline the engine is measured and checked against.
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
from convfarm.engine.cpu_buffers import model_defaults, use_extra_buffers
from convfarm.engine.grammar import StructureChoice, structure_for
from convfarm.engine.request import GenerationOutcome, GenerationRequest, generation_params
from convfarm.judging import prompt_setup, rule_context
from convfarm.messages import ModelIdentity
from convfarm.model_files import model_identity, resolve_model
from convfarm.prompt import PromptSetup
from convfarm.rules import TranscriptJudge
from convfarm.settings import get_settings

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


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class ResidentModel:
    """One loaded llama.cpp model. Not thread-safe (nor is ``Llama``): one per process."""

    loads = 0  # how many models this process has loaded (the worker proves "once")

    def __init__(self, ref: str, *, n_ctx: int, n_gpu_layers: int, n_threads: int | None,
                 batch_size: int = 1, extra_buffers: bool | None = None, kv_layout: str | None = None) -> None:
        """``extra_buffers``: llama.cpp's extra CPU weight buffers (None: ``CONVFARM_CPU_EXTRA_BUFFERS``,
        off on AMX CPUs — see :mod:`convfarm.engine.cpu_buffers`); ``kv_layout``: the batched
        engine's KV cache, "unified" or "per-sequence" (None: ``CONVFARM_KV_LAYOUT``)."""
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
        with model_defaults(use_extra_bufts=extra_buffers):
            self.llama = Llama(model_path=str(self.path), n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_threads=threads,
                               n_threads_batch=threads, verbose=False)
        self.load_seconds = time.perf_counter() - started
        self._identity: ModelIdentity | None = None
        ResidentModel.loads += 1
        log.info("convfarm: loaded model %s (%s) in %.2fs [load #%d in pid %d]%s",
                 ref, self.path.name, self.load_seconds, ResidentModel.loads, os.getpid(),
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
                 time_limit: float | None = None) -> Iterator[GenerationOutcome]:
        """One outcome per request, in order, decoded together by the batched engine.

        Thread-safe: task threads of one worker call it at the same time and their requests
        share the engine's batch. ``early_stop=False`` decodes to EOS/max_tokens anyway (to
        measure the saving); ``time_limit`` (seconds) fails a request that runs longer.
        """
        from convfarm.engine.batched import EngineJob
        from convfarm.engine.sampler import SamplingParams

        pending: list[tuple[GenerationRequest, Any]] = []
        for request in requests:
            config = request.config
            setup = prompt_setup(config, request.word)
            judge = self._judge_for(request, setup)
            structure = structure_for(config, request.word, setup)  # the grammar, or free
            if judge.decided:  # doomed by the prompt itself: decode (and tokenise) nothing
                pending.append((request, GenerationOutcome(
                    request=request, turns=list(judge.turns), reason=judge.reason, detail=judge.detail,
                    ended_by=judge.ended_by, stopped_at=judge.stopped_at, structure=structure.structure)))
                continue
            tokens, stop = self._prompt_tokens(request, setup)
            params = SamplingParams.for_config(config, seed=request.seed)
            job = EngineJob(tokens=tokens, max_tokens=config.max_tokens, params=params, judge=judge,
                            grammar=structure.gbnf, stop=stop, early_stop=early_stop,
                            time_limit=time_limit)
            pending.append((request, (self.engine.submit(job), structure.structure)))
        for request, waiting in pending:
            if isinstance(waiting, GenerationOutcome):
                yield waiting
                continue
            future, structure_used = waiting
            result = future.result()
            yield GenerationOutcome(request=request, raw=result.raw, turns=result.turns, reason=result.reason,
                                    detail=result.detail, stopped_at=result.stopped_at, ended_by=result.ended_by,
                                    prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                                    seconds=result.seconds, machine_seconds=result.machine_seconds,
                                    structure=structure_used)

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
    # --- end batched engine -----------------------------------------------------------------------

    def generate_one_at_a_time(self, requests: Sequence[GenerationRequest], *,
                               early_stop: bool = True) -> Iterator[GenerationOutcome]:
        """The one-at-a-time path (``Llama.create_completion``): the baseline the engine is measured and checked against."""
        for request in requests:
            yield self._generate_one(request, early_stop=early_stop)

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

    def _stream(self, request: GenerationRequest, setup: PromptSetup,
                structure: StructureChoice | None = None) -> tuple[Iterator[dict[str, Any]], int]:
        config = request.config
        sampling: dict[str, Any] = {**generation_params(config), "seed": request.seed, "stream": True}
        del sampling["mode"]
        if structure is not None and structure.gbnf:
            # reference only: the high-level API filters the whole vocabulary with the
            # grammar at every token (about half the tok/s); the engine samples first instead
            from llama_cpp import LlamaGrammar

            sampling["grammar"] = LlamaGrammar.from_string(structure.gbnf, verbose=False)
        if config.mode == "chat":
            tokens, stop = self._chat_prompt(config, setup)
            return self.llama.create_completion(tokens, stop=stop, **sampling), len(tokens)
        prompt = config.prompt_for(request.word)
        prompt_tokens = len(self.llama.tokenize(prompt.encode(), add_bos=True))
        return self.llama.create_completion(prompt, **sampling), prompt_tokens

    def _judge_for(self, request: GenerationRequest, setup: PromptSetup) -> TranscriptJudge:
        ctx = rule_context(request.config, request.word, setup)
        if request.config.mode == "chat" and not request.config.chat_prefill:
            return TranscriptJudge(ctx)  # the model writes every line itself, labels included
        opening = setup.opening
        return TranscriptJudge(ctx, opening_speaker=opening.speaker if opening else None,
                               prompt_turns=setup.turns, opening_text=opening.text if opening else "")

    def _generate_one(self, request: GenerationRequest, *, early_stop: bool = True) -> GenerationOutcome:
        started = time.perf_counter()
        setup = prompt_setup(request.config, request.word)
        judge = self._judge_for(request, setup)
        structure = structure_for(request.config, request.word, setup)
        if judge.decided:  # doomed by the prompt itself: decode nothing
            return GenerationOutcome(request=request, turns=list(judge.turns), reason=judge.reason, detail=judge.detail,
                                     ended_by=judge.ended_by, stopped_at=judge.stopped_at,
                                     seconds=time.perf_counter() - started, structure=structure.structure)
        stream, prompt_tokens = self._stream(request, setup, structure)
        pieces: list[str] = []
        line = ""
        tokens = 0
        finish: str | None = None
        try:
            for chunk in stream:
                choice = chunk["choices"][0]
                finish = choice.get("finish_reason") or finish
                if choice.get("finish_reason") is None:
                    tokens += 1  # a chunk per sampled token (empty while a UTF-8 character is incomplete); the last is a marker
                text = choice.get("text") or ""
                pieces.append(text)
                if judge.decided:
                    continue  # early_stop=False: keep decoding, judge no more
                line += text
                while "\n" in line and not judge.decided:
                    complete, line = line.split("\n", 1)
                    judge.feed_line(complete)
                if not judge.decided:
                    judge.feed_partial(line)
                if judge.decided and early_stop:
                    break  # leaving the generator stops decoding at once: no tokens wasted
        finally:
            if hasattr(stream, "close"):
                stream.close()
        if not judge.decided:
            judge.finish("max_tokens" if finish == "length" else "eos", trailing=line)
        return GenerationOutcome(
            request=request,
            raw="".join(pieces),
            turns=list(judge.turns),
            reason=judge.reason,
            detail=judge.detail,
            stopped_at=judge.stopped_at,
            ended_by=judge.ended_by,
            prompt_tokens=prompt_tokens,
            completion_tokens=tokens,
            seconds=time.perf_counter() - started,
            structure=structure.structure,
        )
