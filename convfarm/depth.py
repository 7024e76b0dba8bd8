"""Depth and cost of a run's conversations: what a user really pays per accepted conversation.

The collector adds, per committed record, the completion tokens (``completion_tokens``), the
machine time in milliseconds (``machine_ms``: each record's share of its worker's busy time,
so the sum adds up to the time the workers worked however many conversations a batch held),
the latency (``generation_ms``: a conversation's own wall time, which under batching counts a
batch's time once per conversation in it) and, for accepted conversations, their turns
(``accepted_turns``) to the run's counts hash. Rejected attempts are included in the tokens and
seconds on purpose: a prompt that is accepted one time in ten costs ten attempts per
conversation, however short each one is. See docs/design.md, "Messages and the record".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from convfarm.runstate import RunCounts


def depth_and_cost(counts: RunCounts) -> dict[str, Any]:
    """``mean_turns`` per accepted conversation; tokens and machine seconds per accepted one (None before any)."""
    accepted = counts.accepted
    tokens = counts.completion_tokens
    results = counts.accepted + counts.rejected
    # a run counted before machine_ms existed: its latency is the best figure there is
    machine = (counts.machine_ms or counts.generation_ms) / 1000
    return {
        "mean_turns": round(counts.accepted_turns / accepted, 2) if accepted else None,
        "tokens_per_accepted": round(tokens / accepted, 1) if accepted else None,
        "machine_seconds_per_accepted": round(machine / accepted, 3) if accepted else None,
        "completion_tokens": tokens,
        "machine_seconds": round(machine, 3),
        "tokens_per_machine_second": round(tokens / machine, 1) if machine else None,
        "mean_latency_seconds": round(counts.generation_ms / 1000 / results, 3) if results else None,
    }


def describe(cost: Mapping[str, Any]) -> str:
    """One line for tables: ``3.1 turns · 162 tokens · 1.52 s machine time per accepted conversation``."""
    if cost.get("mean_turns") is None:
        return "no accepted conversation yet"
    return (f"{cost['mean_turns']:.1f} turns · {cost['tokens_per_accepted']:.0f} tokens · "
            f"{cost['machine_seconds_per_accepted']:.2f} s machine time per accepted conversation "
            f"(rejected attempts included)")
