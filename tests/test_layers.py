"""The layering of docs/design.md, "Layers", read off the code itself.

``convfarm`` (the contract and the engine) imports nothing of ours; ``producer`` and
``workers`` import ``convfarm`` and never each other; only ``workers`` builds a Celery app
when imported.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("convfarm", "producer", "workers")
FORBIDDEN = {"convfarm": {"producer", "workers"}, "producer": {"workers"}, "workers": {"producer"}}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_go_one_way(package: str) -> None:
    wrong = [f"{path.relative_to(REPO)}:{line} imports {name}"
             for path in sorted((REPO / package).rglob("*.py"))
             for name, line in imported_packages(path) if name in FORBIDDEN[package]]
    assert not wrong, "\n".join(wrong)


def test_the_cli_and_the_core_build_no_celery_app_on_import() -> None:
    code = ("import sys, producer.cli, producer.export, producer.status, convfarm.engine, convfarm.rundir.shards, "
            "convfarm.runstate; assert 'workers' not in sys.modules, 'workers imported'; "
            "import celery._state as s; assert not list(s._get_active_apps()), 'a Celery app was built'")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_only_the_keys_module_spells_run_keys() -> None:
    """Key names are spelled in one place (convfarm/runstate/keys.py); the registries and dedup use its RunKeys."""
    owners = {REPO / "convfarm" / "runstate" / "keys.py"}
    spelled = [f"{path.relative_to(REPO)}" for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))
               if path not in owners and ("run_key(" in path.read_text() or "convfarm:run:" in path.read_text())]
    assert not spelled, spelled
