"""What every figure shares: a real `reconciler run` on a temp dir, timing helpers, and the
probes of a process's memory and CPU. Loopback only; every wait is bounded."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CADDY = str(Path(sys.executable).with_name("caddy"))
BUSYBOX = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p)), None)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile by nearest rank (q=0.99 of 50 samples is the largest but one)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: Sequence[float], unit: str = "ms") -> dict[str, Any]:
    """Median, p99, min, max and count of samples in seconds, reported in ``unit``."""
    scale = {"ms": 1000.0, "s": 1.0}[unit]
    return {
        "unit": unit,
        "median": round(statistics.median(values) * scale, 2),
        "p99": round(pct(values, 0.99) * scale, 2),
        "min": round(min(values) * scale, 2),
        "max": round(max(values) * scale, 2),
        "n": len(values),
    }


def client() -> httpx.Client:
    """A loopback client made before the clock starts (building a TLS context costs ~40 ms)."""
    return httpx.Client(timeout=120, verify=False, trust_env=False)


def site_yaml(source: Path, generation: int, *, version: str = "latest", extra: str = "") -> str:
    return (
        f"source: {source}\nproduction:\n  state: running\n  generation: {generation}\n"
        f"  version: {version}\nhealth:\n  interval: 0.2\n  timeout: 60\nkeep: 3\n{extra}"
    )


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def docker_ok() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def kill_edge(daemon: Daemon) -> None:
    """SIGKILL the daemon's edge, as a reboot would, and wait until it is gone."""
    pid = daemon.edge_pid()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            break
        time.sleep(0.05)


def kill_sites(data: Path) -> int:
    """SIGKILL every process that runs in a release under ``data`` (its sites), as a reboot
    would. Returns how many."""
    killed = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry.name}/cwd").startswith(f"{data}/"):
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed += 1
    return killed


class Daemon:
    """`reconciler run` (daemon, API, edge) on ``root``, with its own port ranges."""

    def __init__(
        self, root: Path, ports: str, internal: str, *extra: str, wait_ready: bool = True
    ) -> None:
        self.root = root
        self.docker_projects: list[str] = []  # containers to remove at stop
        self.desired = root / "desired"
        self.data = root / "data"
        self.desired.mkdir(parents=True, exist_ok=True)
        self.api_port = free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        args = [
            PYTHON, "-m", "reconciler", "run", "--listen", f"127.0.0.1:{self.api_port}",
            "--desired", str(self.desired), "--data", str(self.data), "--port-range", ports,
            "--internal-port-range", internal, "--log-level", "INFO", *extra,
        ]  # fmt: skip
        self.log_path = root / "daemon.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        if wait_ready:
            self.wait_api()

    def wait_api(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
                raise SystemExit("the daemon exited:\n" + "\n".join(tail))
            try:
                if httpx.get(f"{self.api}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise SystemExit("the daemon's API did not come up")

    def write(self, project: str, text: str) -> None:
        """As editors and git do: a temp file renamed over the target."""
        tmp = self.desired / f".{project}.yaml.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.desired / f"{project}.yaml")

    def status(self, project: str) -> dict[str, Any]:
        return httpx.get(f"{self.api}/api/projects/{project}/production", timeout=30).json()  # type: ignore[no-any-return]

    def wait(self, project: str, text: str, timeout: float = 180) -> dict[str, Any]:
        """Until the project runs and its stable URL answers with ``text`` in the body."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(project)
            if status["status"] == "running" and status["port"] and not status["activeJob"]:
                try:
                    if text in httpx.get(f"http://127.0.0.1:{status['port']}/", timeout=2).text:
                        return status
                except httpx.HTTPError:
                    pass
            time.sleep(0.02)
        tail = self.log_path.read_text(errors="replace").splitlines()[-20:]
        raise SystemExit(
            f"{project} did not serve {text!r}: {self.status(project)}\n" + "\n".join(tail)
        )

    @contextlib.contextmanager
    def db(self) -> Iterator[sqlite3.Connection]:
        """The state database, read-only, straight from the file (no API in between)."""
        conn = sqlite3.connect(f"file:{self.data / 'state.db'}?mode=ro", uri=True, timeout=30)
        try:
            yield conn
        finally:
            conn.close()

    def edge_pid(self) -> int:
        return int(json.loads((self.data / "edge" / "caddy.json").read_text())["pid"])

    def log_lines(self, needle: str) -> list[str]:
        self.log.flush()
        return [ln for ln in self.log_path.read_text(errors="replace").splitlines() if needle in ln]

    def stop(self) -> None:
        """Stop the daemon, then what outlives it by design: the edge and the instances."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()
        with contextlib.suppress(OSError, ValueError, KeyError):
            edge = self.edge_pid()
            os.kill(edge, signal.SIGTERM)
            deadline = time.monotonic() + 10  # its ports are free for the next daemon
            while time.monotonic() < deadline and Path(f"/proc/{edge}").exists():
                if "Z" in Path(f"/proc/{edge}/stat").read_text().rsplit(")", 1)[1].split()[0]:
                    break  # exited; nobody reaps it here
                time.sleep(0.05)
        for record in (self.data / "production").glob("*/*/logs/instance*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                os.killpg(int(json.loads(record.read_text())["pid"]), signal.SIGTERM)
        for project in self.docker_projects:
            containers = subprocess.run(
                ["docker", "ps", "-aq", "--filter", f"label=reconciler.project={project}"],
                capture_output=True, text=True, check=False,
            ).stdout.split()  # fmt: skip
            if containers:
                subprocess.run(
                    ["docker", "rm", "-f", *containers], capture_output=True, check=False
                )


class Loops:
    """Request loops against sites while something happens (``with Loops(ports) as loops``):
    for each port a keep-alive client and one that opens a connection per request; counts
    the requests and the failures (a status other than 200, or an HTTP error). A request
    that failed because the server closed a kept-alive connection it was sent on is tried
    once more on a fresh one, as browsers and curl do (an idempotent request may be retried,
    RFC 9110 9.2.2); it counts as failed, and as failed after the retry only when that
    failed too."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = ports
        self.requests = 0
        self.failures: list[str] = []
        self.after_retry: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _get(self, client: httpx.Client, port: int) -> str | None:
        """None when it answered 200, else what went wrong."""
        try:
            if client.get(f"http://127.0.0.1:{port}/").status_code != 200:
                return "status"
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return None

    def _loop(self, port: int, keep_alive: bool) -> None:
        headers = {} if keep_alive else {"Connection": "close"}
        with httpx.Client(timeout=5, headers=headers) as client:
            while not self._stop.is_set():
                failed = self._get(client, port)
                if failed is not None:
                    self.failures.append(failed)
                    closed = keep_alive and failed == "RemoteProtocolError"
                    again = self._get(client, port) if closed else failed
                    if again is not None:
                        self.after_retry.append(again + ("-ka" if keep_alive else "-fresh"))
                self.requests += 1

    def __enter__(self) -> Loops:
        self._threads = [
            threading.Thread(target=self._loop, args=(port, keep))
            for port in self.ports
            for keep in (True, False)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def figures(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failed": len(self.failures),
            "failures": sorted(set(self.failures)),
            "failed_after_retry": len(self.after_retry),
            "failures_after_retry": sorted(set(self.after_retry)),
        }
