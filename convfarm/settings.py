"""Connection and farm settings, read from the environment in one place.

``CONVFARM_BROKER_URL`` wins over ``REDIS_URL``; both accept ``redis://`` and ``rediss://``
(TLS, e.g. ``rediss://:password@host:6380/0?ssl_cert_reqs=required``). ``CONVFARM_STATE_URL``
(default: the broker's URL) puts the run state and the results stream on another Redis than
Celery's queues (docs/scaling.md).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONVFARM_", extra="ignore", populate_by_name=True)

    broker_url: str | None = Field(
        default=None, validation_alias=AliasChoices("CONVFARM_BROKER_URL", "REDIS_URL")
    )
    # The Redis of the run state and the results stream (None: the broker's). Workers,
    # collectors and the producer must all agree on both URLs.
    state_url: str | None = Field(default=None, validation_alias=AliasChoices("CONVFARM_STATE_URL"))
    # Generation time limits. The broker's visibility timeout must exceed the hard limit,
    # or Redis re-delivers a task that is still running (celery#5935).
    soft_time_limit: int = Field(default=600, ge=1)
    hard_time_limit: int = Field(default=660, ge=1)
    visibility_timeout: int = Field(default=1200, ge=1)
    # How often kombu looks for messages of dead workers to restore (seconds).
    unacked_restore_interval: int = Field(default=30, ge=1)
    # kombu's acknowledgement emulation (the unacked hash: 8 Redis commands per message) in a
    # worker that serves only generation queues. None = off there, on everywhere else: a
    # generation message is three values the run state re-issues when its lease expires, while a
    # judge message carries a generated conversation (docs/design.md, "Delivery guarantees").
    ack_emulation: bool | None = Field(default=None)
    # Tasks that raise are retried with backoff up to this many deliveries, then dead-lettered.
    max_deliveries: int = Field(default=3, ge=1)
    # Every issued attempt holds a lease (docs/design.md, "Delivery guarantees"): a running
    # task extends it every third of this; one that expires with no outcome is issued again.
    # None = the hard time limit + 60 s (it must exceed the hard limit).
    lease_seconds: int | None = Field(default=None, ge=1)
    # The collector waits this long after a batch smaller than its batch size before it reads
    # again: results gather into fewer, larger batches (a batch costs ~20 Redis commands however
    # many results it holds: docs/scaling.md). 0 = read again at once.
    collector_linger_ms: int = Field(default=100, ge=0, le=5000)
    # The collector takes over the results of a collector silent this long.
    claim_idle_seconds: float = Field(default=60.0, gt=0)
    # `enqueue --wait` / `producer run` give up on a run when no collector was alive this long.
    stall_seconds: float = Field(default=300.0, gt=0)
    # Where bundled/Hugging Face models are cached, and the hub to download from.
    model_cache: Path = Path.home() / ".cache" / "convfarm" / "models"
    # A folder where plain model file names are also looked up.
    model_dir: Path | None = None
    hf_endpoint: str = "https://huggingface.co"
    # A download whose hub or mirror states neither its size nor its sha256 cannot be checked:
    # refused unless this is set (docs/design.md, "Models").
    allow_unverified_downloads: bool = False
    # Models a worker downloads (or finds) before it takes tasks, comma-separated references
    # (OWNER/REPO[@REVISION]:FILE.gguf); a worker never downloads inside a task's time limit.
    models: str = ""
    # Worker side: GPU layers for every model this worker loads (None = the run config's value).
    n_gpu_layers: int | None = Field(default=None, ge=-1)
    # Worker side: llama.cpp's CPU threads for every model this worker loads (None = the run
    # config's n_threads, else every core the process may use). Several workers on one machine
    # must share its cores: llama.cpp's threads spin while they wait, and two workers with a thread
    # per core each ran 4x slower than one (BENCHMARKS.md, "Machine time"); `producer run
    # --workers N` gives each worker its share.
    n_threads: int | None = Field(default=None, ge=1, le=256)
    # Worker side: conversations one generation worker decodes together (the batched engine's
    # slots; the worker runs that many task threads). 1 = one at a time, in a prefork child.
    # Default 8: llama.cpp's batched throughput on a 2-core CPU flattens there (BENCHMARKS.md);
    # on a GPU use 64-128.
    batch_size: int = Field(default=8, ge=1, le=512)
    # Worker side: the batched engine's KV cache. "unified": one cache the sequences share
    # (llama.cpp's server does this; the fastest here, BENCHMARKS.md), a conversation's text
    # depends on what else was in the batch. "per-sequence": a KV stream per sequence, each
    # conversation token for token what it would be alone (docs/batched-decoding.md).
    kv_layout: Literal["unified", "per-sequence"] = "unified"
    # Worker side: llama.cpp's "extra" CPU weight buffers (AMX tiles, repacked layouts).
    # "auto" turns them off on CPUs with AMX, where llama.cpp crashes in its AMX matrix
    # product (convfarm/engine/cpu_buffers.py); "on" / "off" force either way.
    cpu_extra_buffers: Literal["auto", "on", "off"] = "auto"
    # Output root for runs whose enqueue did not name one.
    out_dir: Path = Path("runs")
    # The collector seals its open shard after this many idle seconds, so output
    # appears while a slow run goes on instead of only at the end.
    seal_idle_seconds: float = Field(default=30.0, gt=0)
    # A finished run's Redis keys expire this many days after it completes (0 = never);
    # `producer purge RUN` removes them at once. Its output directory is never touched.
    run_retention_days: float = Field(default=14.0, ge=0)
    # Duplicate detection covers the last this many kept conversations of a run (0 = all of them).
    # Each kept conversation costs about 1.7 KB of Redis with the default near-duplicate settings
    # (BENCHMARKS.md), so 100,000 is ~170 MB per active run: inside the 1 GB maxmemory of compose
    # and the embedded Redis with room for queues and a few runs, while a finite run up to that
    # size (e.g. 10,000 words x 10) dedups exactly as without a window. Every collector of a farm
    # should use the same value (each trims to its own when it keeps a conversation).
    dedup_window: int = Field(default=100_000, ge=0)
    # maxmemory of the redis-server `producer run` embeds (Redis units: 512mb, 2gb; 0 = no limit),
    # with maxmemory-policy noeviction: at the ceiling Redis refuses writes instead of evicting
    # run state (which would lose acknowledged work) or growing until the OS kills it.
    redis_maxmemory: str = Field(default="1gb", pattern=r"(?i)^\d+(b|k|kb|m|mb|g|gb)?$")

    @property
    def model_refs(self) -> list[str]:
        return [ref.strip() for ref in self.models.split(",") if ref.strip()]

    @property
    def lease(self) -> int:
        return self.lease_seconds or self.hard_time_limit + 60

    @property
    def redis_url(self) -> str:
        """The Celery broker's Redis (its queues); a password given as ``?password=`` moves into the userinfo."""
        return password_in_userinfo(self.broker_url or DEFAULT_BROKER_URL)

    @property
    def run_state_url(self) -> str:
        """The Redis of the run state and the results stream."""
        return password_in_userinfo(self.state_url) if self.state_url else self.redis_url


