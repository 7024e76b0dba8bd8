"""A run's state in Redis; :mod:`convfarm.runstate.store` is the only code that names its keys."""

from convfarm.runstate.store import (
    FINISHED,
    RUNS_INDEX,
    STATUSES,
    Outcome,
    RunCounts,
    RunInfo,
    RunStore,
    attempt_field,
    run_id_for,
    run_key,
)

__all__ = ["FINISHED", "RUNS_INDEX", "STATUSES", "Outcome", "RunCounts", "RunInfo", "RunStore", "attempt_field", "run_id_for",
           "run_key"]
