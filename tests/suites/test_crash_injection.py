"""Crash injection: SIGKILL the daemon at step boundaries and at random moments of a change,
restart it, and check the invariants that make "never lose a working site" true.

Each run is its own data dir and daemon (a real subprocess) with one project: it deploys a
first version, then asks for a change (a new version, a rollback, a settings change, a stop)
and kills the daemon with SIGKILL at one moment of that change: while it builds, stages,
starts, probes the first time, right after the switch, while it stops, while it prunes, or
at a random instant. After a restart the project must converge, and then:

- ``current`` names a complete release, and every kept release's dist hashes to its
  manifest's digest (a new release shares unchanged files with the one before by hard
  links: a crash while staging must leave the older ones whole);
- a running project has exactly one instance (none at the edge for a static site) and,
  recorded as such, the one a deploy replaced if it is kept for the rollback window; a
  stopped one none; and no process runs from the project's releases beside them;
- no build of the project runs any more, and no staging dir is left;
- no port is reserved that no instance holds;
- the status says what really is: running at a URL that answers with the expected page,
  or stopped with nothing listening on the old address.

Over Docker the instance is a container (a Created or exited one is a violation) built
``FROM scratch`` with the static busybox. ``make crash`` runs the full suite (CRASH_RUNS=200
over the process runtime, CRASH_DOCKER_RUNS=50 over Docker); ``make test`` runs a bounded
slice (8 and 2).
Figures are printed at the end of the session (runs, faults injected, violations).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import httpx
import pytest

from reconciler.core.kinds import EdgeMode, InstanceRole
from reconciler.core.spec import ProjectId
from reconciler.runtimes.base import Instance
from reconciler.runtimes.docker import DockerRuntime
from reconciler.runtimes.process.runtime import ProcessRuntime, session_members
from reconciler.stores.releases import ReleaseStore, hash_dist
from reconciler.stores.state import StateDB
from tests.docker.conftest import BUSYBOX, docker_client  # noqa: F401 - a fixture
from tests.integration.harness import Env, environment, wait_for

RUNS = int(os.environ.get("CRASH_RUNS", "8"))
DOCKER_RUNS = int(os.environ.get("CRASH_DOCKER_RUNS", "2"))
SEED = int(os.environ.get("CRASH_SEED", "20261128"))
MOMENTS = ("build", "stage", "start", "probe", "switch", "stop", "prune", "random")
CHANGES = ("deploy", "rollback", "settings", "stop")
P = ProjectId("app")

SERVER = """\
import http.server, os, pathlib, time
time.sleep(float(os.environ.get("SLOW_START", "0")))
page = pathlib.Path("index.html").read_bytes() + b"/" + os.environ["GREETING"].encode()

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


DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
COPY page.html /app/dist/index.html
EXPOSE 8080
CMD ["/bin/busybox", "sh", "-c", "/bin/busybox mkdir -p /tmp/www && /bin/busybox cp /app/dist/index.html /tmp/www/ && printf /$GREETING >> /tmp/www/index.html && exec /bin/busybox httpd -f -p 8080 -h /tmp/www"]
"""


@dataclass
class Tally:
    runs: int = 0
    faults: int = 0
    violations: list[str] = field(default_factory=list)


TALLY = Tally()


def _report() -> None:
    if TALLY.runs:
        print(
            f"\ncrash injection: {TALLY.runs} runs, {TALLY.faults} SIGKILLs injected, "
            f"{len(TALLY.violations)} violations"
        )


@pytest.fixture(scope="module", autouse=True)
def _figures() -> object:
    yield None
    _report()


@dataclass(frozen=True)
class Case:
    index: int
    moment: str
    change: str
    dynamic: bool
    edge: EdgeMode
    delay: float
    runtime: str = "process"


def cases(count: int, runtime: str = "process") -> list[Case]:
    """Moments in turn; each with a change that reaches it (a build only in a deploy)."""
    rng = random.Random(SEED)
    reaches = {
        "build": ("deploy",),
        "stage": ("deploy",),
        "start": ("deploy", "rollback", "settings"),
        "probe": ("deploy", "rollback", "settings"),
        "switch": ("deploy", "rollback", "settings"),
        "stop": ("stop",),
        "prune": ("deploy",),
        "random": CHANGES,
    }
    found = []
    for index in range(count):
        moment = MOMENTS[index % len(MOMENTS)]
        change = rng.choice(reaches[moment])
        dynamic = change == "settings" or moment in ("start", "probe") or rng.random() < 0.5
        found.append(
            Case(
                index,
                moment,
                change,
                dynamic=dynamic or runtime == "docker",  # a Docker site is an instance
                edge=EdgeMode.ON if rng.random() < 0.4 else EdgeMode.OFF,
                delay=rng.uniform(0.0, 1.5 if runtime == "process" else 4.0),
                runtime=runtime,
            )
        )
    return found


def _desired(site: Path, case: Case, *, generation: int, version: str = "latest",
             state: str = "running", greeting: str = "one") -> str:  # fmt: skip
    text = (
        f"source: {site}\nruntime: {case.runtime}\nproduction:\n  state: {state}\n"
        f'  version: "{version}"\n  generation: {generation}\nkeep: 2\n'
        "health:\n  timeout: 30\n  interval: 0.1\n"
    )
    if case.runtime == "docker":
        return text + f"env:\n  GREETING: {greeting}\n"
    text += (
        "build:\n  command: sleep 0.4; rm -rf dist; mkdir dist; cp page.html dist/index.html; "
        "cp server.py dist/\n"
    )
    if case.dynamic:
        text += (
            "start:\n  command: exec python3 server.py\n"
            f"env:\n  SLOW_START: '0.3'\n  GREETING: {greeting}\n"
        )
    return text


def _kill_point(env: Env, case: Case, before: set[str], serving: str) -> bool:
    """True once the change has reached the case's moment."""
    db = env.db
    job = db.active_job(P)
    production = env.data / "production" / P
    match case.moment:
        case "build":
            return job is not None and job.type == "production.build"
        case "stage":
            return any(p.name.startswith(".staging-") for p in production.iterdir())
        case "start":
            return job is not None and job.type == "production.start"
        case "probe":
            return job is not None and job.type == "production.waitReady"
        case "switch":
            row = db.project(P)
            return row is not None and row.productionHash not in (None, serving)
        case "stop":
            return job is not None and job.type == "production.stop"
        case "prune":
            now = {p.name for p in production.iterdir() if len(p.name) == 8}
            return bool(before - now)
    return False