def password_in_userinfo(url: str) -> str:
    """``redis://h/0?password=P`` as ``redis://:P@h/0``: redis-py reads either, kombu (Celery) only the
    second, and crashed on the first with a TypeError."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    passwords = [value for key, value in query if key == "password"]
    if not passwords or parts.password is not None:
        return url
    user = quote(parts.username or "", safe="")
    host = parts.netloc.rsplit("@", 1)[-1]
    rest = urlencode([(key, value) for key, value in query if key != "password"])
    return urlunsplit((parts.scheme, f"{user}:{quote(passwords[-1], safe='')}@{host}", parts.path, rest, parts.fragment))


def default_threads() -> int:
    """llama.cpp's CPU threads when neither CONVFARM_N_THREADS nor a config sets them: every core
    this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


# scheme://user:password@ — the password part of any URL inside a text (a Redis URL in an error,
# a log line, a status line). kombu's sanitize_url does this for a string that *is* a URL; our
# messages embed URLs in sentences, so one substitution over the whole text.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:@/\s]*:)(?P<password>[^@\s/]+)@", re.IGNORECASE)


# ...and a password given as a query parameter (redis-py reads ``redis://h/0?password=...``)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd|pass|pwd|auth|ssl_password)=)(?P<password>[^&#\s]+)",
                             re.IGNORECASE)


def mask_credentials(text: str) -> str:
    """``text`` with every URL's password replaced by ``***`` (for messages, logs and status)."""
    return _QUERY_PASSWORD.sub(r"\g<head>***", _URL_PASSWORD.sub(r"\g<head>***@", text))
