"""The process's one resident model (a worker keeps it for its life; task threads share it)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from convfarm.config import RunConfig
from convfarm.engine.resident import ResidentModel
from convfarm.settings import get_settings

log = logging.getLogger(__name__)

_resident: ResidentModel | None = None
_resident_lock = threading.Lock()
_resident_idle = threading.Condition(_resident_lock)  # signalled when a lease ends
_resident_users = 0  # task threads generating with _resident now


def _wanted(config: RunConfig) -> tuple[int, int, int | None]:
    # the machine knows its GPU and its cores better than the run config: CONVFARM_N_GPU_LAYERS and
    # CONVFARM_N_THREADS win
    settings = get_settings()
    n_gpu_layers = config.n_gpu_layers if settings.n_gpu_layers is None else settings.n_gpu_layers
    n_threads = config.n_threads if settings.n_threads is None else settings.n_threads
    return (config.n_ctx, n_gpu_layers, n_threads)


def _load_for(config: RunConfig) -> ResidentModel:
    """With the lock held: the process's model for ``config``, loaded or swapped when it must be."""
    global _resident
    wanted = _wanted(config)
    while _resident is not None and (_resident.ref != config.model or _resident.settings != wanted) \
            and _resident_users:
        _resident_idle.wait()  # other task threads still decode with the old model: let them finish
    if _resident is not None and (_resident.ref != config.model or _resident.settings != wanted):
        log.warning("convfarm: switching model %s -> %s", _resident.ref, config.model)
        _resident.close()
        _resident = None
    if _resident is None:
        _resident = ResidentModel(config.model, n_ctx=wanted[0], n_gpu_layers=wanted[1], n_threads=wanted[2],
                                  batch_size=get_settings().batch_size)
    return _resident


def resident_model(config: RunConfig) -> ResidentModel:
    """The process's model, loaded on first use and kept; a task for another model swaps it."""
    with _resident_lock:
        return _load_for(config)


@contextmanager
def model_lease(config: RunConfig) -> Iterator[ResidentModel]:
    """The process's model, not swapped while the caller uses it (task threads share one model)."""
    global _resident_users
    with _resident_lock:
        model = _load_for(config)
        _resident_users += 1
    try:
        yield model
    finally:
        with _resident_lock:
            _resident_users -= 1
            _resident_idle.notify_all()
