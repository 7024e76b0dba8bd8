"""Several CPU workers on one machine share its cores (CONVFARM_N_THREADS): llama.cpp's threads
spin while they wait, so two workers with a thread per core each ran ~4x slower than one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from convfarm.config import parse_config
from convfarm.engine.cache import _wanted
from convfarm.settings import default_threads, get_settings
from producer.local import threads_per_worker

pytestmark = pytest.mark.fast

CORES = default_threads()


@pytest.fixture
def settings_from_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.mark.parametrize(("workers", "expected"), [(1, CORES), (2, max(1, CORES // 2)), (CORES * 4, 1)])
def test_each_local_worker_gets_its_share_of_the_cores(workers: int, expected: int) -> None:
    assert threads_per_worker(workers) == expected


@pytest.mark.parametrize(("config_threads", "env_threads", "used"), [
    (None, None, None),  # every core (ResidentModel's default)
    (3, None, 3),  # the run config's
    (3, "1", 1),  # the machine's setting wins, as CONVFARM_N_GPU_LAYERS does
    (None, "2", 2),
])
def test_the_worker_setting_wins_over_the_configs_threads(settings_from_env: pytest.MonkeyPatch,
                                                          config_threads: int | None, env_threads: str | None,
                                                          used: int | None) -> None:
    if env_threads is None:
        settings_from_env.delenv("CONVFARM_N_THREADS", raising=False)
    else:
        settings_from_env.setenv("CONVFARM_N_THREADS", env_threads)
    get_settings.cache_clear()
    fields = {"name": "t", "model": "smollm2-135m", "prompt_lines": ["Explain {word}."], "words": ["leaf"]}
    if config_threads is not None:
        fields["n_threads"] = config_threads
    config, _ = parse_config(fields)
    assert _wanted(config)[2] == used
