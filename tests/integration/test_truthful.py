"""Deploys that tell the truth: what runs is what the desired file asks for, and every answer
(status, history, the CLI, the daemon log) says so."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pytest

from reconciler.cli.client import LocalClient
from reconciler.core.kinds import EdgeMode
from reconciler.core.logfiles import LogLimits
from tests.integration.harness import Env, desired_yaml, environment, get, wait_for
from tests.integration.test_cli_client import cli

pytestmark = pytest.mark.timeout(180)

SERVER = """\
import http.server, os, signal

if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ.get("GREETING", "unset").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def app_site(root: Path) -> Path:
    (root / "dist").mkdir(parents=True)
    (root / "dist" / "server.py").write_text(SERVER)
    return root


def app_yaml(site: Path, greeting: str, *, generation: int = 1, command: str = "") -> str:
    start = command or "exec python3 server.py"
    return desired_yaml(
        site,
        generation=generation,
        extra=f"start:\n  command: {start}\nenv:\n  GREETING: {greeting}\n",
    )


@pytest.mark.parametrize("edge", [EdgeMode.OFF, EdgeMode.ON])
def test_a_settings_change_starts_a_new_instance_of_the_same_release(
    tmp_path: Path, edge: EdgeMode
) -> None:
    site = app_site(tmp_path / "site")
    with environment(tmp_path, edge=edge) as env:
        env.start()
        ops = LocalClient(env.desired, env.data)
        env.write("app", app_yaml(site, "one"))
        first = env.wait_serving("app", "one")
        before = ops.status("app")
        assert before["hash"] == first.productionHash and before["config"] is not None

        # the same dist, new env and a generation bump: a deploy of a new instance
        env.write("app", app_yaml(site, "two", generation=2))
        second = env.wait_serving("app", "two")
        assert second.productionHash == first.productionHash, "the same release"
        after = wait_for(
            lambda: (s := ops.status("app"))["config"] not in (None, before["config"]) and s,
            10,
            "the status names the new settings",
        )
        wait_for(lambda: len(env.instances("app")) == 1, 20, "the old instance retired")
        assert [i.config for i in env.instances("app")] == [after["config"]]
        if edge == EdgeMode.ON:
            assert second.productionPort == first.productionPort
        else:
            assert get(f"http://127.0.0.1:{first.productionPort}/") is None
        (active,) = [v for v in ops.history("app")["versions"] if v["isActive"]]
        assert active["config"] == after["config"]

        # a start command change alone (no bump) converges too: the file is the truth
        env.write(
            "app",
            app_yaml(site, "two", generation=2, command="GREETING=three exec python3 server.py"),
        )
        third = env.wait_serving("app", "three")
        assert third.productionHash == first.productionHash
        wait_for(
            lambda: ops.status("app")["config"] not in (before["config"], after["config"]),
            10,
            "the status names the new settings (written just after the edge switched)",
        )
        ops.close()


def _cli_desired(site: Path, *, build: str = "", extra: str = "") -> str:
    text = (
        f"# follow test\nsource: {site}\nproduction:\n  state: running\n  generation: 1\n"
        f"health:\n  interval: 0.2\n  timeout: 20\n{extra}"
    )
    return text + (f"build:\n  command: {build}\n" if build else "")


@pytest.mark.timeout(240)
def test_follow_ends_on_the_operation_that_was_asked(live: tuple[Env, str], tmp_path: Path) -> None:
    env, base = live
    # a project whose first deploy failed: stop --follow ends at once with Stopped
    broken = tmp_path / "broken"
    (broken / "dist").mkdir(parents=True)
    env.write("bad", _cli_desired(broken, build="echo no; exit 3"))
    env.wait_status("bad", "failed")
    started = time.monotonic()
    stopped = cli(env, base, "remote", "stop", "bad", "--follow", timeout=30)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert stopped.stdout.splitlines()[-1] == "Stopped bad"
    assert "daemon" not in stopped.stdout
    assert time.monotonic() - started < 15

    # stop while the previous deploy still retires an old instance that ignores SIGTERM
    site = app_site(tmp_path / "app")
    slow = "start:\n  command: exec python3 server.py\nenv:\n  IGNORE_TERM: '1'\n  GREETING: "
    env.write("app", _cli_desired(site, extra=slow + "one\n"))
    env.wait_serving("app", "one")
    env.write(
        "app", _cli_desired(site, extra=slow + "two\n").replace("generation: 1", "generation: 2")
    )
    env.wait_serving("app", "two")
    stop = cli(env, base, "local", "stop", "app", "--follow", timeout=60)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "Deployed" not in stop.stdout, stop.stdout
    assert stop.stdout.splitlines()[-1] == "Stopped app"


@pytest.mark.timeout(120)
def test_follow_with_the_daemon_down_says_so_and_ends(
    live: tuple[Env, str], tmp_path: Path
) -> None:
    env, base = live
    site = tmp_path / "site"
    (site / "dist").mkdir(parents=True)
    (site / "dist" / "index.html").write_text("up")
    env.write("www", _cli_desired(site))
    env.wait_serving("www", "up")
    health = httpx.get(f"{base}/healthz").json()
    assert health["daemon"]["running"] is True
    assert env.terminate() == 0

    started = time.monotonic()
    result = cli(env, base, "local", "deploy", "www", "--follow", timeout=60)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(" wait " in ln and "the daemon is not running (it stopped at" in ln for ln in lines)
    assert lines[-1].startswith("Not done yet: the daemon is not running")
    assert "the change is saved" in lines[-1]
    assert took < 30, took
    status = cli(env, base, "local", "status")
    assert "daemon: not running" in status.stdout


