"""A real daemon on tmp dirs, with helpers to edit desired files and wait for outcomes."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from reconciler.core.config import Config, PortRange
from reconciler.core.kinds import EdgeMode
from reconciler.core.spec import ProjectId
from reconciler.daemon.root import Daemon
from reconciler.edge.caddy import CaddyProcess, Paths, default_binary
from reconciler.runtimes.process.runtime import ProcessRuntime
from reconciler.stores.ports import port_is_free
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import ProjectRow, StateDB
from tests.conftest import PYTHON, REPO

# what a predicate may raise while the thing it waits for is not there yet: a row not
# written (None has no attribute), a server not listening, a file not made, a JSON body cut
NOT_YET: tuple[type[BaseException], ...] = (
    AttributeError, KeyError, IndexError, OSError, ValueError, httpx.HTTPError, sqlite3.Error,
)  # fmt: skip


def wait_for(predicate: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    """The predicate's first truthy answer. An exception of ``NOT_YET`` counts as "not yet"
    (the last one is the cause of the timeout's error); any other is raised at once, so a
    bug in a predicate shows up as itself, not as a timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except NOT_YET as exc:
            error = exc
        else:
            error = None
            if last:
                return last
        time.sleep(0.02)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last: {error or last!r})"
    ) from error


def get(url: str) -> str | None:
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def make_site(root: Path, html: str) -> Path:
    (root / "dist").mkdir(parents=True, exist_ok=True)
    (root / "dist" / "index.html").write_text(html)
    return root


def desired_yaml(
    source: Path,
    *,
    state: str = "running",
    version: str = "latest",
    generation: int = 1,
    extra: str = "",
    runtime: str = "process",
) -> str:
    return (
        f"# managed by the tests\nsource: {source}\nruntime: {runtime}\n"
        f'production:\n  state: {state}\n  version: "{version}"\n  generation: {generation}\n'
        f"health:\n  timeout: 20\n  interval: 0.2\n{extra}"
    )


