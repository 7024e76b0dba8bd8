"""A run's relevance scores as counters: their distribution and the on-topic yield.

The collector adds, per committed record that carries a relevance score, one to its tenth of
[0, 1] (``score:bin:0`` .. ``score:bin:9``), its score in thousandths (``score:sum_milli``),
one to ``score:scored`` and, when the record is accepted with a score at or above the on-topic
bar, one to ``score:on_topic`` — in the run's counts hash, with the rest of a commit's counters,
so a redelivered record is counted once. Status, the end-of-run summary and the manifest read
them back through :func:`score_summary` (docs/design.md "Relevance judge").

The **on-topic yield** is accepted-and-on-topic conversations per attempt (every committed
record, rejected ones included): what a prompt really delivers of what a user wants.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from convfarm.config import RunConfig
from convfarm.judge.scoring import RELEVANCE
from convfarm.messages import ConversationRecord
from convfarm.runstate import RunCounts

BINS = 10
PREFIX = "score:"
# without judge.min_relevance, "on topic" means a score of at least this (the yes/no methods' even odds)
DEFAULT_ON_TOPIC = 0.5


def on_topic_bar(config: RunConfig) -> float:
    bar = config.judge.min_relevance if config.judge else None
    return DEFAULT_ON_TOPIC if bar is None else bar


def score_bin(score: float) -> int:
    return min(BINS - 1, max(0, int(score * BINS)))


def score_counters(records: Iterable[tuple[ConversationRecord, bool]], bar: float) -> dict[str, int]:
    """What ``(record, accepted)`` pairs add to the run's counts hash (keys without the run)."""
    counters: dict[str, int] = {}

    def add(name: str, amount: int = 1) -> None:
        counters[PREFIX + name] = counters.get(PREFIX + name, 0) + amount

    for record, accepted in records:
        score = record.scores.get(RELEVANCE)
        if score is None:
            continue
        add("scored")
        add(f"bin:{score_bin(score)}")
        add("sum_milli", round(score * 1000))
        if accepted and score >= bar:
            add("on_topic")
    return counters


def score_summary(raw: Mapping[str, int], attempts: int, bar: float) -> dict[str, Any]:
    """The distribution and the on-topic yield from the counters (``raw``: the ``score:*`` keys, prefix removed)."""
    scored = raw.get("scored", 0)
    on_topic = raw.get("on_topic", 0)
    return {
        "scored": scored,
        "mean": round(raw.get("sum_milli", 0) / 1000 / scored, 3) if scored else None,
        # how many scores fell in each tenth of [0, 1]: [0, 0.1), [0.1, 0.2), ... [0.9, 1]
        "histogram": [raw.get(f"bin:{i}", 0) for i in range(BINS)],
        "on_topic_bar": bar,
        "on_topic": on_topic,
        "attempts": attempts,
        "on_topic_yield": round(on_topic / attempts, 3) if attempts else None,
    }


_BARS = " ▁▂▃▄▅▆▇█"


def describe_scores(summary: Mapping[str, Any]) -> str:
    """One line for tables: ``12 scored · mean 0.58 · 0▁▂▅█▃▁ 1 · on-topic yield 0.40 (8 of 20 attempts ≥ 0.5)``."""
    if not summary["scored"]:
        return "no relevance score yet"
    top = max(summary["histogram"]) or 1
    bars = "".join(_BARS[round(n / top * (len(_BARS) - 1))] for n in summary["histogram"])
    yield_ = summary["on_topic_yield"]
    return (f"{summary['scored']} scored · mean {summary['mean']:.2f} · 0 {bars} 1 · on-topic yield "
            f"{yield_:.2f} ({summary['on_topic']} of {summary['attempts']} attempts ≥ {summary['on_topic_bar']:g})")


def run_scores(counts: RunCounts, config: RunConfig) -> dict[str, Any]:
    """A run's :func:`score_summary`: its attempts are its committed records, accepted or rejected."""
    return score_summary(counts.scores, counts.accepted + counts.rejected, on_topic_bar(config))