@pytest.mark.timeout(180)
def test_failures_say_what_keeps_serving_and_where_the_full_log_is(
    live: tuple[Env, str], tmp_path: Path
) -> None:
    env, base = live
    site = app_site(tmp_path / "app")
    good = "start:\n  command: exec python3 server.py\nenv:\n  GREETING: fine\n"
    env.write("app", _cli_desired(site, extra=good))
    serving = env.wait_serving("app", "fine")

    # new settings whose instance never answers: the health check names the URL it probed
    mute = "start:\n  command: echo mute app starting; exec sleep 600\n"
    env.write(
        "app",
        _cli_desired(site, extra=mute)
        .replace("generation: 1", "generation: 2")
        .replace("timeout: 20", "timeout: 2"),
    )
    row = env.wait_status("app", "failed")
    error = str(row.productionError)
    first = error.splitlines()[0]
    assert "Health check timeout after 2 seconds: GET http://127.0.0.1:" in first
    assert "never answered 2xx (last: ConnectError" in first
    assert f"version {serving.productionHash} keeps serving at {serving.productionUrl}" in first
    assert error.splitlines()[-1] == "Full log: reconciler logs app --log app"
    assert get(str(serving.productionUrl).replace("localhost", "127.0.0.1")) == "fine"

    status = cli(env, base, "remote", "status", "app")
    assert status.returncode == 1
    assert f"still serving: {serving.productionHash} at {serving.productionUrl}" in status.stdout
    everything = cli(env, base, "local", "status")
    assert everything.returncode == 1, "a failed project makes `status` exit 1"
    logs = cli(env, base, "remote", "logs", "app", "--log", "app")
    assert f"==> app.log: version {serving.productionHash} <==" in logs.stdout
    assert "mute app starting" in logs.stdout

    # a first build that fails: its log is kept and `logs` shows it
    broken = tmp_path / "broken"
    (broken / "dist").mkdir(parents=True)
    env.write("nb", _cli_desired(broken, build="echo boom-output; exit 3"))
    failed = env.wait_status("nb", "failed")
    assert str(failed.productionError).endswith("Full log: reconciler logs nb --log build")
    assert "keeps serving" not in str(failed.productionError)
    build = cli(env, base, "local", "logs", "nb", "--log", "build")
    assert build.returncode == 0, build.stderr
    assert "==> build.log: the last build, which failed (no version) <==" in build.stdout
    assert "boom-output" in build.stdout


def test_the_daemon_log_tells_refusals_once_and_a_file_without_final_newline_is_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = tmp_path / "site"
    (site / "dist").mkdir(parents=True)
    (site / "dist" / "index.html").write_text("saved by an editor")
    caplog.set_level(logging.INFO)
    with environment(tmp_path) as env:
        env.start()
        # saved without a final newline, as some editors do by default: read once settled
        env.write("www", desired_yaml(site).rstrip("\n"))
        env.wait_serving("www", "saved by an editor", timeout=15)
        assert not [r for r in caplog.records if "refused" in r.getMessage()]

        # a typo: one warning with path:line:col, however many times the file is read
        env.write(
            "www", desired_yaml(site, generation=2).replace("health:", "buidl:\n  x: 1\nhealth:")
        )
        env.resync_and_wait("www")
        env.resync_and_wait("www")
        refused = [
            r.getMessage() for r in caplog.records if "refused desired file" in r.getMessage()
        ]
        assert len(refused) == 1, refused
        path = env.desired / "www.yaml"
        assert f"{path}:" in refused[0] and "buidl" in refused[0]
        assert "the last good desired state stays in force" in refused[0]

        # fixed: one line saying so
        env.write("www", desired_yaml(site, generation=2))
        wait_for(
            lambda: any(f"accepted {path} again" in r.getMessage() for r in caplog.records),
            10,
            "the recovery logged",
        )

        # a file whose name is no project id: said once
        (env.desired / "Bad Name.yaml").write_text("source: x\n")
        env.resync_and_wait("www")
        env.resync_and_wait("www")
        ignored = [
            r.getMessage() for r in caplog.records if "ignored desired file" in r.getMessage()
        ]
        assert len(ignored) == 1 and "Bad Name.yaml" in ignored[0], ignored


def test_a_running_sites_app_log_is_rotated_by_size(tmp_path: Path) -> None:
    site = app_site(tmp_path / "app")
    # an app that logs a line per request
    (site / "dist" / "server.py").write_text(
        SERVER.replace("pass", "print('GET', 'x' * 500, flush=True)")
    )
    limits = LogLimits(max_bytes=2000, keep=2)
    with environment(tmp_path, extra_config={"logs": limits}) as env:
        env.start()
        assert env.daemon is not None
        env.write("app", app_yaml(site, "chatty"))
        row = env.wait_serving("app", "chatty")
        log = env.data / "production" / "app" / str(row.productionHash) / "logs" / "app.log"
        url = f"http://127.0.0.1:{row.productionPort}/"
        for _round in range(3):
            with httpx.Client() as client:
                for _ in range(8):
                    client.get(url)
            wait_for(lambda: log.stat().st_size > limits.max_bytes, 10, "the log grew")
            assert env.daemon.controller.rotate_logs() == 1
        assert log.stat().st_size < limits.max_bytes
        assert sorted(p.name for p in log.parent.glob("app.log*")) == [
            "app.log",
            "app.log.1",
            "app.log.2",
        ]
        httpx.get(url)
        wait_for(lambda: "GET" in log.read_text(), 10, "the app goes on writing to app.log")
