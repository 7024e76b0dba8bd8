"""The Celery settings a *sender* needs; workers extend them (``workers.celeryconfig``).

JSON only, everywhere: pickle would let anyone who can write to Redis run code on workers.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis
from celery import Celery
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from convfarm.settings import Settings, get_settings

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def broker_ssl_options(url: str) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` for a ``rediss://`` URL, read from the URL's own ``ssl_*`` query.

    kombu reads them from the URL, but Flower's broker connection (queue lengths) reads only
    ``broker_use_ssl``: without it Flower cannot verify a farm's own CA. Verification is on
    unless the URL says ``ssl_cert_reqs=none``.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    query = dict(parse_qsl(parts.query))
    reqs = query.get("ssl_cert_reqs", "required").lower().removeprefix("cert_")
    options: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS.get(reqs, ssl.CERT_REQUIRED)}
    options.update({key: query[key] for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile") if key in query})
    return options


def base_celery_config(settings: Settings) -> dict[str, Any]:
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": settings.unacked_restore_interval,
    }
    tls = broker_ssl_options(settings.redis_url)
    return {
        **({"broker_use_ssl": tls} if tls else {}),
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport,
        "result_backend": None,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_send_sent_event": True,  # Flower sees tasks as soon as they are queued
        "task_ignore_result": True,
    }


def celery_client(settings: Settings | None = None) -> Celery:
    """A Celery app used only to send tasks (no task code imported)."""
    app = Celery("convfarm-producer")
    app.conf.update(base_celery_config(settings or get_settings()))
    return app


def redis_client(settings: Settings | None = None, *, retry_seconds: float = 0) -> redis.Redis:
    """A client of the run state's Redis (``CONVFARM_STATE_URL``, default the broker's): run
    state, results stream, dedup. ``retry_seconds`` > 0 retries a command that met a lost
    connection with exponential backoff (capped at 5 s) for about that long: what a task needs to
    ride out a Redis restart instead of failing (docs/design.md, "Delivery guarantees")."""
    return _client((settings or get_settings()).run_state_url, retry_seconds)


def broker_redis_client(settings: Settings | None = None) -> redis.Redis:
    """A plain client of the Celery broker's Redis (``CONVFARM_BROKER_URL``): its queues' lengths."""
    return _client((settings or get_settings()).redis_url, 0)


def _client(url: str, retry_seconds: float) -> redis.Redis:
    if retry_seconds <= 0:
        return redis.Redis.from_url(url, socket_timeout=30)
    retries = 5 + int(retry_seconds // 5)  # 0.1+0.2+...+3.2 ≈ 6 s for the first 5, then 5 s each
    return redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5,
                                retry=Retry(ExponentialBackoff(cap=5.0, base=0.1), retries),
                                retry_on_error=[redis.ConnectionError, redis.TimeoutError])
