"""The layering is a contract (import-linter, in pyproject.toml), and it bites."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_api_module_importing_a_runtime_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copytree(REPO / "reconciler", tmp_path / "reconciler")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    views = tmp_path / "reconciler" / "readside" / "views.py"
    views.write_text(views.read_text() + "\nfrom reconciler.runtimes import process  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert (
        "BROKEN" in result.stdout
        and "reconciler.readside.views -> reconciler.runtimes" in result.stdout
    )


def test_the_api_process_loads_no_runtime_engine_or_loop() -> None:
    code = (
        "import sys, reconciler.api.app, reconciler.api.server, reconciler.cli.commands;"
        "print(sorted(m for m in sys.modules if m.startswith(('reconciler.runtimes',"
        " 'reconciler.controller', 'reconciler.daemon', 'docker', 'watchdog'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"
