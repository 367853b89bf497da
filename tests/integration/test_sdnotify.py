"""The daemon speaks systemd's notify protocol over a real unix datagram socket."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from reconciler.daemon.root import Daemon
from reconciler.daemon.sdnotify import Notifier
from tests.conftest import PYTHON, REPO, free_port
from tests.integration.harness import desired_yaml, environment, make_site


def receive(sock: socket.socket, timeout: float) -> list[str]:
    sock.settimeout(timeout)
    try:
        return sock.recv(4096).decode().splitlines()
    except TimeoutError:
        return []


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.mark.timeout(120)
def test_ready_watchdog_status_stopping(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", "hi")
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    with environment(tmp_path) as env:
        env.desired.mkdir(parents=True)
        env.write("www", desired_yaml(site))
        api_port = free_port()
        environ = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}
        args = [
            PYTHON, "-m", "reconciler", "run", "--listen", f"127.0.0.1:{api_port}",
            "--desired", str(env.desired), "--data", str(env.data),
            "--port-range", f"{env.first_port}-{env.first_port + 199}", "--edge", "off",
        ]  # fmt: skip
        env.proc = subprocess.Popen(
            args, cwd=REPO, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        messages: list[str] = []
        deadline = time.monotonic() + 30
        while "READY=1" not in messages and time.monotonic() < deadline:
            got = receive(sock, 1)
            if "READY=1" in got:
                assert accepts(api_port), "READY=1 came before the API accepted connections"
            messages += got
        assert "READY=1" in messages
        assert any(m.startswith("STATUS=") and "running" in m for m in messages)
        assert env.row("www") is not None, "READY=1 came before the first reconcile"

        pings = [m for _ in range(4) for m in receive(sock, 1) if m == "WATCHDOG=1"]
        assert len(pings) >= 2, "WATCHDOG=1 every half interval while healthy"

        assert env.terminate() == 0
        rest = []
        while got := receive(sock, 1):
            rest += got
        assert "STOPPING=1" in rest
    sock.close()


@pytest.mark.timeout(60)
def test_watchdog_pings_stop_while_the_loop_is_wedged(tmp_path: Path) -> None:
    """The loop's run(), in process, with the clock injected: no 11 s wait for a pulse to age."""
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    offset = [0.0]
    with environment(tmp_path) as env:
        env.desired.mkdir(parents=True)
        daemon = Daemon(env.config(), clock=lambda: time.monotonic() + offset[0])
        daemon.pulse_interval = 0.2
        daemon.notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
        env.daemon = daemon
        runner = threading.Thread(target=daemon.run)
        runner.start()
        try:
            assert "READY=1" in [m for _ in range(10) for m in receive(sock, 0.5)]
            assert [m for _ in range(4) for m in receive(sock, 0.3) if m == "WATCHDOG=1"]

            # wedge the loop: hold the database's write lock, then let the last pulse age out
            blocker = sqlite3.connect(env.data / "state.db", isolation_level=None, timeout=30)
            blocker.execute("BEGIN IMMEDIATE")
            try:
                offset[0] += daemon.pulse_stale + 1
                while receive(sock, 0.3):
                    pass
                stuck = [m for _ in range(5) for m in receive(sock, 0.2) if m == "WATCHDOG=1"]
                assert stuck == [], "pings went on while the loop was stuck"
                assert "not making progress" in daemon.status_line()
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            resumed = [m for _ in range(20) for m in receive(sock, 0.3) if m == "WATCHDOG=1"]
            assert resumed, "pings resume once the loop makes progress again"
        finally:
            daemon.request_stop()
            runner.join(20)
            env.daemon = None
        assert "STOPPING=1" in [m for _ in range(5) for m in receive(sock, 0.3)]
    sock.close()


def test_notifier_parses_the_environment(tmp_path: Path) -> None:
    assert not Notifier({}).enabled
    assert Notifier({"NOTIFY_SOCKET": "@abstract"}).address == "\0abstract"
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000"}).watchdog_interval == 15
    other = str(os.getpid() + 1)
    assert (
        Notifier(
            {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": other}
        ).watchdog_interval
        is None
    )
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "none")}).notify("READY=1") is False


def test_no_child_inherits_the_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made from the process's environment, the notifier takes the protocol's variables out
    of it: a child (a build, systemd-run) cannot write to the unit's socket (systemd logs
    'reception only permitted for main PID' for each such message)."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier()
    assert notifier.address == str(tmp_path / "notify") and notifier.watchdog_interval == 15
    child = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
    assert "NOTIFY_SOCKET" not in child and "WATCHDOG_USEC" not in child
