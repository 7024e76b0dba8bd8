"""Reading the deployment files as compose and Kubernetes would (shared by test_deploy and test_flower)."""
from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from dotenv import dotenv_values

from convfarm.messages import queue_for_model
from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
K8S = REPO / "deploy" / "k8s"
BUNDLED_QUEUE = queue_for_model("smollm2-135m")


class MissingVariable(ValueError):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, nested."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while depth:  # find the matching brace: defaults may hold ${...} themselves
                if j >= len(text):
                    raise ValueError(f"unclosed ${{ in {text!r}")
                if text.startswith("${", j):
                    depth, j = depth + 1, j + 2
                    continue
                depth -= text[j] == "}"
                j += 1
            out.append(_expand(text[i + 2:j - 1], env))
            i = j
        elif match := re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)", text[i:]):
            out.append(env.get(match[1], ""))
            i += match.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _expand(expr: str, env: dict[str, str]) -> str:
    match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?$", expr, re.DOTALL)
    assert match, f"bad interpolation ${{{expr}}}"
    name, op, arg = match[1], match[2], match[3] or ""
    value = env.get(name)
    unset = value is None or (op is not None and op.startswith(":") and value == "")
    if op in (":-", "-"):
        return interpolate(arg, env) if unset else str(value)
    if op in (":?", "?"):
        if unset:
            raise MissingVariable(f"required variable {name} is missing a value: {arg}")
        return str(value)
    if op in (":+", "+"):
        return "" if unset else interpolate(arg, env)
    return "" if value is None else str(value)


def resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


def raw_example_env() -> dict[str, str]:
    return {key: value or "" for key, value in dotenv_values(ENV_EXAMPLE).items()}


# what a user's .env holds after `cp .env.example .env` and setting the two secrets it asks for
USER_SECRETS = {"REDIS_PASSWORD": "0f3c9a7e5b1d24c8a6e0f3c9a7e5b1d2", "FLOWER_BASIC_AUTH": "ops:9b2e7c4a1f6d"}


def example_env() -> dict[str, str]:
    return {**raw_example_env(), **USER_SECRETS}


@cache
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file as ``docker compose config`` would see it with that .env (default: .env.example)."""
    return resolve(raw_compose(), example_env() if env is None else env)


def k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue  # kustomize's own file, not a cluster object
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in deploy/k8s, found {len(found)}"
    return found[0]


def option_value(args: list[str], *names: str) -> str:
    for i, arg in enumerate(args):
        if arg in names:
            return args[i + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    raise AssertionError(f"none of {names} in {args}")


def probe_command(heartbeat_file: Path, max_age: float) -> list[str]:
    """The GPU worker's liveness command from the manifest, pointed at a test file."""
    (container,) = k8s_object("Deployment", "worker-gpu-smollm2-135m")["spec"]["template"]["spec"]["containers"]
    command = list(container["livenessProbe"]["exec"]["command"])
    assert command[0] == "python"
    command[0] = sys.executable
    command[command.index("/tmp/convfarm-heartbeat")] = str(heartbeat_file)
    command[command.index("--max-age") + 1] = str(max_age)
    return command


def probe(heartbeat_file: Path, max_age: float) -> subprocess.CompletedProcess:
    return subprocess.run(probe_command(heartbeat_file, max_age), cwd=REPO, capture_output=True, text=True, timeout=60)