def _page(case: Case, version: str, greeting: str = "one") -> str:
    """What the site answers: the page, and for a dynamic site the greeting it runs with."""
    return f"{version}/{greeting}" if case.dynamic else version


def _expected(case: Case) -> tuple[str, str | None]:
    """(status, page) the project must end in after the change."""
    return {
        "deploy": ("running", _page(case, "v3")),
        "rollback": ("running", _page(case, "v1")),
        "settings": ("running", _page(case, "v2", "two")),
        "stop": ("stopped", None),
    }[case.change]


def _change(env: Env, site: Path, case: Case, first: str) -> None:
    match case.change:
        case "deploy":
            (site / "page.html").write_text("v3")
            env.write(P, _desired(site, case, generation=3))
        case "rollback":
            env.write(P, _desired(site, case, generation=2, version=first))
        case "settings":
            env.write(P, _desired(site, case, generation=2, greeting="two"))
        case "stop":
            env.write(P, _desired(site, case, generation=2, state="stopped"))


def _processes_under(root: Path) -> list[int]:
    """Processes whose working directory is inside ``root``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cwd = os.readlink(f"/proc/{entry.name}/cwd")
                state = Path(f"/proc/{entry.name}/stat").read_bytes().rsplit(b")", 1)[1][1:2]
                if state != b"Z" and (cwd == str(root) or cwd.startswith(f"{root}/")):
                    found.append(int(entry.name))
    return found


def _containers(problems: list[str]) -> list[Instance]:
    """The project's running containers; a Created or exited one is a problem."""
    runtime = DockerRuntime()
    try:
        filters = {"label": ["reconciler.managed-by=reconciler", f"reconciler.project={P}"]}
        for container in runtime.engine.client.containers.list(all=True, filters=filters):
            if container.status != "running":
                problems.append(f"container {container.name} is {container.status}")
        return runtime.observe(P)
    finally:
        runtime.close()


def _remove_docker_leftovers(prefix: str) -> None:
    client = docker.from_env()
    try:
        filters = {"label": ["reconciler.managed-by=reconciler", f"reconciler.project={P}"]}
        for container in client.containers.list(all=True, filters=filters):
            container.remove(force=True)
        for image in client.images.list():
            for tag in image.tags:
                if tag.startswith(f"{prefix}-"):
                    client.images.remove(tag, force=True)
    finally:
        client.close()


def check_invariants(
    env: Env, case: Case, site: Path, expected: tuple[str, str | None] | None = None
) -> list[str]:
    """What must hold once the project converged on ``expected`` (status, page); the
    case's own change by default."""
    problems: list[str] = []
    status, page = expected or _expected(case)
    db = StateDB(env.data / "state.db")
    try:
        row = db.project(P)
        store = ReleaseStore(env.data / "production")
        current = store.current(P)
        link = env.data / "production" / P / "current"
        if link.is_symlink() and current is None:
            problems.append("current names no complete release")
        if current is not None and store.get(P, current) is None:
            problems.append(f"current -> {current} is no complete release")
        for release in store.versions(P):  # unchanged files are hard links between releases
            if hash_dist(release.dist) != release.digest:
                problems.append(f"release {release.hash} is not what its manifest says")
        serving = 1 if case.dynamic or case.edge == EdgeMode.OFF else 0
        want = 0 if status == "stopped" else serving
        if case.runtime == "docker":
            instances = _containers(problems)
        else:
            instances = ProcessRuntime(store).observe(P)
            ours = {m for i in instances if i.pid for m in session_members(i.pid, i.pid_start)}
            stray = set(_processes_under(env.data / "production" / P)) - ours
            if stray:
                problems.append(f"processes run from the releases beside the instances: {stray}")
            if _processes_under(site):
                problems.append("a build of the project still runs")
        # and the instance a deploy replaced, kept for the rollback window, when it is
        kept = 0 if status == "stopped" else sum(
            1 for r in db.instances(P) if r.role == InstanceRole.STANDBY
        )  # fmt: skip
        if len(instances) != want + kept:
            problems.append(f"{len(instances)} instance(s) for a {status} project, want "
                            f"{want} (and {kept} kept for a rollback)")  # fmt: skip
        if any(p.name.startswith(".staging-") for p in store.project_dir(P).iterdir()):
            problems.append("a staging dir is left")
        held = {i.port for i in instances if i.port is not None}
        reserved = {int(r[0]) for r in db.read("SELECT port FROM ports")}
        if reserved - held:
            problems.append(f"reserved ports nothing holds: {sorted(reserved - held)}")
        if row is None or row.productionStatus != status:
            problems.append(f"status {row.productionStatus if row else None}, want {status}")
        elif status == "running":
            url = str(row.productionUrl).replace("localhost", "127.0.0.1")
            try:
                body = httpx.get(url, timeout=5).text
            except httpx.HTTPError as exc:
                body = f"<{type(exc).__name__}>"
            if body != page:
                problems.append(f"{url} answers {body!r}, want {page!r}")
    finally:
        db.close()
    return problems


