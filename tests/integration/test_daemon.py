"""The daemon end to end, driven by desired-file edits only (GitOps), real processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from reconciler.core.spec import ProjectId
from tests.integration.harness import (
    Env,
    desired_yaml,
    environment,
    get,
    make_site,
    wait_for,
)


@pytest.mark.parametrize("watch", [True, False], ids=["watcher", "resync-only"])
@pytest.mark.timeout(180)
def test_gitops_flow_by_file_edits(tmp_path: Path, watch: bool) -> None:
    site = make_site(tmp_path / "site", "version one")
    with environment(tmp_path, watch=watch, resync=30 if watch else 0.5) as env:
        env.start()
        # new file -> running
        env.write("www", desired_yaml(site, generation=1))
        first = env.wait_serving("www", "version one")
        v1 = first.productionHash
        assert first.productionUrl == f"http://localhost:{first.productionPort}"
        assert os.readlink(env.data / "production" / "www" / "current") == v1

        # bump generation -> new version, old stopped, port released
        (site / "dist" / "index.html").write_text("version two")
        env.write("www", desired_yaml(site, generation=2))
        second = env.wait_serving("www", "version two")
        v2 = second.productionHash
        assert v2 != v1 and second.productionPort != first.productionPort
        wait_for(lambda: [i.hash for i in env.instances("www")] == [v2], 10, "old instance gone")
        assert get(f"http://127.0.0.1:{first.productionPort}/") is None
        wait_for(lambda: first.productionPort not in _reserved(env), 5, "old port released")

        # pin -> rollback to v1 (no rebuild)
        jobs_before = len(
            [j for j in env.db.jobs("www", limit=500) if j.type == "production.build"]
        )
        env.write("www", desired_yaml(site, generation=2, version=str(v1)))
        rolled = env.wait_serving("www", "version one")
        assert rolled.productionHash == v1
        assert (
            len([j for j in env.db.jobs("www", limit=500) if j.type == "production.build"])
            == jobs_before
        )
        wait_for(lambda: [i.hash for i in env.instances("www")] == [v1], 10, "v2 stopped")

        # unpin + bump -> forward (a fresh build of latest)
        (site / "dist" / "index.html").write_text("version three")
        env.write("www", desired_yaml(site, generation=3))
        forward = env.wait_serving("www", "version three")
        assert forward.productionHash not in (v1, v2)

        # invalid edit -> keeps serving, error shows the file and line
        path = env.write("www", desired_yaml(site, generation=4) + "replicas: 3\n")
        wait_for(
            lambda: "unknown key 'replicas'" in (env.row("www").productionError or ""),
            10,
            "parse error shown",
        )  # type: ignore[union-attr]
        row = env.row("www")
        assert row is not None and row.productionStatus == "running"
        assert f"{path}:" in (row.productionError or "")
        assert get(f"http://127.0.0.1:{row.productionPort}/") == "version three"

        # fixing the file clears the error
        env.write("www", desired_yaml(site, generation=3))
        wait_for(lambda: env.row("www").productionError is None, 10, "error cleared")  # type: ignore[union-attr]

        # state: stopped -> stopped, hash kept
        env.write("www", desired_yaml(site, generation=3, state="stopped"))
        stopped = env.wait_status("www", "stopped")
        assert stopped.productionPort is None and stopped.productionUrl is None
        assert stopped.productionHash == forward.productionHash
        assert env.instances("www") == []

        # running again, then delete the file -> stopped, releases stay
        env.write("www", desired_yaml(site, generation=3))
        env.wait_serving("www", "version three")
        (env.desired / "www.yaml").unlink()
        env.wait_status("www", "stopped")
        assert env.instances("www") == []
        assert _reserved(env) == {}
        assert env.releases().versions(ProjectId("www"))


def _reserved(env: Env) -> dict[int, str]:
    return {
        int(r["port"]): str(r["project"]) for r in env.db.read("SELECT port, project FROM ports")
    }


@pytest.mark.timeout(120)
def test_failed_build_and_health_timeout_keep_the_old_version(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", "good")
    with environment(tmp_path) as env:
        env.start()
        env.write("www", desired_yaml(site, generation=1))
        good = env.wait_serving("www", "good")

        # a build that fails
        env.write(
            "www",
            desired_yaml(site, generation=2, extra="build:\n  command: echo compiling; exit 4\n"),
        )
        failed = env.wait_status("www", "failed")
        assert failed.productionError is not None
        assert failed.productionError.startswith(
            "Build failed: echo compiling; exit 4 exited with code 4"
        )
        assert "compiling" in failed.productionError
        assert (failed.productionHash, failed.productionPort, failed.productionUrl) == (
            good.productionHash,
            good.productionPort,
            good.productionUrl,
        )
        assert get(f"http://127.0.0.1:{good.productionPort}/") == "good"
        assert os.readlink(env.data / "production" / "www" / "current") == good.productionHash

        # the same failing spec is not retried in a loop
        builds = len([j for j in env.db.jobs("www") if j.type == "production.build"])
        env.resync_and_wait("www")
        assert len([j for j in env.db.jobs("www") if j.type == "production.build"]) == builds

        # a health check that times out: new instance gone, its port released
        (site / "dist" / "index.html").write_text("unhealthy")
        env.write(
            "www",
            f"source: {site}\nproduction:\n  state: running\n  generation: 3\n"
            "health:\n  path: /missing\n  timeout: 1\n  interval: 0.2\n",
        )
        failed = wait_for(
            lambda: (
                (r := env.row("www")) and (r.productionError or "").startswith("Health check") and r
            ),
            20,
            "the health check to fail",
        )
        assert failed.productionStatus == "failed"
        assert failed.productionError.startswith("Health check timeout after 1 second")
        assert failed.productionHash == good.productionHash
        assert [i.hash for i in env.instances("www")] == [good.productionHash]
        reserved = {int(r[0]) for r in env.db.read("SELECT port FROM ports")}
        assert reserved == {good.productionPort}
        assert get(f"http://127.0.0.1:{good.productionPort}/") == "good"

        # any edit of the file tries again
        env.write("www", desired_yaml(site, generation=3))
        env.wait_serving("www", "unhealthy")


@pytest.mark.timeout(60)
def test_stop_during_a_long_build(tmp_path: Path) -> None:
    # a sleep no other test runs: the Docker tests' build steps sleep 600 in containers whose
    # processes this host sees too, and one may still be on its way out
    site = make_site(tmp_path / "site", "x")
    with environment(tmp_path) as env:
        env.start()
        env.write("www", desired_yaml(site, extra="build:\n  command: echo building; sleep 607\n"))
        wait_for(
            lambda: (
                env.db.active_job("www") and env.db.active_job("www").type == "production.build"
            ),
            10,
            "build running",
        )  # type: ignore[union-attr]
        sleeper = wait_for(lambda: _pids_running("sleep 607"), 10, "the build's sleep")
        stopped_at = time.monotonic()
        env.write(
            "www",
            desired_yaml(
                site, state="stopped", extra="build:\n  command: echo building; sleep 607\n"
            ),
        )
        wait_for(lambda: not any(_alive(p) for p in sleeper), 5, "build killed")
        assert time.monotonic() - stopped_at < 1.5  # debounce (0.1 s) + cancel (< 1 s)
        env.wait_status("www", "stopped")
        builds = [j for j in env.db.jobs("www") if j.type == "production.build"]
        assert builds[0].state == "cancelled"
        env.resync_and_wait("www")
        assert env.status("www") == "stopped"
        assert not _pids_running("sleep 607")
        assert env.instances("www") == []


def _pids_running(command: str) -> list[int]:
    """Live processes whose argv is exactly ``command`` (a build's ``sleep N`` itself: a
    substring would also take another process on the host, e.g. a shell's ``sleep 300``)."""
    want = command.split()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            except OSError:
                continue
            if [a.decode(errors="replace") for a in argv] == want and _alive(int(entry)):
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.timeout(90)
def test_drift_repair_and_flap_limit(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", "steady")
    with environment(tmp_path) as env:
        env.start()
        env.write("www", desired_yaml(site))
        env.wait_serving("www", "steady")
        # a deleted current is put back
        (env.data / "production" / "www" / "current").unlink()
        wait_for(
            lambda: os.path.islink(env.data / "production" / "www" / "current"),
            10,
            "current restored",
        )
        # an instance that dies is started again
        instance = env.instances("www")[0]
        os.killpg(instance.pid, 9)
        wait_for(
            lambda: [i.pid for i in env.instances("www")] not in ([], [instance.pid]),
            20,
            "a new instance",
        )
        repaired = env.wait_status("www", "running")
        assert get(f"http://127.0.0.1:{repaired.productionPort}/") == "steady"
        assert (
            env.db.read("SELECT kind FROM deployments WHERE project = 'www' ORDER BY id DESC")[0][0]
            == "repair"
        )
        assert any(j.type == "production.start" for j in env.db.jobs("www"))
        # an instance that keeps dying ends failed instead of flapping
        for _ in range(6):
            if env.status("www") == "failed":
                break
            inst = wait_for(
                lambda: env.status("www") == "running" and env.instances("www"), 20, "running again"
            )
            os.killpg(inst[0].pid, 9)
            wait_for(
                lambda p=inst[0].pid: (
                    env.status("www") != "running" or env.instances("www")[0].pid != p
                ),
                20,
                "noticed",
            )
        failed = env.wait_status("www", "failed", timeout=30)
        assert "keeps dying" in (failed.productionError or "")


@pytest.mark.timeout(120)
def test_twenty_projects_converge(tmp_path: Path) -> None:
    with environment(tmp_path) as env:
        env.start()
        for i in range(20):
            site = make_site(tmp_path / f"site{i}", f"site number {i}")
            env.write(f"p{i:02d}", desired_yaml(site))
        for i in range(20):
            env.wait_serving(f"p{i:02d}", f"site number {i}", timeout=60)
        ports = {env.row(f"p{i:02d}").productionPort for i in range(20)}  # type: ignore[union-attr]
        assert len(ports) == 20


@pytest.mark.timeout(120)
def test_daemon_restart_adopts_and_leaves_sites_running(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", "survivor")
    with environment(tmp_path) as env:
        env.spawn()
        env.write("www", desired_yaml(site))
        row = env.wait_serving("www", "survivor")
        assert env.terminate() == 0
        assert get(f"http://127.0.0.1:{row.productionPort}/") == "survivor"
        env.spawn()
        env.wait_ready()
        again = env.wait_serving("www", "survivor")
        assert again.productionPort == row.productionPort
        assert len(env.instances("www")) == 1


@pytest.mark.parametrize("moment", ["build", "wait-ready", "after-switch"])
@pytest.mark.timeout(120)
def test_kill9_then_restart_converges(tmp_path: Path, moment: str) -> None:
    site = make_site(tmp_path / "site", "one")
    slow_build = "build:\n  command: sleep 3; echo built\n"
    slow_start = "start:\n  command: sleep 2; exec python3 -m http.server $PORT --bind 127.0.0.1\n"
    with environment(tmp_path) as env:
        env.spawn()
        env.write("www", desired_yaml(site, generation=1))
        first = env.wait_serving("www", "one")
        (site / "dist" / "index.html").write_text("two")
        extra = {"build": slow_build, "wait-ready": slow_start, "after-switch": ""}[moment]
        env.write("www", desired_yaml(site, generation=2, extra=extra))
        current = env.data / "production" / "www" / "current"
        if moment == "build":
            wait_for(lambda: _pids_running("sleep 3"), 15, "build running")
        elif moment == "wait-ready":
            wait_for(
                lambda: (
                    env.db.active_job("www")
                    and env.db.active_job("www").type == "production.waitReady"
                ),
                15,
                "waiting ready",
            )  # type: ignore[union-attr]
        else:
            wait_for(lambda: os.readlink(current) != first.productionHash, 15, "switch")
        env.kill9()
        env.spawn()
        env.wait_ready(60)
        done = env.wait_serving("www", "two", timeout=60)
        instances = env.instances("www")
        assert [i.hash for i in instances] == [done.productionHash], "exactly one instance"
        reserved = {int(r[0]) for r in env.db.read("SELECT port FROM ports")}
        assert reserved == {done.productionPort}, "no leaked port"
        assert not _pids_running("sleep 3")
        staging = [
            p for p in (env.data / "production" / "www").iterdir() if p.name.startswith(".staging")
        ]
        assert staging == []
        statuses = {j.state for j in env.db.jobs("www", limit=100)}
        assert "running" not in statuses and "queued" not in statuses
