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
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producer.config import RunConfig
from producer.messages import ModelIdentity, Turn
from workers.model_files import model_identity, resolve_model
from workers.rules import Decision, RuleContext, TranscriptJudge

log = logging.getLogger(__name__)

CHAT_INSTRUCTION = (
    "Write the conversation as a transcript: one line per turn, each line starting with the "
    "speaker's name in capitals and a colon, like '{first}: ...' and '{second}: ...'. "
    "Write nothing else."
)


def rule_context(config: RunConfig, word: str) -> RuleContext:
    return RuleContext(
        word=word,
        exclude=config.exclude_regex,
        speakers=tuple(config.speakers) if config.speakers else None,
        min_turns=config.min_turns,
        max_turns=config.max_turns,
        max_line_chars=config.max_line_chars,
    )


def generation_params(config: RunConfig) -> dict[str, Any]:
    return {
        "mode": config.mode,
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "top_k": config.top_k,
        "repeat_penalty": config.repeat_penalty,
    }


@dataclass(frozen=True)
class GenerationRequest:
    config: RunConfig
    word: str
    seed: int


@dataclass
class GenerationOutcome:
    request: GenerationRequest
    raw: str = ""
    turns: list[Turn] = field(default_factory=list)
    reason: str | None = None
    ended_by: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


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

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationOutcome]:
        for request in requests:
            yield self._generate_one(request)

    def _stream(self, request: GenerationRequest) -> tuple[Iterator[dict[str, Any]], str, str | None]:
        config = request.config
        sampling = {
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "top_k": config.top_k,
            "repeat_penalty": config.repeat_penalty,
            "seed": request.seed,
            "stream": True,
        }
        prompt = config.prompt_for(request.word)
        if config.mode == "chat":
            first, second = config.speakers or (config.opening_speaker or "STUDENT", "TEACHER")
            messages = [{"role": "user", "content": prompt.rstrip().removesuffix(f"{first}:").rstrip()
                         + "\n\n" + CHAT_INSTRUCTION.format(first=first, second=second)}]
            return self.llama.create_chat_completion(messages=messages, **sampling), prompt, None
        return self.llama.create_completion(prompt, **sampling), prompt, config.opening_speaker

    def _generate_one(self, request: GenerationRequest) -> GenerationOutcome:
        started = time.perf_counter()
        stream, prompt, opening = self._stream(request)
        judge = TranscriptJudge(rule_context(request.config, request.word), opening_speaker=opening)
        pieces: list[str] = []
        line = ""
        tokens = 0
        finish: str | None = None
        stopped = False
        for chunk in stream:
            choice = chunk["choices"][0]
            text = choice.get("text") if "text" in choice else choice.get("delta", {}).get("content")
            finish = choice.get("finish_reason") or finish
            if not text:
                continue
            tokens += 1
            pieces.append(text)
            line += text
            while "\n" in line:
                complete, line = line.split("\n", 1)
                if judge.feed_line(complete) is not Decision.CONTINUE:
                    stopped = True
                    break
            if stopped or judge.feed_partial(line) is not Decision.CONTINUE:
                stopped = True
                break  # leaving the generator stops decoding at once: no tokens wasted
        if hasattr(stream, "close"):
            stream.close()
        if not stopped:
            judge.finish("max_tokens" if finish == "length" else "eos", trailing=line)
        return GenerationOutcome(
            request=request,
            raw="".join(pieces),
            turns=list(judge.turns),
            reason=judge.reason,
            ended_by=judge.ended_by,
            prompt_tokens=len(self.llama.tokenize(prompt.encode(), add_bos=True)),
            completion_tokens=tokens,
            seconds=time.perf_counter() - started,
        )


_resident: ResidentModel | None = None
_resident_lock = threading.Lock()


def resident_model(config: RunConfig) -> ResidentModel:
    """The process's model, loaded on first use and kept; a task for another model swaps it."""
    global _resident
    with _resident_lock:
        wanted = (config.n_ctx, config.n_gpu_layers, config.n_threads)
        if _resident is not None and (_resident.ref != config.model or _resident.settings != wanted):
            log.warning("convfarm: switching model %s -> %s", _resident.ref, config.model)
            _resident.close()
            _resident = None
        if _resident is None:
            _resident = ResidentModel(config.model, n_ctx=config.n_ctx,
                                      n_gpu_layers=config.n_gpu_layers, n_threads=config.n_threads)
        return _resident
