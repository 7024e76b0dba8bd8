"""CONVFARM_STATE_URL: the run state and the results stream on another Redis than Celery's queues.

A real farm (a generation worker, a collector, the producer CLI) runs with the broker on one
private redis-server and the run state on another (private servers: no process of another test
session can consume this farm's queue). The run must
complete with its output written, every run key and the results stream must be on the state
server, and the broker must hold nothing of the run but Celery's own keys.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import redis

from convfarm.messages import RESULTS_STREAM
from convfarm.runstate import run_key
from producer.local import EmbeddedRedis
from tests.conftest import farm_env, producer, start_worker, wait_for, write_config


def test_a_farm_runs_with_broker_and_run_state_on_two_redis_servers(tmp_path: Path) -> None:
    broker_server, state_server = EmbeddedRedis(tmp_path / "broker-redis"), EmbeddedRedis(tmp_path / "state-redis")
    broker_server.start()
    state_server.start()
    workers = []
    try:
        state, broker = redis.Redis.from_url(state_server.url), redis.Redis.from_url(broker_server.url)
        out = tmp_path / "out"
        env = farm_env(broker_server.url, out, CONVFARM_STATE_URL=state_server.url, CONVFARM_BATCH_SIZE="2")
        workers = [start_worker(env, tmp_path / "logs", "collector-split", collector=True),
                   start_worker(env, tmp_path / "logs", "gen-split")]
        config = write_config(tmp_path / "split.json", name="split", max_tokens=24, words=["leaf", "camera"])
        sent = producer("enqueue", str(config), env=env)
        assert sent.returncode == 0, sent.stderr
        run = re.search(r"run (\S+): sent", sent.stdout).group(1)
        wait_for(lambda: state.hget(run_key(run), "status") == b"complete", 300,
                 f"the run to complete on the state server\n{workers[0].text()[-2000:]}")

        status = producer("status", run, "--json", env=env)
        assert status.returncode == 0, status.stderr
        figures = json.loads(status.stdout)
        assert figures["words"]["total"] == 2 and figures["words"]["pending"] == 0
        assert figures["conversations"]["accepted"] + figures["conversations"]["rejected"] >= 2
        manifest = json.loads((out / run / "manifest.json").read_text())
        assert manifest["run"] == run

        # the run lives on the state server only; the broker kept Celery's keys, no run state
        assert state.exists(run_key(run)) and state.exists(RESULTS_STREAM)
        on_broker = [k.decode() for k in broker.scan_iter()]
        assert "_kombu.binding.convfarm.gen.smollm2-135m" in on_broker, on_broker  # Celery's queue was there
        assert not [k for k in on_broker if k.startswith("convfarm:run") or k == RESULTS_STREAM], on_broker
    finally:
        for worker in workers:
            worker.stop()
        state_server.stop()
        broker_server.stop()
