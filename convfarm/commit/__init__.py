"""Committing a batch of records to a run directory: an explicit, ordered list of stages.

The collector (workers/collector/) and ``producer filter`` run the same list
(:func:`commit_stages`); what differs is the ledger the stages keep their books in (Redis for
collectors, memory for the filter) and the collector's dedup stage (docs/design.md, "Layers").
"""

from convfarm.commit.batch import Batch, Checkpoints, Item, Stage, committed_status, run_stages
from convfarm.commit.ledger import Ledger, LocalLedger, RedisLedger
from convfarm.commit.stages import (
    OFF_TOPIC,
    CommittedCheck,
    JudgeThreshold,
    Mark,
    Outcomes,
    RulesRecheck,
    Seal,
    Write,
    commit_counters,
    commit_stages,
)

__all__ = ["OFF_TOPIC", "Batch", "Checkpoints", "CommittedCheck", "Item", "JudgeThreshold", "Ledger", "LocalLedger",
           "Mark", "Outcomes", "RedisLedger", "RulesRecheck", "Seal", "Stage", "Write", "commit_counters", "commit_stages",
           "committed_status", "run_stages"]
