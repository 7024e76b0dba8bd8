"""What the engine is asked for and what it gives back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from convfarm.config import RunConfig
from convfarm.messages import Turn


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
class GenerationOutcome:
    request: GenerationRequest
    raw: str = ""
    turns: list[Turn] = field(default_factory=list)  # the prompt's opening turns, then the generated ones
    reason: str | None = None
    detail: str | None = None  # why, in words (which line, which pattern)
    stopped_at: Turn | None = None  # the turn the judge stopped at (not part of ``turns``)
    ended_by: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # latency: from the request's start to its end (shared with a batch)
    # its share of the engine's busy time (the batched engine); None: decoded alone, = seconds
    machine_seconds: float | None = None
    structure: str = "free"  # "grammar" when decoded under the transcript's grammar
