"""The operator CLI against a real `reconciler run`: locally (files + DB) and over the API."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO
from tests.integration.harness import Env, get, make_site, wait_for


def cli(
    env: Env, base: str, mode: str, *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    where = (
        ["--api", base]
        if mode == "remote"
        else ["--desired", str(env.desired), "--data", str(env.data)]
    )
    return subprocess.run(
        [PYTHON, "-m", "reconciler", *args, *where],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def desired(site: Path, build: str) -> str:
    return (
        f"# cli test\nsource: {site}\nproduction:\n  state: stopped\n  generation: 0\n"
        f"health:\n  interval: 0.2\n  timeout: 20\nbuild:\n  command: {build}\n"
    )


@pytest.mark.parametrize("mode", ["local", "remote"])
@pytest.mark.timeout(180)
def test_cli_commands(live: tuple[Env, str], tmp_path: Path, mode: str) -> None:
    env, base = live
    site = make_site(tmp_path / "site", "cli one")
    env.write("www", desired(site, "echo compiling the site"))

    status = cli(env, base, mode, "status", "www")
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("www  stopped")

    deployed = cli(env, base, mode, "deploy", "www", "--follow")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    lines = deployed.stdout.splitlines()
    assert any("build" in ln and "compiling the site" in ln for ln in lines), deployed.stdout
    assert any(" start " in ln for ln in lines)
    assert lines[-1].startswith("Deployed ") and lines[-1].endswith(
        f"http://localhost:{env.row('www').productionPort}"
    )  # type: ignore[union-attr]
    assert all(ln.startswith("[") for ln in lines[:-1])
    first = env.row("www").productionHash  # type: ignore[union-attr]

    as_json = json.loads(cli(env, base, mode, "status", "www", "--json").stdout)
    assert as_json["status"] == "running" and as_json["hash"] == first

    (site / "dist" / "index.html").write_text("cli two")
    again = cli(env, base, mode, "deploy", "www", "--follow", "--json")
    assert again.returncode == 0
    events = [json.loads(line) for line in again.stdout.splitlines()]
    assert events[-1]["event"] == "stream.end" and events[-2]["event"] == "production.ready"
    second = events[-2]["data"]["hash"]
    assert second != first

    history = cli(env, base, mode, "history", "www")
    assert history.returncode == 0
    assert history.stdout.splitlines()[0].startswith(f"* {second}")
    assert (
        json.loads(cli(env, base, mode, "history", "www", "--json").stdout)["versions"][1]["hash"]
        == first
    )

    back = cli(env, base, mode, "rollback", "www", first)
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == f"Rolled back to version {first}"
    assert get(f"http://127.0.0.1:{env.row('www').productionPort}/") == "cli one"  # type: ignore[union-attr]
    active = cli(env, base, mode, "rollback", "www", first)  # already active: 400, refused
    assert active.returncode == 1 and f"version {first} is already active" in active.stderr
    bad = cli(env, base, mode, "rollback", "www", "NOTAHASH")
    assert bad.returncode == 2 and "toHash" not in bad.stderr
    assert "HASH must be a version: 8 lowercase hex characters" in bad.stderr
    assert cli(env, base, mode, "rollback", "www", "deadbeef").returncode == 1  # not kept: 404

    logs = cli(env, base, mode, "logs", "www")
    assert logs.returncode == 0
    assert "==> build.log" in logs.stdout and "==> app.log" in logs.stdout
    assert "starting" in logs.stdout

    stopped = cli(env, base, mode, "stop", "www", "--follow")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert stopped.stdout.splitlines()[-1] == "Stopped www"
    wait_for(lambda: env.status("www") == "stopped", 10, "stopped")

    everything = cli(env, base, mode, "status")
    assert everything.returncode == 0
    assert everything.stdout.startswith("daemon: running (pid ")
    assert everything.stdout.splitlines()[1] == f"www  stopped  {first}"

    unknown = cli(env, base, mode, "status", "nope")
    assert unknown.returncode == 1 and "not found" in unknown.stderr
    assert cli(env, base, mode, "status", "BAD").returncode == 2
    assert "# cli test" in (env.desired / "www.yaml").read_text()


@pytest.mark.timeout(120)
def test_failed_deploy_exits_1(live: tuple[Env, str], tmp_path: Path) -> None:
    env, base = live
    site = make_site(tmp_path / "site", "x")
    env.write("www", desired(site, "echo oops; exit 2"))
    result = cli(env, base, "remote", "deploy", "www", "--follow")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    failed = next(i for i, ln in enumerate(lines) if ln.startswith("Failed: "))
    assert lines[failed] == "Failed: Build failed: echo oops; exit 2 exited with code 2"
    assert lines[-2:] == ["oops", "Full log: reconciler logs www --log build"], (
        "the error ends with the build's last output lines and where the rest is"
    )
    status = cli(env, base, "local", "status", "www")
    assert status.returncode == 1 and "error: Build failed" in status.stdout


def test_usage_errors_exit_2() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "reconciler", "deploy"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2


def test_unreachable_api_exits_1() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "reconciler", "status", "www", "--api", "http://127.0.0.1:9"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "cannot reach the API" in result.stderr