@dataclass
class Env:
    root: Path
    first_port: int
    watch: bool = True
    resync: float = 30.0
    runtime: str = "process"
    edge: EdgeMode = EdgeMode.OFF
    extra_config: dict[str, Any] = field(default_factory=dict)
    daemon: Daemon | None = None
    proc: subprocess.Popen[bytes] | None = None
    _db: StateDB | None = field(default=None, repr=False)
    _notify: socket.socket | None = field(default=None, repr=False)

    @property
    def desired(self) -> Path:
        return self.root / "desired"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def db(self) -> StateDB:
        if self._db is None:
            self._db = StateDB(self.data / "state.db")
        return self._db

    def config(self) -> Config:
        values: dict[str, Any] = {
            "desired_dir": self.desired,
            "data_dir": self.data,
            "port_range": PortRange(self.first_port, self.first_port + 199),
            "default_runtime": self.runtime,
            "resync_interval": self.resync,
            "health_interval": 0.5,
            "watch": self.watch,
            "docker_prefix": f"rtest{self.first_port}",
            "edge": self.edge,
            "internal_port_range": PortRange(self.first_port + 200, self.first_port + 399),
            "drain": 0.2,
            "stop_grace": 3,
        }
        return Config(**{**values, **self.extra_config})

    # -- in-process daemon -----------------------------------------------------------------

    def start(self) -> Daemon:
        self.desired.mkdir(parents=True, exist_ok=True)
        self.daemon = Daemon(self.config())
        self.daemon.start()
        return self.daemon

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.shutdown()
            self.daemon = None

    def resync_and_wait(self, project: str, timeout: float = 10) -> None:
        """Ask the in-process daemon for a full resync and wait until ``project`` has been
        reconciled once more (an observable event, not a sleep)."""
        assert self.daemon is not None
        workers = self.daemon.controller.workers
        before = workers.handled(project)
        self.daemon.resync()
        wait_for(lambda: workers.handled(project) > before, timeout, f"{project} reconciled")

    # -- daemon as a separate process ------------------------------------------------------

    def spawn(self) -> subprocess.Popen[bytes]:
        """The daemon as its own process, speaking the notify protocol to a socket of ours."""
        self.desired.mkdir(parents=True, exist_ok=True)
        if self._notify is not None:
            self._notify.close()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = self.root / f"notify-{time.monotonic_ns()}.sock"
        self._notify.bind(str(address))
        args = [
            PYTHON, "-m", "reconciler", "daemon",
            "--desired", str(self.desired), "--data", str(self.data),
            "--port-range", f"{self.first_port}-{self.first_port + 199}",
            "--internal-port-range", f"{self.first_port + 200}-{self.first_port + 399}",
            "--resync-interval", str(self.resync), "--edge", self.edge.value,
            "--drain", "0.2", "--stop-grace", "3",
        ]  # fmt: skip
        log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - owned by the process
        environ = {**os.environ, "NOTIFY_SOCKET": str(address)}
        self.proc = subprocess.Popen(
            args, cwd=REPO, env=environ, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return self.proc

    def wait_ready(self, timeout: float = 30) -> None:
        """Until the spawned daemon sends READY=1: every project known at its start has been
        reconciled once."""
        assert self._notify is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._notify.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if "READY=1" in self._notify.recv(4096).decode().splitlines():
                    return
            except TimeoutError:
                break
        raise AssertionError(f"the daemon sent no READY=1 within {timeout}s")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(15)
        self.proc = None
        return code

    # -- files and facts -------------------------------------------------------------------

    def write(self, project: str, text: str) -> Path:
        path = self.desired / f"{project}.yaml"
        tmp = self.desired / f".{project}.yaml.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)  # like an editor or git: write a temp file, rename it over
        return path

    def row(self, project: str) -> ProjectRow | None:
        return self.db.project(project)

    def status(self, project: str) -> str | None:
        row = self.row(project)
        return row.productionStatus if row else None

    def wait_status(self, project: str, status: str, timeout: float = 30) -> ProjectRow:
        def check() -> ProjectRow | None:
            row = self.row(project)
            return row if row is not None and row.productionStatus == status else None

        try:
            return wait_for(check, timeout, f"{project} to be {status}")  # type: ignore[no-any-return]
        except AssertionError:
            row = self.row(project)
            raise AssertionError(
                f"{project} is {row.productionStatus if row else None}, not {status}; "
                f"error={row.productionError if row else None}"
            ) from None

    def wait_serving(self, project: str, text: str, timeout: float = 30) -> ProjectRow:
        """Until the project serves ``text`` and its status names the version that holds it
        (the edge may serve a new version a few ms before the status is written)."""

        def check() -> ProjectRow | None:
            row = self.row(project)
            if row is None or row.productionStatus != "running" or row.productionPort is None:
                return None
            body = get(f"http://127.0.0.1:{row.productionPort}/")
            index = self.data / "production" / project / str(row.productionHash) / "dist"
            recorded = (
                (index / "index.html").read_text() if (index / "index.html").exists() else text
            )
            return row if body is not None and text in body and text in recorded else None

        return wait_for(check, timeout, f"{project} to serve {text!r}")  # type: ignore[no-any-return]

    def releases(self) -> ReleaseStore:
        return ReleaseStore(self.data / "production")

    def instances(self, project: str) -> list[Any]:
        return ProcessRuntime(self.releases()).observe(ProjectId(project))

    def cleanup(self) -> None:
        """Stop every instance the tests left running (sites outlive the daemon by design)."""
        self.stop()
        if self.proc is not None:
            self.kill9()
        production = self.data / "production"
        runtime = ProcessRuntime(self.releases())
        if production.is_dir():
            for project in production.iterdir():
                for instance in runtime.observe(ProjectId(project.name)):
                    runtime.stop(instance, timeout=2)
        if self._db is not None:
            self._db.close()
        if self._notify is not None:
            self._notify.close()
        if self.edge == EdgeMode.ON and (binary := default_binary()) is not None:
            CaddyProcess(binary, Paths(self.data / "edge")).kill()  # the edge outlives daemons


@contextlib.contextmanager
def environment(tmp_path: Path, **options: Any) -> Iterator[Env]:
    env = Env(tmp_path, _port_block(), **options)
    try:
        yield env
    finally:
        env.cleanup()


def _port_block() -> int:
    """A block of 400 ports (200 public, 200 internal) below Linux's ephemeral range (32768+),
    so that no outgoing connection can be given one of them as its local port; its first
    ports are checked free (tests run one at a time)."""
    for _ in range(100):
        base = random.randrange(10000, 32000 - 400, 400)
        if all(port_is_free("127.0.0.1", base + i) for i in (0, 1, 2, 200, 201, 202)):
            return base
    raise RuntimeError("no free port block")
