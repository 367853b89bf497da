"""Faults of what the daemon stands on: the disk filling up while a release is staged, and
the Docker engine going away (stopped and started again while idle and during a deploy).

The disk-full case runs in ``make test`` (the data dir on a small tmpfs; needs root to
mount). The engine restarts stop and start the machine's dockerd, so they run only in
``make faults`` (ENGINE_FAULTS=1), and leave the engine running as they found it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from reconciler.api.app import create_app
from tests.docker.conftest import docker_client, make_project  # noqa: F401 - a fixture
from tests.integration.harness import Env, desired_yaml, environment, get, wait_for

ENGINE_FAULTS = os.environ.get("ENGINE_FAULTS") == "1"


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.timeout(120)
def test_a_full_disk_while_staging_fails_cleanly_and_the_site_keeps_serving(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    (site / "dist").mkdir(parents=True)
    (site / "dist" / "index.html").write_text("small")
    with (
        small_disk(tmp_path / "disk", "6m") as disk,
        environment(tmp_path / "run", extra_config={"min_free_bytes": 0}) as env,
    ):
        env.data.mkdir(parents=True)
        (env.data / "production").symlink_to(disk, target_is_directory=True)  # releases only
        env.start()
        env.write("www", desired_yaml(site))
        row = env.wait_serving("www", "small")
        (site / "dist" / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
        (site / "dist" / "index.html").write_text("big")
        env.write("www", desired_yaml(site, generation=2))
        errored = env.wait_status("www", "error", timeout=30)
        # stopped as its copies reached the free space (a disk filled by something else
        # midway fails with ENOSPC: the same clean-up, "the disk is full")
        assert "no room for the release" in str(errored.productionError)
        production = disk / "www"
        assert not [p for p in production.iterdir() if p.name.startswith(".staging-")]
        assert get(f"http://127.0.0.1:{row.productionPort}/") == "small"
        # room again: the retry (backoff) deploys it
        (site / "dist" / "big.bin").write_bytes(b"x" * 1024)
        env.daemon.controller.enqueue("www")  # type: ignore[union-attr]
        env.wait_serving("www", "big", timeout=90)


@pytest.mark.timeout(180)
def test_a_release_that_would_fill_the_disk_stops_short_and_the_state_recovers(
    tmp_path: Path,
) -> None:
    """The whole data dir on a 24 MiB disk that must keep 8 MiB free: an 18 MiB release is
    stopped before it takes that room, and the daemon stays up; a disk filled by something
    else stops the state's writes (said so by /healthz, not "not running"), and they resume
    when there is room again."""
    site = tmp_path / "site"
    (site / "dist").mkdir(parents=True)
    (site / "dist" / "index.html").write_text("small")
    with (
        environment(tmp_path / "run", extra_config={"min_free_bytes": 8 << 20}) as env,
        small_disk(env.data, "24m") as disk,
    ):
        try:
            _fill_and_recover(env, site, disk)
        finally:
            env.cleanup()  # its instances, while the disk that records them is mounted


def _fill_and_recover(env: Env, site: Path, disk: Path) -> None:
    env.start()
    api = create_app(env.config()).test_client()
    env.write("www", desired_yaml(site))
    row = env.wait_serving("www", "small")
    (site / "dist" / "big.bin").write_bytes(os.urandom(18 << 20))
    (site / "dist" / "index.html").write_text("big")
    env.write("www", desired_yaml(site, generation=2))
    errored = env.wait_status("www", "error", timeout=30)
    assert "no room for the release" in str(errored.productionError)
    assert shutil.disk_usage(disk).free > 7 << 20, "the room kept free was not taken"
    assert get(f"http://127.0.0.1:{row.productionPort}/") == "small"
    assert api.get("/healthz").json["daemon"]["running"] is True  # type: ignore[index]

    # SQLite writes on into the room its log file already has (reused after a checkpoint):
    # empty it first, so that the writes after the fill need room the disk no longer has
    with contextlib.closing(sqlite3.connect(env.data / "state.db", timeout=30)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    filler = disk / "filler"  # something else fills the disk: the state cannot be written
    with open(filler, "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\1" * (1 << 16))
            fh.flush()

    def said() -> dict[str, Any] | None:
        daemon = api.get("/healthz").json["daemon"]  # type: ignore[index]
        return daemon if "cannot write its state" in daemon["message"] else None

    # (a write that fits in the space SQLite's log already holds may still go through)
    shown = wait_for(said, 40, "/healthz to say the state cannot be written")
    assert shown["running"] is False and "is full" in shown["message"]
    assert f"pid {os.getpid()} runs" in shown["message"]
    assert get(f"http://127.0.0.1:{row.productionPort}/") == "small", "still serving"

    filler.unlink()
    (site / "dist" / "big.bin").write_bytes(b"x" * 1024)
    env.write("www", desired_yaml(site, generation=3))
    env.wait_serving("www", "big", timeout=60)
    wait_for(lambda: api.get("/healthz").json["daemon"]["running"], 30, "running again")  # type: ignore[index]


PIDFILE = Path("/var/run/docker.pid")


def _dockerd() -> tuple[int, list[str]] | None:
    """The machine's engine (its pid file's process, a dockerd): pid and command line. Other
    engines on the machine (the multi-node suite's) are not it."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(PIDFILE.read_text().strip())
        argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
        if argv and argv[0].endswith("dockerd"):
            return pid, argv
    return None


def _restart_engine(down: float) -> None:
    """Stop the machine's dockerd (its containers stop with it), wait ``down`` seconds, start
    it again with the same command line, and wait until it answers."""
    found = _dockerd()
    assert found is not None, f"no dockerd process to restart ({PIDFILE})"
    pid, argv = found
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 60, "dockerd stopped")
    time.sleep(down)
    with open("/tmp/dockerd-faults.log", "ab") as log:  # setsid -f: not our child
        subprocess.run(["setsid", "-f", *argv], stdout=log, stderr=subprocess.STDOUT, check=True)
    wait_for(_engine_answers, 60, "dockerd answers again")


