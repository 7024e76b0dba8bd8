"""TLS across machines, for real: a redis-server with ``--tls-port`` only (no plain port), a
password and a certificate signed by a CA made here; enqueue, a generation worker, the collector
and Flower all reach it through ``rediss://`` with that CA (README, "Running a farm on several
machines"). Skipped, saying why, where redis-server was built without TLS or openssl is missing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from producer.local import free_port
from tests.conftest import REPO, WorkerProcess, farm_env, producer, start_worker, wait_for, write_config
from tests.runfiles import records as run_records
from tests.test_flower import Flower

SECRET = "tls-pa55-0d1e"
USER, PASSWORD = "farmer", "flower-pa55"


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for 127.0.0.1 signed by it (openssl, as an operator would)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=convfarm test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem",
        "-days", "2", "-extfile", "san.cnf")
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


def tls_support() -> str | None:
    """Why this machine cannot run the test, or None."""
    if shutil.which("openssl") is None:
        return "openssl is not installed (needed to make the test's certificates)"
    if shutil.which("redis-server") is None:
        return "no redis-server on PATH"
    probe = subprocess.run(["redis-server", "--port", "0", "--tls-port", "1", "--tls-cert-file", "/nonexistent"],
                           capture_output=True, text=True, timeout=10)
    if "tls" in (probe.stdout + probe.stderr).lower() and "not supported" in (probe.stdout + probe.stderr).lower():
        return "this redis-server was built without TLS (BUILD_TLS=yes)"
    return None


@dataclass
class TlsRedis:
    url: str  # rediss://:password@127.0.0.1:port/0?ssl_cert_reqs=required&ssl_ca_certs=...
    port: int
    ca: Path


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    if why := tls_support():
        pytest.skip(why)
    root = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_certificates(root)
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                             "--tls-auth-clients", "no", "--requirepass", SECRET, "--save", "", "--appendonly", "no",
                             "--dir", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"rediss://:{SECRET}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"

    def answers() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
        except (redis.RedisError, OSError):
            return False

    try:
        wait_for(answers, 20, "the TLS redis-server")
        yield TlsRedis(url, port, ca)
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_tls_redis_is_tls_only_and_checks_its_clients(tls_redis: TlsRedis) -> None:
    # what the farm test below relies on: nothing plain, no password-less access, the CA is checked
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=tls_redis.port, password=SECRET, socket_connect_timeout=2).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(tls_redis.url.replace(f":{SECRET}@", ""), socket_connect_timeout=2).set("k", "v")
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        redis.Redis.from_url(tls_redis.url.split("&ssl_ca_certs=")[0], socket_connect_timeout=2).ping()


@pytest.mark.fast
def test_flowers_broker_connection_gets_the_urls_tls_settings(tls_redis: TlsRedis) -> None:
    """Flower reads queue lengths through a client of its own, configured by Celery's broker_use_ssl only
    (not the URL's query): without it, it cannot verify the farm's CA and its queue view fails."""
    import asyncio

    from flower.utils.broker import Broker

    from convfarm.broker import base_celery_config
    from convfarm.settings import Settings

    conf = base_celery_config(Settings(broker_url=tls_redis.url))
    assert conf["broker_use_ssl"]["ssl_ca_certs"] == str(tls_redis.ca)
    broker = Broker(tls_redis.url, broker_options={}, broker_use_ssl=conf["broker_use_ssl"])
    assert asyncio.run(broker.queues(["convfarm.gen.x"])) == [{"name": "convfarm.gen.x", "messages": 0}]
    assert "broker_use_ssl" not in base_celery_config(Settings(broker_url="redis://127.0.0.1:6379/0"))


def test_a_run_and_flower_over_rediss(tls_redis: TlsRedis, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    env = farm_env(tls_redis.url, out, FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}")
    logs = tmp_path / "logs"
    logs.mkdir()
    flower_port = free_port()
    procs: list[WorkerProcess] = []
    try:
        flower_log = logs / "flower.log"
        flower = subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={flower_port}",
                                   "--address=127.0.0.1"], cwd=REPO, env=env, stdout=flower_log.open("ab"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(WorkerProcess("flower", flower, flower_log))
        procs.append(start_worker(env, logs, "collector-tls", collector=True))
        procs.append(start_worker(env, logs, "gen-tls"))
        config = write_config(tmp_path / "tls.json", name="tlsrun", words=["leaf", "bridge"], max_tokens=12)
        sent = producer("enqueue", str(config), "--wait", env=env, timeout=600)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        run = sent.stdout.split("run ", 1)[1].split(":", 1)[0].strip()
        records = run_records(out / run, "conversations") + run_records(out / run, "rejected")
        assert {r["word"] for r in records} == {"leaf", "bridge"}, records  # every word written, through TLS
        manifest = json.loads((out / run / "manifest.json").read_text())
        assert manifest["status"] == "complete"

        # Flower: its events connection lists the workers, its broker connection (another client,
        # configured by broker_use_ssl) reads the queue lengths through TLS with the farm's CA
        flower = Flower(f"http://127.0.0.1:{flower_port}", (USER, PASSWORD))

        def workers_listed() -> bool:
            status, body = flower.request("/api/workers?refresh=1")
            return status == 200 and "collector-tls@" in body and "gen-tls@" in body

        wait_for(workers_listed, 90, "Flower to list the workers over rediss://", interval=2)
        status, body = flower.request("/api/queues/length")
        assert status == 200, (status, body[:300], flower_log.read_text(errors="replace")[-2000:])
        assert "convfarm.gen.smollm2-135m" in body
        for proc in procs:
            assert SECRET not in proc.text(), f"{proc.name}'s log shows the Redis password"
    finally:
        for proc in reversed(procs):
            proc.stop()
