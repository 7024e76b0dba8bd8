"""What the engine is asked for and what it gives back: one result shape from the engine to the record.

The engine fills an :class:`EngineResult` (the transcript, the verdict, the counts); the
resident model hands it a :class:`GenerationOutcome` to fill, which is the same object with the
request, the structure and the judge's scores beside it, so nothing is copied on the way: the
worker turns that one object into a ``ConversationRecord`` (``workers/tasks.py`` ``build_record``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from convfarm.config import RunConfig
from convfarm.messages import JudgeIdentity, Turn
from convfarm.rules import TranscriptJudge


def generation_params(config: RunConfig) -> dict[str, Any]:
    """The sampling settings of a run: recorded with every record, and what the engine samples with."""
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
class EngineResult:
    """One generated conversation as the engine leaves it: the judge's transcript and verdict, and the counts."""

    raw: str = ""  # the completion as the model wrote it
    turns: list[Turn] = field(default_factory=list)  # the prompt's opening turns, then the generated ones
    reason: str | None = None
    detail: str | None = None  # why, in words (which line, which pattern)
    stopped_at: Turn | None = None  # the turn the judge stopped at (not part of ``turns``)
    ended_by: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # latency: from the request's start to its end (shared with a batch)
    # this job's share of the engine's busy time (docs/design.md, "Messages and the record"):
    # summed over jobs it is the time the engine worked, where ``seconds`` (latency) counts a
    # batch's time once per job in it
    machine_seconds: float = 0.0
    # the engine's decode steps at admission and at the end: tests and benchmarks see the batching
    admitted_step: int = 0
    finished_step: int = 0
    slot: int = -1

    def take_verdict(self, judge: TranscriptJudge) -> None:
        """Copy the streaming judge's transcript and verdict (a decoded stream, or a prompt that doomed it)."""
        self.turns = list(judge.turns)
        self.reason, self.detail = judge.reason, judge.detail
        self.stopped_at, self.ended_by = judge.stopped_at, judge.ended_by


@dataclass(kw_only=True)
class GenerationOutcome(EngineResult):
    """An :class:`EngineResult` with what the worker adds: the request, the structure, the judge's scores."""

    request: GenerationRequest
    structure: str = "free"  # "grammar" when decoded under the transcript's grammar
    scores: dict[str, float] = field(default_factory=dict)  # by name ("relevance"), in [0, 1]
    judge: JudgeIdentity | None = None  # who gave the scores
    judge_seconds: float = 0.0  # the scoring prefill, apart from the generation's ``seconds``
