"""The Celery settings a *sender* needs; workers extend them (``workers.celeryconfig``).

JSON only, everywhere: pickle would let anyone who can write to Redis run code on workers.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery

from convfarm.settings import Settings, get_settings


def base_celery_config(settings: Settings) -> dict[str, Any]:
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": settings.unacked_restore_interval,
    }
    return {
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


def redis_client(settings: Settings | None = None) -> redis.Redis:
    return redis.Redis.from_url((settings or get_settings()).redis_url, socket_timeout=30)
