"""``reconciler plan``: what the next reconcile would do, printed and never done."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from reconciler.stores.state import StateDB
from tests.conftest import PYTHON, REPO
from tests.integration.harness import Env, desired_yaml, make_site, wait_for


def plan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "reconciler", "plan", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_plan_prints_the_steps_and_does_nothing(tmp_path: Path) -> None:
    desired, data = tmp_path / "desired", tmp_path / "data"
    desired.mkdir()
    StateDB(data / "state.db").close()  # a daemon has run on this data dir, and is down
    site = make_site(tmp_path / "site", "hello")
    (desired / "www.yaml").write_text(desired_yaml(site, generation=3))
    (desired / "off.yaml").write_text(desired_yaml(site, state="stopped"))
    where = ["--desired", str(desired), "--data", str(data)]
    before = tree(tmp_path)

    one = plan("www", *where)
    assert one.returncode == 2, one.stdout + one.stderr
    lines = one.stdout.splitlines()
    assert lines[0] == "www (deploy):"
    assert "  - build generation 3, start it, check its health, switch to it" in lines

    everything = plan("--json", *where)
    assert everything.returncode == 2
    plans = {p["project"]: p for p in json.loads(everything.stdout)["projects"]}
    assert plans["www"]["pending"] and plans["www"]["deployment"] == "deploy"
    assert not plans["off"]["pending"] and plans["off"]["steps"] == []

    stopped = plan("off", *where)
    assert stopped.returncode == 0 and stopped.stdout == "off: up to date\n"
    assert tree(tmp_path) == before, "a plan changed a file"
    assert not (data / "production").exists()
    db = StateDB(data / "state.db")
    try:
        assert db.projects() == [] and db.jobs("www") == []
    finally:
        db.close()

    unknown = plan("nope", *where)
    assert unknown.returncode == 1 and "not found" in unknown.stderr


@pytest.mark.timeout(120)
def test_a_converged_project_plans_nothing(live: tuple[Env, str], tmp_path: Path) -> None:
    env, _api = live
    env.write("www", desired_yaml(make_site(tmp_path / "site", "hi")))
    wait_for(lambda: env.row("www") and env.row("www").productionStatus == "running", 30)  # type: ignore[union-attr]
    where = ["--desired", str(env.desired), "--data", str(env.data)]
    result = wait_for(lambda: (r := plan("www", *where)).returncode == 0 and r, 20, "up to date")
    assert result.stdout == "www: up to date\n"
    env.terminate()  # the daemon is down: an edit waits, and the plan shows it
    env.write("www", desired_yaml(make_site(tmp_path / "site", "hi"), state="stopped"))
    pending = plan("www", *where)
    assert pending.returncode == 2, pending.stdout + pending.stderr
    assert pending.stdout.startswith("www (stop):\n  - stop ")
    assert "the project ends stopped" in pending.stdout
    assert env.row("www").productionStatus == "running"  # type: ignore[union-attr]