def serves(env: Env, status: str, page: str | None) -> bool:
    """The project's status is ``status``, nothing is open, and its URL answers ``page``."""
    row = env.db.project(P)
    if row is None or row.productionStatus != status or env.db.open_deployment(P) is not None:
        return False
    if page is None:
        return True
    try:
        url = str(row.productionUrl).replace("localhost", "127.0.0.1")
        return httpx.get(url, timeout=2).text == page
    except httpx.HTTPError:
        return False


def run_case(tmp_path: Path, case: Case) -> list[str]:
    site = tmp_path / "site"
    site.mkdir(parents=True)
    (site / "page.html").write_text("v1")
    (site / "server.py").write_text(SERVER)
    if case.runtime == "docker":
        assert BUSYBOX is not None
        shutil.copy(BUSYBOX, site / "busybox")
        (site / "Dockerfile").write_text(DOCKERFILE)
    with environment(tmp_path, edge=case.edge, runtime=case.runtime) as env:
        try:
            return _run(env, site, case)
        finally:
            if case.runtime == "docker":
                env.cleanup()
                _remove_docker_leftovers(env.config().docker_prefix)


def _run(env: Env, site: Path, case: Case) -> list[str]:
    env.spawn()
    env.write(P, _desired(site, case, generation=1))
    wait_for(lambda: serves(env, "running", _page(case, "v1")), 60, "v1 serves")
    first = str(env.db.project(P).productionHash)  # type: ignore[union-attr]
    (site / "page.html").write_text("v2")
    env.write(P, _desired(site, case, generation=2))
    wait_for(lambda: serves(env, "running", _page(case, "v2")), 60, "v2 serves")
    serving = str(env.db.project(P).productionHash)  # type: ignore[union-attr]
    production = env.data / "production" / P
    before = {p.name for p in production.iterdir() if len(p.name) == 8}
    _change(env, site, case, first)
    if case.moment == "random":
        time.sleep(case.delay)
    else:  # a moment the change never reaches (a rollback builds nothing): kill at 5 s
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _kill_point(env, case, before, serving):
            time.sleep(0.002)
    env.kill9()
    TALLY.faults += 1
    env.spawn()
    try:  # the restarted daemon has adopted what runs and reconciled once (READY=1)
        env.wait_ready(60)
    except AssertionError as exc:
        return [str(exc), *check_invariants(env, case, site, _expected(case))]
    return converged(env, case, site, _expected(case))


def converged(env: Env, case: Case, site: Path, want: tuple[str, str | None]) -> list[str]:
    """The problems left once the project converged on ``want`` (status, page): none when
    every invariant holds."""
    try:
        wait_for(lambda: serves(env, *want), 60, f"{case} converges")
    except AssertionError as exc:
        return [str(exc), *check_invariants(env, case, site, want)]
    # a replaced instance drains and stops in the background (--drain, --stop-grace)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not check_invariants(env, case, site, want), 15, "invariants hold")
    return check_invariants(env, case, site, want)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", cases(RUNS), ids=lambda c: f"{c.index}-{c.moment}-{c.change}")
def test_sigkill_at_any_moment_keeps_every_invariant(tmp_path: Path, case: Case) -> None:
    problems = run_case(tmp_path, case)
    TALLY.runs += 1
    TALLY.violations.extend(f"{case}: {p}" for p in problems)
    assert problems == []


@pytest.mark.docker
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "case", cases(DOCKER_RUNS, "docker"), ids=lambda c: f"docker-{c.index}-{c.moment}-{c.change}"
)
@pytest.mark.usefixtures("docker_client")
def test_sigkill_at_any_moment_over_docker(tmp_path: Path, case: Case) -> None:
    problems = run_case(tmp_path, case)
    TALLY.runs += 1
    TALLY.violations.extend(f"{case}: {p}" for p in problems)
    assert problems == []
