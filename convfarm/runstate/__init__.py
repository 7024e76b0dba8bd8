"""A run's state in Redis; :mod:`convfarm.runstate.keys` spells every key name.

:class:`RunStore` keeps a run's meta, counters and the issue/outcome scripts; the registries
beside it (one class per Redis structure) keep leases, dead letters, rates, the processes'
figures and the shard index.
"""

from convfarm.runstate.deadletters import DeadLetterRegistry, dead_letter
from convfarm.runstate.fences import CollectorFences, Fenced
from convfarm.runstate.keys import RUNS_INDEX, RunKeys, attempt_field, run_key
from convfarm.runstate.leases import LeaseRegistry, LeaseVerdict
from convfarm.runstate.store import STATUSES, Outcome, RunCounts, RunInfo, RunStore, StartVerdict, run_id_for

__all__ = ["RUNS_INDEX", "STATUSES", "CollectorFences", "DeadLetterRegistry", "Fenced", "LeaseRegistry",
           "LeaseVerdict", "Outcome", "RunCounts", "RunInfo", "RunKeys", "RunStore", "StartVerdict", "attempt_field",
           "dead_letter", "run_id_for", "run_key"]
