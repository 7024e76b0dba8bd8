"""The reliability settings (docs/design.md, "Delivery guarantees") are what the worker actually runs with."""

from __future__ import annotations

import pytest

from convfarm.settings import Settings
from workers.app import app
from workers.celeryconfig import worker_config

pytestmark = pytest.mark.fast  # in-process: no Redis, no worker, no model


def test_worker_app_is_json_only_and_acks_late() -> None:
    conf = app.conf
    assert conf.task_serializer == "json" and conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"] and list(conf.result_accept_content) == ["json"]
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    # task-sent events are batched per 1,000 tasks by the producer; the workers' task events are
    # off until a Flower turns them on (it does every 5 s: tests/test_flower.py)
    assert conf.worker_send_task_events is False and conf.task_send_sent_event is True
    assert conf.worker_max_tasks_per_child is None  # recycling a child would reload the model
    assert conf.task_soft_time_limit < conf.task_time_limit


def test_visibility_timeout_exceeds_hard_time_limit() -> None:
    conf = app.conf
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.result_backend_transport_options["visibility_timeout"] > conf.task_time_limit


def test_a_visibility_timeout_below_the_hard_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="VISIBILITY_TIMEOUT"):
        worker_config(Settings(hard_time_limit=600, visibility_timeout=300))


def test_broker_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVFARM_BROKER_URL", raising=False)
    monkeypatch.setenv("REDIS_URL", "rediss://:secret@redis.example:6380/2?ssl_cert_reqs=required")
    assert Settings().redis_url.startswith("rediss://:secret@redis.example:6380/2")
    monkeypatch.setenv("CONVFARM_BROKER_URL", "redis://other:6379/0")
    assert Settings().redis_url == "redis://other:6379/0"


# Which workers keep kombu's acknowledgement emulation (docs/design.md, "Delivery guarantees"):
# a worker serving only generation queues does without it (leases re-issue its lost messages);
# a judge queue, an unknown queue or no -Q at all keeps it; CONVFARM_ACK_EMULATION decides outright.
@pytest.mark.parametrize(("queues", "setting", "emulate"), [
    (["convfarm.gen.smollm2-135m"], None, False),
    (["convfarm.gen.smollm2-135m", "convfarm.gen.gemma3-270m"], None, False),
    (["convfarm.judge.gemma3-270m"], None, True),
    (["convfarm.gen.smollm2-135m", "convfarm.judge.smollm2-135m"], None, True),
    (["convfarm.collector"], None, True),
    ([], None, True),
    (["convfarm.gen.smollm2-135m"], True, True),
    (["convfarm.judge.gemma3-270m"], False, False),
])
def test_ack_emulation_only_where_the_broker_copy_is_worth_keeping(queues: list[str], setting: bool | None,
                                                                   emulate: bool) -> None:
    from workers.celeryconfig import wants_ack_emulation

    assert wants_ack_emulation(Settings(ack_emulation=setting), queues) is emulate
