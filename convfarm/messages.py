"""Message shapes shared by the producer, the workers and the collector — in one place.

* a generation task is ``convfarm.generate(run, word, attempt)``: short, readable args
  (they are what Flower shows); the worker reads the run's config from Redis;
* a worker hands a :class:`ConversationRecord` to the collector on the results stream;
* the collector writes the same record, one JSON object per line, to the shards.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

GENERATE_TASK = "convfarm.generate"
JUDGE_TASK = "convfarm.judge"  # score a generated record with another judge model (docs/design.md "Relevance judge")
RESULTS_STREAM = "convfarm:results"
COLLECTOR_GROUP = "collectors"
QUEUE_PREFIX = "convfarm.gen."
JUDGE_QUEUE_PREFIX = "convfarm.judge."


def model_slug(model: str) -> str:
    """``models/SmolLM2.Q4_1.gguf`` -> ``smollm2.q4_1``: a model reference as a queue name's tail."""
    base = model.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    base = re.sub(r"\.gguf$", "", base, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9_.-]+", "-", base.lower()).strip("-.") or "model"


# a queue name a user may give (``enqueue --queue``): what queue_for_model makes and a worker's -Q takes
_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,199}")


def queue_problem(name: str) -> str | None:
    """Why ``name`` cannot be a generation queue, or None."""
    if not _QUEUE_NAME.fullmatch(name):
        return ("must be 1 to 200 characters: letters, digits and _ . : @ -, starting with a letter or digit "
                "(e.g. convfarm.gen.smollm2-135m)")
    return None


def queue_for_model(model: str) -> str:
    """One queue per model: ``models/SmolLM2.Q4_1.gguf`` -> ``convfarm.gen.smollm2.q4_1``."""
    return QUEUE_PREFIX + model_slug(model)


def judge_queue_for_model(model: str) -> str:
    """The judge tasks of a judge model: ``gemma3-270m`` -> ``convfarm.judge.gemma3-270m``."""
    return JUDGE_QUEUE_PREFIX + model_slug(model)


def task_id(run: str, word: str, attempt: int) -> str:
    """Deterministic, so a re-sent task is recognisable and its output deduplicated."""
    return f"{run}:{word}:{attempt}"


def record_id(run: str, word: str, attempt: int) -> str:
    digest = hashlib.sha256(f"{run}\x1f{word}\x1f{attempt}".encode()).hexdigest()
    return digest[:24]


def task_seed(base_seed: int, run: str, word: str, attempt: int) -> int:
    """A stable per-task seed (not Python's salted ``hash()``): same task, same text."""
    digest = hashlib.sha256(f"{base_seed}\x1f{run}\x1f{word}\x1f{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Turn(BaseModel):
    speaker: str
    text: str


class Message(BaseModel):
    role: str
    content: str


class ModelIdentity(BaseModel):
    name: str  # the reference as written in the config
    file: str  # the GGUF file name
    sha256: str
    size: int


class TokenCounts(BaseModel):
    prompt: int = 0
    completion: int = 0


class JudgeIdentity(BaseModel):
    """Which judge scored a record: the model's identity, and the method and its version (convfarm/judge/)."""

    model: ModelIdentity
    method: str
    version: int


Status = Literal["accepted", "rejected"]


class ConversationRecord(BaseModel):
    """One generated conversation, accepted or rejected (docs/design.md, "Messages and the record")."""

    id: str
    run: str
    word: str
    attempt: int
    status: Status
    reason: str | None = None  # reason code when rejected
    detail: str | None = None  # a human-readable explanation of the reason
    duplicate_of: str | None = None
    rules_version: str | None = None  # the worker judged with these rules (convfarm.judging.rules_stamp)
    turns: list[Turn] = Field(default_factory=list)
    messages: list[Message] = Field(default_factory=list)
    raw: str = ""  # the completion as the model wrote it
    ended_by: str = ""  # eos | max_tokens | transcript_end | rule
    model: ModelIdentity
    params: dict[str, float | int | str]
    seed: int
    worker: str
    tokens: TokenCounts
    generation_seconds: float  # latency: this conversation's wall time, inside its batch
    # its share of the worker's busy time (under batching, each engine step's time split among the
    # conversations in it): what summed figures (status, manifest, cost) add up; None in old records
    machine_seconds: float | None = None
    # judge scores in [0, 1] by name ("relevance"), and who gave them; empty/None when no judge ran
    scores: dict[str, float] = Field(default_factory=dict)
    judge: JudgeIdentity | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))

    def to_json(self) -> str:
        return self.model_dump_json()

    def machine_time(self) -> float:
        """Its share of the worker's busy time (``generation_seconds`` for a record made before the field)."""
        return self.generation_seconds if self.machine_seconds is None else self.machine_seconds
