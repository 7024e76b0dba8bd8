"""The README's commands are the ones that work: quick start shape, worker and collector lines."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import redis

from convfarm.runstate import run_key
from tests.conftest import REPO, WorkerProcess, farm_env, producer, wait_for, write_config

README = (REPO / "README.md").read_text()


def console_lines() -> list[str]:
    blocks = re.findall(r"```console\n(.*?)```", README, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_quick_start_is_two_commands_and_ci_runs_the_test_one() -> None:
    first, second = console_lines()[:2]
    assert "pip install" in first and first.endswith("producer run examples/example.json")
    assert "pip install" in second and "pytest" in second
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert second in ci, ".ci/run must run the README's test command unchanged"


def readme_celery_command(marker: str) -> list[str]:
    line = next(line for line in console_lines() if "celery -A workers worker" in line and marker in line)
    words = shlex.split(line)
    words = words[words.index("celery"):]  # drop VAR=value prefixes; the test sets the environment
    return [sys.executable, "-m", *words]


def test_readme_worker_and_collector_commands_run_a_farm(redis_url: str, tmp_path: Path, rclient: redis.Redis) -> None:
    out = tmp_path / "out"
    env = farm_env(redis_url, out)
    procs = []
    try:
        for label, marker in (("collector", "--collector"), ("worker", "cpu0@%h")):
            log = tmp_path / f"{label}.log"
            proc = subprocess.Popen(readme_celery_command(marker), cwd=REPO, env=env, stdout=log.open("wb"),
                                    stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(WorkerProcess(label, proc, log))
        config = write_config(tmp_path / "readme.json", name="readme", max_tokens=24, words=["leaf", "camera"])
        result = producer("enqueue", str(config), env=env)
        assert result.returncode == 0, result.stderr
        run = re.search(r"run (\S+): sent", result.stdout).group(1)
        wait_for(lambda: rclient.hget(run_key(run), "status") == b"complete", 180, "the run to complete")
        assert (out / run / "manifest.json").exists()
        assert "cpu0@" in procs[1].text() and "collector@" in procs[0].text()
    finally:
        for proc in procs:
            proc.stop()
