"""Crash injection of the daemon's two companions: the edge (Caddy) and the API sidecar,
killed (SIGKILL) or stopped (SIGSTOP, then SIGCONT) at a random moment of a change.

Edge runs: a project behind the edge (static or dynamic) with v1 and v2 deployed; a change
is asked by its desired file (a new version, a rollback, a settings change, a stop) and the
edge is killed, or stopped for 0.5-3 s (one run in four: 16 s, past the time after which a
hung edge is restarted), 0-1.5 s into it. The daemon is left alone: it must notice, restart
the edge and converge. Then every invariant of the daemon's crash injection holds (one
complete release current, one instance, nothing stray, no port reserved for nothing, the
status true at a URL that answers the expected page through the edge), the edge runs once
(one Caddy for the data dir) and is recorded up.

API runs: the same project (edge on or off) and the change asked through ``reconciler api``
in its own process (POST deploy, rollback-production, stop-production, PUT env); the API is
killed 0-0.3 s into the request (a new one is started, as systemd would) or stopped for
0.5-3 s. Then the desired file is whole (valid, its comments kept), holds the change when
the request was answered 2xx, the project converges on what the file says, and the API
answers with that status.

``make crash`` runs 50 of each (CRASH_PART_RUNS); ``make test`` a slice (2 of each).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from reconciler.core.kinds import EdgeMode
from reconciler.stores.desired import DesiredStore
from tests.conftest import PYTHON, REPO, free_port
from tests.integration.harness import Env, environment, wait_for
from tests.suites.test_crash_injection import (
    SERVER,
    Case,
    P,
    _change,
    _desired,
    _expected,
    _page,
    converged,
    serves,
)

RUNS = int(os.environ.get("CRASH_PART_RUNS", "2"))
SEED = int(os.environ.get("CRASH_SEED", "20261128"))
HUNG = 16.0  # past the edge's liveness deadline and the time a hung edge is given
TALLY = {"edge": [0, 0], "api": [0, 0]}  # runs, violations


@pytest.fixture(scope="module", autouse=True)
def _figures() -> object:
    yield None
    for part, (runs, violations) in TALLY.items():
        if runs:
            print(f"\ncrash injection of the {part}: {runs} runs, {violations} violations")


@dataclass(frozen=True)
class Fault:
    index: int
    part: str  # edge | api
    signal: str  # kill | stop
    hold: float  # how long a stopped part stays stopped
    case: Case


def faults(part: str, count: int) -> list[Fault]:
    rng = random.Random(f"{SEED}-{part}")
    found = []
    for index in range(count):
        kind = ("kill", "stop")[index % 2]
        change = ("deploy", "rollback", "settings", "stop")[(index // 2) % 4]
        dynamic = change == "settings" or rng.random() < 0.5
        edge = EdgeMode.ON if part == "edge" or rng.random() < 0.5 else EdgeMode.OFF
        delay = rng.uniform(0.0, 1.5 if part == "edge" else 0.3)
        hold = HUNG if part == "edge" and index % 4 == 3 else rng.uniform(0.5, 3.0)
        case = Case(index, "random", change, dynamic=dynamic, edge=edge, delay=delay)
        found.append(Fault(index, part, kind, hold, case))
    return found


def _site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir(parents=True)
    (site / "page.html").write_text("v1")
    (site / "server.py").write_text(SERVER)
    return site


def _first_two(env: Env, site: Path, case: Case) -> str:
    """v1 and v2 deployed; v1's hash."""
    env.spawn()
    env.write(P, _desired(site, case, generation=1))
    wait_for(lambda: serves(env, "running", _page(case, "v1")), 60, "v1 serves")
    first = str(env.db.project(P).productionHash)  # type: ignore[union-attr]
    (site / "page.html").write_text("v2")
    env.write(P, _desired(site, case, generation=2))
    wait_for(lambda: serves(env, "running", _page(case, "v2")), 60, "v2 serves")
    return first


def _signal(pid: int, fault: Fault) -> None:
    if fault.signal == "kill":
        os.kill(pid, signal.SIGKILL)
        return
    os.kill(pid, signal.SIGSTOP)
    time.sleep(fault.hold)
    with contextlib.suppress(ProcessLookupError):  # a hung edge may be gone (restarted)
        os.kill(pid, signal.SIGCONT)


# -- the edge ---------------------------------------------------------------------------------


