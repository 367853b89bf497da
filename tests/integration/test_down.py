"""``reconciler down`` takes the host down cleanly (every site, the edge, the daemon) without
touching a desired file, and ``reconciler run`` brings it all back; a daemon that serves
nothing takes its edge with it when it ends."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from reconciler.core.kinds import EdgeMode
from tests.conftest import PYTHON, REPO
from tests.integration.harness import Env, desired_yaml, environment, get, make_site, wait_for

APP = "start:\n  command: exec python3 -m http.server $PORT\n"


def down(env: Env) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "reconciler", "down", "--desired", str(env.desired),
         "--data", str(env.data), "--edge", "on"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def edge_pid(env: Env) -> int | None:
    try:
        pid = int(json.loads((env.data / "edge" / "caddy.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None
    return pid if Path(f"/proc/{pid}").exists() and not _zombie(pid) else None


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_down_stops_every_site_the_edge_and_the_daemon_and_run_brings_them_back(
    tmp_path: Path,
) -> None:
    with environment(tmp_path, edge=EdgeMode.ON) as env:
        env.desired.mkdir(parents=True)
        site = make_site(tmp_path / "site", "static one")
        app = make_site(tmp_path / "app", "app one")
        env.write("www", desired_yaml(site))
        env.write("app", desired_yaml(app, extra=APP))
        files = {p.name: p.read_text() for p in env.desired.iterdir()}
        env.spawn()
        env.wait_ready(60)
        www = env.wait_serving("www", "static one", 60)
        env.wait_serving("app", "app one", 60)
        assert edge_pid(env) is not None and env.instances("app")

        done = down(env)
        assert done.returncode == 0, done.stderr
        assert "stopped every site and the edge" in done.stdout
        assert env.proc is not None and env.proc.wait(30) == 0, "the daemon ended"
        env.proc = None
        assert env.instances("app") == [] and edge_pid(env) is None
        assert get(f"http://127.0.0.1:{www.productionPort}/") is None
        assert {p.name: p.read_text() for p in env.desired.iterdir()} == files
        assert env.status("www") == "stopped" and env.status("app") == "stopped"

        env.spawn()  # what `reconciler run` or the unit does
        env.wait_ready(60)
        assert env.wait_serving("www", "static one", 60).productionPort == www.productionPort
        env.wait_serving("app", "app one", 60)


def test_down_without_a_daemon_stops_what_one_left_running(tmp_path: Path) -> None:
    with environment(tmp_path, edge=EdgeMode.ON) as env:
        env.desired.mkdir(parents=True)
        app = make_site(tmp_path / "app", "left running")
        env.write("app", desired_yaml(app, extra=APP))
        env.spawn()
        env.wait_ready(60)
        env.wait_serving("app", "left running", 60)
        env.kill9()  # sites outlive a killed daemon, and so does the edge
        assert env.instances("app") and edge_pid(env) is not None
        done = down(env)
        assert done.returncode == 0, done.stderr
        assert env.instances("app") == [] and edge_pid(env) is None


def test_a_daemon_that_serves_nothing_stops_its_edge_as_it_ends(tmp_path: Path) -> None:
    with environment(tmp_path, edge=EdgeMode.ON) as env:
        env.desired.mkdir(parents=True)
        site = make_site(tmp_path / "site", "one")
        env.write("www", desired_yaml(site))
        env.spawn()
        env.wait_ready(60)
        env.wait_serving("www", "one", 60)
        env.write("www", desired_yaml(site, state="stopped"))
        env.wait_status("www", "stopped", 30)
        assert edge_pid(env) is not None
        assert env.terminate() == 0
        wait_for(lambda: edge_pid(env) is None, 20, "the edge stopped with the daemon")
