"""The resident model and the generation of conversations.

:class:`ResidentModel` holds one llama.cpp model for the life of a worker process.
:meth:`ResidentModel.generate` takes a *list* of :class:`GenerationRequest` and yields an
outcome per request: today it decodes them one after another; the batched engine (several
sequences in one ``llama_decode``) plugs in behind the same signature, so neither the task
nor the collector assumes "one task = one sequence = one blocking call".
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from convfarm.config import RunConfig
from convfarm.engine.request import GenerationOutcome, GenerationRequest, generation_params
from convfarm.judging import prompt_setup, rule_context
from convfarm.messages import ModelIdentity
from convfarm.model_files import model_identity, resolve_model
from convfarm.prompt import PromptSetup
from convfarm.rules import TranscriptJudge

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

    def __init__(self, ref: str, *, n_ctx: int, n_gpu_layers: int, n_threads: int | None) -> None:
        from llama_cpp import Llama  # imported here: never in a parent process before fork

        self.ref = ref
        self.path: Path = resolve_model(ref)
        self.settings = (n_ctx, n_gpu_layers, n_threads)
        started = time.perf_counter()
        threads = n_threads or default_threads()
        self.llama = Llama(
            model_path=str(self.path),
            n_ctx=n_ctx,
            n_gpu_layers=n_gpu_layers,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.load_seconds = time.perf_counter() - started
        self._identity: ModelIdentity | None = None
        ResidentModel.loads += 1
        log.info("convfarm: loaded model %s (%s) in %.2fs [load #%d in pid %d]",
                 ref, self.path.name, self.load_seconds, ResidentModel.loads, os.getpid())

    @property
    def identity(self) -> ModelIdentity:
        if self._identity is None:  # hashing a multi-GB file once, not per task
            self._identity = model_identity(self.ref, self.path)
        return self._identity

    def close(self) -> None:
        self.llama.close()

    def generate(self, requests: Sequence[GenerationRequest], *, early_stop: bool = True) -> Iterator[GenerationOutcome]:
        """One outcome per request. ``early_stop=False`` decodes to EOS/max_tokens anyway (to measure the saving)."""
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

    def _stream(self, request: GenerationRequest, setup: PromptSetup) -> tuple[Iterator[dict[str, Any]], int]:
        config = request.config
        sampling: dict[str, Any] = {**generation_params(config), "seed": request.seed, "stream": True}
        del sampling["mode"]
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
        if judge.decided:  # doomed by the prompt itself: decode nothing
            return GenerationOutcome(request=request, turns=list(judge.turns), reason=judge.reason, detail=judge.detail,
                                     ended_by=judge.ended_by, stopped_at=judge.stopped_at,
                                     seconds=time.perf_counter() - started)
        stream, prompt_tokens = self._stream(request, setup)
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
        )
