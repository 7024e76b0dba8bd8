"""The process's one resident model (a worker keeps it for its life)."""

from __future__ import annotations

import logging
import threading

from convfarm.config import RunConfig
from convfarm.engine.resident import ResidentModel
from convfarm.settings import get_settings

log = logging.getLogger(__name__)

_resident: ResidentModel | None = None
_resident_lock = threading.Lock()


def resident_model(config: RunConfig) -> ResidentModel:
    """The process's model, loaded on first use and kept; a task for another model swaps it."""
    global _resident
    with _resident_lock:
        # the machine knows its GPU better than the run config: CONVFARM_N_GPU_LAYERS wins
        worker_ngl = get_settings().n_gpu_layers
        n_gpu_layers = config.n_gpu_layers if worker_ngl is None else worker_ngl
        wanted = (config.n_ctx, n_gpu_layers, config.n_threads)
        if _resident is not None and (_resident.ref != config.model or _resident.settings != wanted):
            log.warning("convfarm: switching model %s -> %s", _resident.ref, config.model)
            _resident.close()
            _resident = None
        if _resident is None:
            _resident = ResidentModel(config.model, n_ctx=config.n_ctx,
                                      n_gpu_layers=n_gpu_layers, n_threads=config.n_threads)
        return _resident
