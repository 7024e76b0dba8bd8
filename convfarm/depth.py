"""Depth and cost of a run's conversations: what a user really pays per accepted conversation.

The collector adds, per committed record, the completion tokens (``completion_tokens``), the
generation time in milliseconds (``generation_ms``) and, for accepted
conversations, their turns (``accepted_turns``) to the run's counts hash. Rejected attempts
are included in the tokens and seconds on purpose: a prompt that is accepted one time in
ten costs ten attempts per conversation, however short each one is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from convfarm.runstate import RunCounts


def depth_and_cost(counts: RunCounts) -> dict[str, Any]:
    """``mean_turns`` per accepted conversation; tokens and generation seconds per accepted one (None before any)."""
    accepted = counts.accepted
    tokens = counts.completion_tokens
    seconds = counts.generation_ms / 1000
    return {
        "mean_turns": round(counts.accepted_turns / accepted, 2) if accepted else None,
        "tokens_per_accepted": round(tokens / accepted, 1) if accepted else None,
        "generation_seconds_per_accepted": round(seconds / accepted, 3) if accepted else None,
        "completion_tokens": tokens,
        "generation_seconds": round(seconds, 3),
    }


def describe(cost: Mapping[str, Any]) -> str:
    """One line for tables: ``3.1 turns · 162 tokens · 1.52 s per accepted conversation``."""
    if cost.get("mean_turns") is None:
        return "no accepted conversation yet"
    return (f"{cost['mean_turns']:.1f} turns · {cost['tokens_per_accepted']:.0f} tokens · "
            f"{cost['generation_seconds_per_accepted']:.2f} s per accepted conversation (rejected attempts included)")
