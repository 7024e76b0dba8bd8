"""A generation worker whose model is replaced by a synthetic engine: for the control-plane harness only.

Start it as ``celery -A benchmarks.controlplane.synthetic_worker worker ...``. It is the real
``workers`` app — the real task, leases, delivery counts, publishing and collector — with one
substitution: the process's resident model is a :class:`SyntheticModel` that returns a
well-formed, varied conversation after ``CONVFARM_SYNTHETIC_DELAY`` seconds.

Why here and not behind a setting: a user cannot turn it on by mistake. The module lives in
``benchmarks/`` (not in the installed packages), nothing in ``workers/`` or ``convfarm/`` knows it,
and every record it makes names it as its model (``synthetic-engine``), so nothing in a run's
output can come from it unnoticed.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import workers.tasks as tasks
from convfarm.config import RunConfig
from convfarm.engine import GenerationOutcome, GenerationRequest
from convfarm.judging import prompt_setup
from convfarm.messages import ModelIdentity, Turn
from workers.app import app

__all__ = ["app"]

SYNTHETIC_IDENTITY = ModelIdentity(name="synthetic-engine", file="synthetic-engine", sha256="0" * 64, size=0)
VOCAB = ("light", "wave", "energy", "mass", "field", "charge", "motion", "force", "heat", "spin", "orbit",
         "pressure", "atom", "photon", "current", "voltage", "lens", "sound", "speed", "time", "space")


class SyntheticModel:
    """Stands in for ``ResidentModel``: same ``generate`` and ``identity``, no llama.cpp."""

    identity = SYNTHETIC_IDENTITY

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def generate(self, requests: Sequence[GenerationRequest], **_: object) -> Iterator[GenerationOutcome]:
        for request in requests:
            time.sleep(self.delay)
            yield self.outcome(request)

    @staticmethod
    def outcome(request: GenerationRequest) -> GenerationOutcome:
        rng = random.Random(request.seed)  # varied per attempt, so exact and near dedup have real work
        setup = prompt_setup(request.config, request.word)
        speakers = setup.speakers or ("STUDENT", "TEACHER")
        turns = list(setup.turns)
        first = setup.opening.speaker if setup.opening else speakers[1]
        order = [first, speakers[0] if first == speakers[1] else speakers[1]]
        for i in range(4):
            words = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(8, 16)))
            turns.append(Turn(speaker=order[i % 2], text=f"{request.word} is about {words}."))
        raw = "\n".join(f"{t.speaker}: {t.text}" for t in turns)
        return GenerationOutcome(request=request, raw=raw, turns=turns, ended_by="eos", prompt_tokens=24,
                                 completion_tokens=len(raw) // 4, seconds=0.0, structure="free")


_MODEL = SyntheticModel(float(os.environ.get("CONVFARM_SYNTHETIC_DELAY", "0.05")))


@contextmanager
def _synthetic_lease(config: RunConfig) -> Iterator[SyntheticModel]:
    yield _MODEL


tasks.model_lease = _synthetic_lease  # the one substitution: the task's model