def _engine_answers() -> bool:
    try:  # (wait_for raises what is not "not yet": an engine not up yet is not yet)
        client = docker.from_env(timeout=5)
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    except docker.errors.DockerException:
        return False
    finally:
        client.close()


SERVER = """\
import http.server, os
page = open("index.html", "rb").read()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""
STAGES = {"build": "production.build", "start": "production.start",
          "probe": "production.waitReady"}  # fmt: skip


FILLS = [(stage, kind, where) for stage in STAGES for kind in ("static", "dynamic")
         for where in ("data", "releases")]  # fmt: skip
SLICE = [("build", "static", "releases"), ("probe", "dynamic", "data")]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("stage", "kind", "where"), FILLS if ENGINE_FAULTS else SLICE)
def test_a_disk_filled_at_each_stage_of_a_deploy(
    tmp_path: Path, stage: str, kind: str, where: str
) -> None:
    """A 24 MiB disk, holding the whole data dir or only the releases, that something else
    fills the moment a deploy reaches its build, its start or its first probe: the deploy
    ends (done, or retried or failed with a message that says why), or /healthz says the
    state cannot be written; what is served is what the status names, and once there is
    room again the new version serves. (``make test``: two of the twelve.)"""
    site = tmp_path / "site"
    (site / "dist").mkdir(parents=True)
    (site / "dist" / "index.html").write_text("one")
    (site / "dist" / "server.py").write_text(SERVER)
    extra = "build:\n  command: sleep 0.5\n  output: dist\n"
    if kind == "dynamic":
        extra += "start:\n  command: exec python3 server.py\n"
    with environment(tmp_path / "run", extra_config={"min_free_bytes": 0}) as env:
        if where == "releases":
            env.data.mkdir(parents=True)
        mount = env.data if where == "data" else env.data / "production"
        with small_disk(mount, "24m") as disk:
            try:
                _fill_at(env, site, disk, STAGES[stage], extra)
            finally:
                env.cleanup()


def _serves_what_it_says(env: Env) -> str | None:
    """The page the status's address answers, when it is the page of the version the status
    names (None otherwise)."""
    row = env.row("www")
    if row is None or row.productionPort is None or row.productionHash is None:
        return None
    named = env.data / "production" / "www" / row.productionHash / "dist" / "index.html"
    answer = get(f"http://127.0.0.1:{row.productionPort}/")
    return answer if answer is not None and named.read_text() == answer else None


def _fill_at(env: Env, site: Path, disk: Path, job_type: str, extra: str) -> None:
    env.start()
    api = create_app(env.config()).test_client()
    env.write("www", desired_yaml(site, extra=extra))
    env.wait_serving("www", "one")
    (site / "dist" / "index.html").write_text("two")
    with contextlib.closing(sqlite3.connect(env.data / "state.db", timeout=30)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no room left in SQLite's own log
    env.write("www", desired_yaml(site, generation=2, extra=extra))
    production = env.data / "production" / "www"
    kept = {p.name for p in production.iterdir() if len(p.name) == 8}

    def reached() -> bool:
        if job_type == "production.start":  # the moment its release is complete
            return len({p.name for p in production.iterdir() if len(p.name) == 8} - kept) > 0
        job = env.db.active_job("www")
        return job is not None and job.type == job_type

    deadline = time.monotonic() + 30
    while not reached():
        assert time.monotonic() < deadline, f"the deploy never reached {job_type}"
        time.sleep(0.001)
    filler = disk / "filler"
    with open(filler, "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\1" * (1 << 16))
            fh.flush()

    # the deploy ends (done, or a retry waits), or its end cannot be written down and
    # /healthz says so; it never hangs unsaid
    def settled() -> str | None:
        if env.db.open_deployment("www") is None:
            return "ended"
        message = api.get("/healthz").json["daemon"]["message"]  # type: ignore[index]
        return "state unwritable" if "cannot write its state" in message else None

    how = wait_for(settled, 60, "the deploy ends, or /healthz says the state cannot be written")
    assert _serves_what_it_says(env) in ("one", "two"), "what is served is what status names"
    row = env.row("www")
    assert row is not None
    if row.productionStatus in ("error", "failed"):
        assert row.productionError, "a deploy that did not go through says why"
    said = (row.productionError or "").splitlines()[0][:120] if row.productionError else ""
    print(f"\ndisk full at {job_type}: {how}, status {row.productionStatus} {said}")
    filler.unlink()
    wait_for(lambda: api.get("/healthz").json["daemon"]["running"], 40, "running")  # type: ignore[index]
    env.daemon.controller.enqueue("www")  # type: ignore[union-attr]
    try:
        env.wait_serving("www", "two", timeout=60)
    except AssertionError:  # a failure is final for its generation: a new deploy
        env.write("www", desired_yaml(site, generation=3, extra=extra))
        env.wait_serving("www", "two", timeout=60)
    assert _serves_what_it_says(env) == "two"
    assert not [p for p in production.iterdir() if p.name.startswith(".staging-")]


# last in the file: the sockets docker-py leaks while the engine restarts are collected after it,
# and no test after it is charged with them
@pytest.mark.docker
# docker-py leaks the socket of a connect() that fails while the engine's socket goes away
# (its UnixHTTPConnection never closes it); the daemon survives it, the warning is theirs.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.skipif(not ENGINE_FAULTS, reason="restarts the machine's dockerd: make faults")
@pytest.mark.timeout(400)
@pytest.mark.usefixtures("docker_client")
def test_the_engine_restarted_while_idle_and_during_a_deploy(tmp_path: Path) -> None:
    source = make_project(tmp_path / "src", "engine one")
    project = "engineflt"
    with environment(tmp_path, runtime="docker") as env:
        prefix = env.config().docker_prefix
        try:
            env.start()
            env.write(project, desired_yaml(source, runtime="docker"))
            env.wait_serving(project, "engine one", timeout=120)

            # idle: the engine goes away and comes back; the site is served again
            _restart_engine(down=2)
            env.wait_serving(project, "engine one", timeout=120)

            # during a deploy: the build or start fails transiently and is retried
            (source / "site" / "index.html").write_text("engine two")
            env.write(project, desired_yaml(source, runtime="docker", generation=2))
            wait_for(lambda: env.db.active_job(project) is not None, 30, "the deploy runs")
            _restart_engine(down=2)
            env.wait_serving(project, "engine two", timeout=180)

            # the event stream reconnected: a container removed by hand comes back fast
            client = docker.from_env()

            def ours() -> list[str]:
                found = client.containers.list(filters={"label": f"reconciler.project={project}"})
                return [c.name for c in found]

            (name,) = wait_for(lambda: len(ours()) == 1 and ours(), 30, "one container")
            client.containers.get(name).remove(force=True)
            client.close()
            env.wait_serving(project, "engine two", timeout=30)
        finally:
            env.stop()
            client = docker.from_env()
            for c in client.containers.list(
                all=True, filters={"label": f"reconciler.project={project}"}
            ):
                c.remove(force=True)
            for image in client.images.list():
                for tag in image.tags:
                    if tag.startswith(prefix):
                        client.images.remove(tag, force=True)
            client.close()
            shutil.rmtree(tmp_path / "src", ignore_errors=True)
            gc.collect()  # docker-py's leaked sockets warn here (ignored), not in a later test