def _edges(env: Env) -> list[int]:
    """Caddy processes running for this data dir's edge."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                line = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
                stat = Path(f"/proc/{entry.name}/stat").read_bytes().rsplit(b")", 1)[1]
                if (
                    stat[1:2] != b"Z"
                    and any(str(env.data).encode() in a for a in line)
                    and (b"caddy" in line[0])
                ):
                    found.append(int(entry.name))
    return found


def run_edge(tmp_path: Path, fault: Fault) -> list[str]:
    site = _site(tmp_path)
    case = fault.case
    with environment(tmp_path, edge=EdgeMode.ON) as env:
        first = _first_two(env, site, case)
        row = env.db.edge()
        assert row is not None and row.pid is not None
        _change(env, site, case, first)
        time.sleep(case.delay)
        _signal(row.pid, fault)
        problems = converged(env, case, site, _expected(case))
        try:
            wait_for(lambda: (e := env.db.edge()) is not None and e.status == "up"
                     and len(_edges(env)) == 1, 40, "the edge up, once")  # fmt: skip
        except AssertionError:
            edge = env.db.edge()
            problems.append(f"edge {edge.status if edge else None}, caddy pids {_edges(env)}")
        return problems


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "fault", faults("edge", RUNS), ids=lambda f: f"edge-{f.index}-{f.signal}-{f.case.change}"
)
def test_the_edge_killed_or_stopped_during_a_change(tmp_path: Path, fault: Fault) -> None:
    problems = run_edge(tmp_path, fault)
    TALLY["edge"][0] += 1
    TALLY["edge"][1] += len(problems)
    assert problems == []


# -- the API ----------------------------------------------------------------------------------


class Api:
    """``reconciler api`` in its own process, started again after a kill (as systemd does)."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "reconciler", "api", "--listen", f"127.0.0.1:{self.port}",
             "--desired", str(self.env.desired), "--data", str(self.env.data),
             "--edge", self.env.edge.value],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=(log := self.log()),
        )  # fmt: skip
        os.close(log)
        wait_for(self.answers, 30, "the API answers")
        assert self.proc.poll() is None, "the API started (nothing else holds its port)"

    def log(self) -> int:
        """The API's log file (appended to by each start), for a failing run's reader."""
        return os.open(self.env.root / "api.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def listens(self) -> bool:
        """Something listens at the API's port (a refused connection is definite: none)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except ConnectionRefusedError:
            return False
        except OSError:
            return True  # a timeout: something is there, too slow to accept

    def answers(self) -> bool:
        try:
            return httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
            wait_for(lambda: not self.listens(), 10, "the killed API's workers end with it")


def _ask(api: Api, case: Case, first: str) -> tuple[str, str, dict[str, object]]:
    url = f"{api.base}/api/projects/{P}"
    match case.change:
        case "deploy":
            return "POST", f"{url}/deploy", {}
        case "rollback":
            return "POST", f"{url}/rollback-production", {"toHash": first}
        case "settings":
            return "PUT", f"{url}/env", {"env": {"SLOW_START": "0.3", "GREETING": "two"}}
    return "POST", f"{url}/stop-production", {}


def _wanted_by_file(
    env: Env, case: Case, first: str, problems: list[str]
) -> tuple[str, str | None]:
    """What the desired file asks for now, read as the daemon reads it; a file that is not
    whole is a violation."""
    text = (env.desired / f"{P}.yaml").read_text()
    found = DesiredStore(env.desired).read(P)
    if found is None or found.spec is None or not found.valid:
        problems.append(f"the desired file is not whole: {text!r}")
        return "running", None
    spec = found.spec
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or "production" not in data:
        problems.append(f"the desired file lost its production block: {text!r}")
    if spec.production.state == "stopped":
        return "stopped", None
    greeting = spec.env.get("GREETING", "one")
    greeting = greeting if isinstance(greeting, str) else "one"
    if spec.production.version == first:
        return "running", _page(case, "v1", greeting)
    return "running", _page(case, "v3" if spec.production.generation == 3 else "v2", greeting)


def run_api(tmp_path: Path, fault: Fault) -> list[str]:
    site = _site(tmp_path)
    case = fault.case
    with environment(tmp_path, edge=case.edge) as env:
        first = _first_two(env, site, case)
        api = Api(env)
        api.start()
        try:
            return _api_run(env, api, site, fault, first)
        finally:
            api.stop()


def _api_run(env: Env, api: Api, site: Path, fault: Fault, first: str) -> list[str]:
    case = fault.case
    if case.change == "deploy":
        (site / "page.html").write_text("v3")
    method, url, body = _ask(api, case, first)
    answer: list[int] = []

    def call() -> None:
        with contextlib.suppress(httpx.HTTPError):
            answer.append(httpx.request(method, url, json=body, timeout=120).status_code)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(case.delay)
    assert api.proc is not None
    _signal(api.proc.pid, fault)
    if fault.signal == "kill":
        api.proc.wait(10)
        wait_for(lambda: not api.listens(), 10, "the killed API's workers end with it")
        api.start()
    caller.join(130)
    problems: list[str] = []
    if fault.signal == "stop" and not answer:
        problems.append("a request to a stopped API was never answered after it went on")
    want = _wanted_by_file(env, case, first, problems)
    if answer and 200 <= answer[0] < 300 and want != _expected(case):
        problems.append(f"answered {answer[0]} but the file asks for {want}")
    problems += converged(env, case, site, want)
    wait_for(api.answers, 30, "the API answers")
    status = httpx.get(f"{api.base}/api/projects/{P}/production", timeout=10).json()
    if status.get("status") != want[0]:
        problems.append(f"the API says {status.get('status')}, the project is {want[0]}")
    return problems


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "fault", faults("api", RUNS), ids=lambda f: f"api-{f.index}-{f.signal}-{f.case.change}"
)
def test_the_api_killed_or_stopped_during_a_request(tmp_path: Path, fault: Fault) -> None:
    problems = run_api(tmp_path, fault)
    TALLY["api"][0] += 1
    TALLY["api"][1] += len(problems)
    assert problems == []
