"""Breaks a fault-and-abuse probe found, each kept fixed by a test that failed before."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.harness import Env, desired_yaml, environment, wait_for
from tests.integration.test_truthful import app_site, app_yaml
from tests.suites.test_hostile_apps import DAEMONIZE

pytestmark = pytest.mark.timeout(180)


def _listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
    except httpx.HTTPError:
        return False
    return True


@contextlib.contextmanager
def outages(port: int) -> Iterator[list[float]]:
    """Probe ``port`` every 10 ms while the block runs; yields the moments it did not answer."""
    failures: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            if not _listening(port):
                failures.append(time.monotonic())
            time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        yield failures
    finally:
        done.set()
        prober.join()


def _ours(marker: str) -> list[int]:
    """Processes whose command line holds ``marker``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
                state = Path(f"/proc/{entry.name}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if marker.encode() in cmdline and state != b"Z":
                found.append(int(entry.name))
    return found


def test_a_start_command_that_forks_and_exits_is_refused_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    site = app_site(tmp_path / "app")
    marker = f"daemonised-{tmp_path.parent.name}-{tmp_path.name}"
    with environment(tmp_path) as env:
        env.start()
        env.write("app", app_yaml(site, "foreground"))
        good = env.wait_serving("app", "foreground")
        forks = f"nohup python3 server.py {marker} > /dev/null 2>&1 &"
        env.write("app", app_yaml(site, "background", generation=2, command=forks))
        failed = env.wait_status("app", "failed")
        error = str(failed.productionError)
        # how many: the shell's own forks (a subshell for the redirection, nohup before its
        # exec, a python3 that is a pyenv shim running its helpers before its exec) may still
        # be on their way when it is counted
        assert re.search(r"left [1-9] process\(es\) running in the background", error), error
        assert "a start command must stay in the foreground" in error
        assert f"version {good.productionHash} keeps serving" in error
        assert _ours(marker) == [], "the background server was stopped with its instance"
        assert httpx.get(f"http://127.0.0.1:{good.productionPort}/").text == "foreground"

        # the same left-behind processes are stopped when an instance's leader dies later
        late = f"sh -c 'sleep 1; nohup python3 server.py {marker} >/dev/null 2>&1 & sleep 2'"
        env.write("app", app_yaml(site, "late", generation=3, command=f"exec {late}"))
        wait_for(lambda: _ours(marker), 20, "the background server started")
        wait_for(lambda: not _ours(marker), 30, "the leftovers stopped")
        env.write("app", desired_yaml(site, generation=3, state="stopped"))
        env.wait_status("app", "stopped")
        time.sleep(0.5)
        assert _ours(marker) == []


ESCAPE = """import os, subprocess, sys
subprocess.Popen(["python3", "-c", "import time; time.sleep(600)", *sys.argv[1:]],
                 start_new_session=True)
os.execvp("python3", ["python3", "server.py"])
"""


def test_a_start_command_that_daemonizes_with_setsid_is_refused_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """A double fork and ``setsid`` (as ``gunicorn --daemon``, nginx and php-fpm do) leaves
    the instance's session: its server is found by the instance's mark all the same, the
    start is refused, and nothing of it is left to answer the next version's health check;
    a helper that leaves the session of an app in the foreground is stopped with it."""
    site = app_site(tmp_path / "app")
    (site / "dist" / "daemonize.py").write_text(DAEMONIZE)  # a double fork and setsid
    (site / "dist" / "escape.py").write_text(ESCAPE)
    marker = f"setsid-{tmp_path.parent.name}-{tmp_path.name}"
    with environment(tmp_path) as env:
        env.start()
        env.write("app", app_yaml(site, "one"))
        good = env.wait_serving("app", "one")
        command = f"exec python3 daemonize.py {marker}"
        env.write("app", app_yaml(site, "two", generation=2, command=command))
        failed = env.wait_status("app", "failed")
        error = str(failed.productionError)
        assert "a start command must stay in the foreground" in error, error
        assert f"version {good.productionHash} keeps serving" in error
        wait_for(lambda: not _ours(marker), 10, "the daemonized server stopped")
        assert httpx.get(f"http://127.0.0.1:{good.productionPort}/").text == "one"

        env.write("app", app_yaml(site, "three", generation=3))
        env.wait_serving("app", "three")  # its own answer, nobody else's

        env.write(
            "app", app_yaml(site, "four", generation=4, command=f"exec python3 escape.py {marker}")
        )
        env.wait_serving("app", "four")
        assert _ours(marker), "the helper runs, in a session of its own"
        env.write("app", app_yaml(site, "four", generation=4).replace("running", "stopped"))
        env.wait_status("app", "stopped")
        wait_for(lambda: not _ours(marker), 10, "the helper stopped with its instance")


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_a_lost_state_database_is_rebuilt_from_disk_without_an_outage(
    tmp_path: Path, kind: str
) -> None:
    """Edge off (every instance on its own port): the restarted daemon rebuilds its records
    from the releases, ``current`` and the instances that run, keeps them serving, and does
    not rebuild."""
    site = app_site(tmp_path / "app")
    (site / "dist" / "index.html").write_text("kept")
    text = app_yaml(site, "kept") if kind == "dynamic" else desired_yaml(site)
    with environment(tmp_path) as env:
        env.start()
        env.write("app", text)
        row = env.wait_serving("app", "kept")
        url = f"http://127.0.0.1:{row.productionPort}/"
        env.stop()
        env.db.close()
        env._db = None  # the test's own connection must not keep the lost file alive
        for suffix in ("", "-wal", "-shm"):
            (env.data / f"state.db{suffix}").unlink(missing_ok=True)
        with outages(int(row.productionPort or 0)) as failures:
            env.start()
            env.resync_and_wait("app")
            env.resync_and_wait("app")
        again = env.wait_serving("app", "kept")
        assert again.productionHash == row.productionHash
        assert again.productionPort == row.productionPort, "the same address"
        assert httpx.get(url).status_code == 200
        assert failures == []
        builds = [j for j in env.db.jobs("app", limit=100) if j.type == "production.build"]
        assert builds == [], "nothing was rebuilt"
        if kind == "dynamic":
            assert [i.hash for i in env.instances("app")] == [row.productionHash]


def _lose_state(env: Env) -> None:
    env.stop()
    env.db.close()
    env._db = None  # the test's own connection must not keep the lost file alive
    for suffix in ("", "-wal", "-shm"):
        (env.data / f"state.db{suffix}").unlink(missing_ok=True)


@pytest.mark.parametrize("kind", ["redeployed", "failed start", "failed first build"])
def test_a_lost_state_database_neither_builds_again_nor_retries_a_failure(
    tmp_path: Path, kind: str
) -> None:
    """A deploy whose content was kept already (the same release, made for an older
    generation), a start that failed, a first build that failed: after the state database
    is lost, the record rebuilt from disk says the same, and no job runs (before: the
    first two built again and the start was tried again)."""
    site = app_site(tmp_path / "app")
    (site / "dist" / "index.html").write_text("kept")
    with environment(tmp_path) as env:
        env.start()
        if kind == "failed first build":
            env.write("app", desired_yaml(site, extra="build:\n  command: exit 3\n"))
        else:
            env.write("app", app_yaml(site, "kept"))
            env.wait_serving("app", "kept")
            command = "exit 3" if kind == "failed start" else ""
            env.write("app", app_yaml(site, "kept", generation=2, command=command))
        if kind == "redeployed":
            wait_for(lambda: (r := env.row("app")) is not None and r.observedGeneration == 2
                     and env.db.open_deployment("app") is None, 30, "generation 2 deployed")  # fmt: skip
        else:
            env.wait_status("app", "failed")
        before = env.row("app")
        assert before is not None
        _lose_state(env)
        env.start()
        env.resync_and_wait("app")
        env.resync_and_wait("app")
        after = env.row("app")
        assert after is not None
        assert env.db.jobs("app", limit=100) == [], "nothing built or started again"
        assert (after.productionStatus, after.observedGeneration, after.failedDigest) == (
            before.productionStatus, before.observedGeneration, before.failedDigest)  # fmt: skip
        assert after.productionError == before.productionError
        if kind != "failed first build":
            assert httpx.get(f"http://127.0.0.1:{after.productionPort}/").status_code == 200


def test_a_torn_write_never_stops_a_running_site(tmp_path: Path) -> None:
    """A rewrite in two chunks 0.5 s apart, the first cut at a line end (just ``source:``),
    and a file without its production: block: the site serves throughout."""
    site = tmp_path / "site"
    (site / "dist").mkdir(parents=True)
    (site / "dist" / "index.html").write_text("up")
    with environment(tmp_path) as env:
        env.start()
        env.write("www", desired_yaml(site))
        row = env.wait_serving("www", "up")
        port = int(row.productionPort or 0)
        with outages(port) as failures:
            path = env.desired / "www.yaml"
            full = desired_yaml(site)
            with open(path, "w") as fh:  # written in place, in two chunks
                fh.write(f"source: {site}\n")
                fh.flush()
                time.sleep(0.5)
                fh.write(full.split("\n", 2)[2])
            env.resync_and_wait("www")
            # the production block deleted: the site keeps its production state
            env.write("www", f"source: {site}\n")
            env.resync_and_wait("www")
            time.sleep(1.5)
            env.resync_and_wait("www")
        assert failures == []
        assert env.status("www") == "running"
        from reconciler.cli.client import LocalClient

        client = LocalClient(env.desired, env.data)
        note = client.status("www")["note"]
        assert "keeps its last production state (running)" in note
        client.close()

        # a stop that holds is carried out (after the settle window)
        env.write("www", desired_yaml(site, state="stopped"))
        env.wait_status("www", "stopped", timeout=10)
        wait_for(lambda: not _listening(port), 10, "the site stopped")


def test_a_build_left_by_a_killed_daemon_is_stopped_at_startup(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "dist").mkdir(parents=True)
    (site / "dist" / "index.html").write_text("built")
    marker = f"orphan-build-{tmp_path.parent.name}-{tmp_path.name}"
    build = f"build:\n  command: \"sleep 300 & exec sh -c 'sleep 400; : {marker}'\"\n"
    with environment(tmp_path) as env:
        env.spawn()
        env.write("www", desired_yaml(site, extra=build))

        # the build's shell forks `sleep 300 &` and, for a moment, the fork carries the same
        # command line before it execs: wait for the one build process, not the first sight
        def one_build() -> list[int] | None:
            found = _ours(marker)
            return found if len(found) == 1 else None

        first = wait_for(one_build, 20, "the build runs")
        assert len(first) == 1
        env.kill9()
        assert _ours(marker) == first, "a killed daemon leaves its build running"
        env.spawn()
        wait_for(lambda: first[0] not in _ours(marker), 20, "the orphaned build stopped")
        wait_for(lambda: len(_ours(marker)) == 1, 20, "one build runs again, not two")
        assert len(_ours(marker)) == 1
        env.write("www", desired_yaml(site, state="stopped", extra=build))
        env.wait_status("www", "stopped")
        wait_for(lambda: not _ours(marker), 10, "the cancelled build stopped")


def test_a_build_started_just_before_the_daemon_died_is_found_by_its_mark(tmp_path: Path) -> None:
    """The daemon killed between starting a build and writing its record: the build's own
    environment says whose it is, and the next start stops it (and what it started)."""
    import subprocess

    from reconciler.runtimes.process.processes import BUILD_MARK, build_mark, kill_orphan_builds
    from reconciler.stores.releases import ReleaseStore

    store = ReleaseStore(tmp_path / "production")
    store.root.mkdir(parents=True)
    environ = {**os.environ, BUILD_MARK: build_mark(store, "www")}
    build = subprocess.Popen(["sh", "-c", "sleep 300 & exec sleep 301"], env=environ,
                             start_new_session=True)  # fmt: skip
    other = subprocess.Popen(["sleep", "302"], start_new_session=True)  # not a build of ours
    try:
        wait_for(lambda: _children(build.pid) == 1, 10, "the build's child started")
        assert kill_orphan_builds(store) == ["www"]
        assert build.wait(10) is not None and _children(build.pid) == 0
        assert other.poll() is None, "only this data dir's builds"
    finally:
        for proc in (build, other):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(10)


def _children(sid: int) -> int:
    """Members of session ``sid`` other than its leader."""
    found = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != sid:
            with contextlib.suppress(OSError, IndexError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                found += fields[0] != "Z" and int(fields[3]) == sid
    return found


def test_a_restored_older_backup_of_the_state_database_keeps_serving(tmp_path: Path) -> None:
    """The README's backup advice: a state.db backed up at v1 and restored after v2 went
    live is reconciled against what runs: v2 keeps serving throughout."""
    site = app_site(tmp_path / "app")
    with environment(tmp_path) as env:
        env.start()
        env.write("app", app_yaml(site, "one"))
        env.wait_serving("app", "one")
        backup = tmp_path / "backup.db"
        source = sqlite3.connect(env.data / "state.db")
        target = sqlite3.connect(backup)
        source.backup(target)  # what `sqlite3 state.db ".backup backup.db"` does
        source.close()
        target.close()
        env.write("app", app_yaml(site, "two", generation=2))
        row = env.wait_serving("app", "two")
        env.stop()
        env.db.close()
        env._db = None
        for suffix in ("-wal", "-shm"):
            (env.data / f"state.db{suffix}").unlink(missing_ok=True)
        shutil.copy(backup, env.data / "state.db")
        with outages(int(row.productionPort or 0)) as failures:
            env.start()
            again = env.wait_serving("app", "two", timeout=60)
        assert failures == []
        assert again.productionHash == row.productionHash
        wait_for(lambda: len(env.instances("app")) == 1, 20, "one instance")


def test_what_a_build_leaves_running_outside_its_session_is_stopped(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "dist").mkdir(parents=True)
    (site / "dist" / "index.html").write_text("built")
    marker = f"build-setsid-{tmp_path.parent.name}-{tmp_path.name}"
    (site / "linger.py").write_text(
        "import os, sys, time\nif os.fork():\n    sys.exit(0)\nos.setsid()\nif os.fork():\n"
        "    sys.exit(0)\ntime.sleep(600)\n"
    )
    build = f"build:\n  command: python3 linger.py {marker}\n  output: dist\n"
    with environment(tmp_path / "run") as env:
        env.start()
        env.write("www", desired_yaml(site, extra=build))
        env.wait_serving("www", "built")
        wait_for(lambda: not _ours(marker), 10, "the build's leftover stopped with the build")
