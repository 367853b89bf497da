"""``Controller.reconcile`` end to end: real files, real SQLite, real HTTP; a fake runtime at the
runtime boundary (the one place a fake is allowed) so every outcome can be forced."""

from __future__ import annotations

import errno
import functools
import http.server
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.controller import Controller
from reconciler.controller.activate import AtEdge
from reconciler.controller.drain import Drainer
from reconciler.controller.observe import Runtimes
from reconciler.controller.sweeps import FULL_BUDGET
from reconciler.core.config import Config, PortRange
from reconciler.core.errors import BuildFailed, Cancelled, TransientError
from reconciler.core.kinds import (
    DeploymentKind,
    DeploymentState,
    EdgeMode,
    InstanceRole,
    JobState,
    JobType,
    RuntimeName,
    ServeMode,
    Status,
)
from reconciler.core.queue import Done, Permanent, RequeueAfter, Retry
from reconciler.core.spec import ProjectId, ProjectSpec
from reconciler.core.timeutil import utcnow
from reconciler.edge.config import Site
from reconciler.readside.views import Reader
from reconciler.runtimes.base import BuildRequest, BuildResult, Instance
from reconciler.runtimes.base import OnChange as Notify
from reconciler.stores.desired import DesiredStore
from reconciler.stores.ports import PortAllocator, SiteAllocator
from reconciler.stores.releases import Release, ReleaseStore
from reconciler.stores.state import StateDB
from tests.conftest import free_port
from tests.integration.harness import wait_for

P = ProjectId("www")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_args: object) -> None:
        pass


@dataclass
class FakeRuntime:
    """Builds by taking ``dist/`` as it is; runs each instance as a real HTTP server thread."""

    name: RuntimeName = RuntimeName.PROCESS
    fail_build: BaseException | None = None
    block_build: threading.Event | None = None
    servers: dict[str, http.server.ThreadingHTTPServer] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)
    builds: int = 0
    starts: int = 0

    def build(self, request: BuildRequest) -> BuildResult:
        self.builds += 1
        request.on_line("building")
        if self.block_build is not None:
            while not self.block_build.wait(0.01):
                if request.cancel.is_set():
                    raise Cancelled("build cancelled")
        if self.fail_build is not None:
            raise self.fail_build
        return BuildResult(request.source / "dist", {"runtime": "fake"})

    def finish_build(self, result: BuildResult, release: Release) -> None:
        return None

    def start(self, release: Release, spec: ProjectSpec, *, port: int, config: str) -> Instance:
        self.starts += 1
        handler = functools.partial(_Quiet, directory=str(release.dist))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        instance = Instance(
            release.project_id, release.hash, self.name, port, utcnow(), config=config
        )
        self.servers[instance.key] = server
        self.instances[instance.key] = instance
        return instance

    def stop(self, instance: Instance, *, timeout: float = 10) -> None:
        server = self.servers.pop(instance.key, None)
        if server is not None:
            server.shutdown()
            server.server_close()
        self.instances.pop(instance.key, None)

    def alive(self, instance: Instance) -> bool:
        return instance.key in self.servers

    def observe(self, project_id: ProjectId) -> list[Instance]:
        return [i for i in self.instances.values() if i.project_id == project_id]

    def describe_exit(self, instance: Instance) -> str:
        return f"the instance of {instance.hash} is gone"

    def remove_version(self, project_id: ProjectId, version: str) -> None:
        return None

    def exits(self, project_id: ProjectId) -> list[str]:
        return []

    def usage(self, instance: Instance) -> None:
        return None

    def watch(self, notify: Notify, stop: threading.Event) -> None:
        return None

    def close(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()
        self.servers.clear()


@dataclass
class World:
    root: Path
    controller: Controller
    runtime: FakeRuntime
    db: StateDB
    releases: ReleaseStore

    def write(self, html: str, *, settled: bool = True, **production: object) -> None:
        """Write the site and its desired file; ``settled``: as one written a while ago
        (a change that stops a serving site waits until its file has held for a second)."""
        (self.root / "site" / "dist").mkdir(parents=True, exist_ok=True)
        (self.root / "site" / "dist" / "index.html").write_text(html)
        values = {"state": "running", "generation": 1, **production}
        block = "".join(f"  {k}: {v}\n" for k, v in values.items())
        text = f"source: ../site\nproduction:\n{block}health:\n  timeout: 5\n  interval: 0.05\n"
        path = self.root / "desired" / "www.yaml"
        path.write_text(text)
        if settled:
            old = time.time() - 2
            os.utime(path, (old, old))

    def serving(self) -> str:
        row = self.db.project(P)
        assert row is not None and row.productionPort is not None
        return httpx.get(f"http://127.0.0.1:{row.productionPort}/", timeout=5).text

    def deployments(self) -> list[tuple[DeploymentKind, DeploymentState, str | None]]:
        rows = self.db.read("SELECT id FROM deployments ORDER BY id")
        found = [self.db.deployment(int(r["id"])) for r in rows]
        return [(d.kind, d.state, d.error) for d in found if d is not None]


def make_controller(
    config: Config,
    db: StateDB,
    releases: ReleaseStore,
    runtime: FakeRuntime,
    at_edge: AtEdge | None = None,
) -> Controller:
    return Controller(
        config,
        desired=DesiredStore(config.desired_dir, lock_dir=config.lock_dir),
        db=db,
        releases=releases,
        ports=PortAllocator(db, config.port_range),
        runtimes=Runtimes(lambda _name: runtime, RuntimeName.PROCESS),
        at_edge=at_edge,
    )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    (tmp_path / "desired").mkdir()
    first = max(20000, min(free_port(), 60000))
    config = Config(
        desired_dir=tmp_path / "desired",
        data_dir=tmp_path / "data",
        port_range=PortRange(first, first + 49),
        edge=EdgeMode.OFF,
    )
    db = StateDB(config.state_db)
    releases = ReleaseStore(config.releases_dir)
    runtime = FakeRuntime()
    controller = make_controller(config, db, releases, runtime)
    yield World(tmp_path, controller, runtime, db, releases)
    runtime.close()
    db.close()


def test_deploy_then_nothing_to_do(world: World) -> None:
    world.write("one")
    assert world.controller.reconcile(P) == Done()
    row = world.db.project(P)
    assert row is not None and row.productionStatus == Status.RUNNING
    assert world.serving() == "one"
    assert world.deployments() == [(DeploymentKind.DEPLOY, DeploymentState.SUCCEEDED, None)]
    jobs = [(j.type, j.state) for j in reversed(world.db.jobs(P))]
    assert jobs == [
        (JobType.BUILD, JobState.SUCCEEDED),
        (JobType.START, JobState.SUCCEEDED),
        (JobType.WAIT_READY, JobState.SUCCEEDED),
    ]
    assert all(j.deployment is not None for j in world.db.jobs(P))
    events = [e.type for e in world.db.events_after(P, 0)]
    assert events[0] == "production.building" and events[-1] == "production.ready"
    # level-based: a second pass finds nothing to do and records nothing
    assert world.controller.reconcile(P) == Done()
    assert len(world.deployments()) == 1 and len(world.db.jobs(P)) == 3


def test_redeploy_stops_the_old_instance_inside_the_deployment(world: World) -> None:
    world.write("one")
    world.controller.reconcile(P)
    old = world.db.project(P)
    world.write("two", generation=2)
    assert world.controller.reconcile(P) == Done()
    assert world.serving() == "two"
    assert [i.hash for i in world.runtime.instances.values()] == [
        world.db.project(P).productionHash
    ]  # type: ignore[union-attr]
    stop = next(j for j in world.db.jobs(P) if j.type == JobType.STOP)
    assert stop.hash == old.productionHash and stop.deployment is not None  # type: ignore[union-attr]
    assert world.db.deployment(stop.deployment).kind == DeploymentKind.DEPLOY  # type: ignore[union-attr]


def test_a_failed_build_keeps_the_old_version_and_is_not_retried(world: World) -> None:
    world.write("one")
    world.controller.reconcile(P)
    world.runtime.fail_build = BuildFailed("Build failed: exit 1")
    world.write("two", generation=2)
    before = world.db.project(P)
    assert before is not None
    result = world.controller.reconcile(P)
    told = (
        f"Build failed: exit 1; version {before.productionHash} keeps serving at "
        f"{before.productionUrl}\nFull log: reconciler logs www --log build"
    )
    assert result == Permanent(told)
    row = world.db.project(P)
    assert row is not None and row.productionStatus == Status.FAILED
    assert row.productionError == told
    assert (row.productionHash, row.productionUrl) == (before.productionHash, before.productionUrl)
    assert row.failedDigest is not None and world.serving() == "one"
    assert world.deployments()[-1] == (DeploymentKind.DEPLOY, DeploymentState.FAILED, told)
    assert world.db.events_after(P, 0)[-1].type == "production.error"
    assert world.controller.reconcile(P) == Done()
    assert len(world.deployments()) == 2, "the same failing spec is not tried again"


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        pytest.param(TransientError("engine down", delay=3), "engine down", id="transient"),
        pytest.param(
            OSError(errno.ENOSPC, "No space left on device"),
            "the disk is full",
            id="disk-full",
        ),
        pytest.param(
            OSError(errno.EIO, "Input/output error"),
            "unexpected error (will retry): [Errno 5] Input/output error",
            id="unexpected-oserror",
        ),
    ],
)
def test_retryable_errors_close_everything_and_show_the_error(
    world: World, error: BaseException, shown: str
) -> None:
    world.write("one")
    world.runtime.fail_build = error
    result = world.controller.reconcile(P)
    assert isinstance(result, Retry)
    row = world.db.project(P)
    assert row is not None and row.productionStatus == Status.ERROR
    assert str(row.productionError).startswith(shown)
    assert world.db.open_deployment(P) is None
    assert world.db.active_job(P) is None
    assert [p.name for p in world.releases.project_dir(P).iterdir()] == [], "staging removed"
    world.runtime.fail_build = None
    assert world.controller.reconcile(P) == Done()
    assert world.serving() == "one"


def test_a_retry_backoff_holds_against_the_periodic_resyncs(world: World) -> None:
    world.write("one")
    world.runtime.fail_build = OSError(errno.ENOSPC, "No space left on device")
    result = world.controller.reconcile(P)
    assert isinstance(result, Retry) and result.at_least == 60
    world.controller.workers.apply(P, result)  # as a worker does: back in 60 s
    queue = world.controller.queue
    for _ in range(20):  # every tick asks for it (its inputs never converged)
        world.controller.resync(full=False)
        world.controller.net.check_current()
    assert queue.get(timeout=0) is None, "no tick cuts the backoff short"
    world.controller.enqueue(P)  # an edit, a deploy, an engine event: at once
    assert queue.get(timeout=0) == P


def test_a_stop_of_a_serving_site_waits_until_its_file_has_held(world: World) -> None:
    world.write("one")
    world.controller.reconcile(P)
    world.write("one", state="stopped", settled=False)
    result = world.controller.reconcile(P)
    assert isinstance(result, RequeueAfter) and 0.5 < result.seconds <= 1.05
    assert world.serving() == "one", "nothing stopped yet"
    path = world.root / "desired" / "www.yaml"
    old = time.time() - 2
    os.utime(path, (old, old))
    assert world.controller.reconcile(P) == Done()
    assert world.db.project(P).productionStatus == Status.STOPPED  # type: ignore[union-attr]


def test_stop_is_one_stop_deployment_and_frees_the_port(world: World) -> None:
    world.write("one")
    world.controller.reconcile(P)
    port = world.db.project(P).productionPort  # type: ignore[union-attr]
    world.write("one", state="stopped")
    assert world.controller.reconcile(P) == Done()
    row = world.db.project(P)
    assert row is not None and (row.productionStatus, row.productionPort) == (Status.STOPPED, None)
    assert world.deployments()[-1][:2] == (DeploymentKind.STOP, DeploymentState.SUCCEEDED)
    assert world.runtime.instances == {}
    assert port not in world.controller.ports.reserved()


def test_a_changed_spec_cancels_the_running_build(world: World) -> None:
    world.write("one")
    world.runtime.block_build = threading.Event()
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(world.controller.reconcile(P)))
    worker.start()
    deadline = 5.0
    while not world.db.active_job(P) and deadline > 0:
        threading.Event().wait(0.01)
        deadline -= 0.01
    world.write("one", state="stopped")
    world.controller.enqueue(P)  # what the watcher does
    worker.join(5)
    assert outcome == [RequeueAfter(0.01)]
    assert world.deployments() == [
        (DeploymentKind.DEPLOY, DeploymentState.CANCELLED, "cancelled: the desired state changed")
    ]
    assert world.db.jobs(P)[0].state == JobState.CANCELLED
    assert world.controller.reconcile(P) == Done()
    assert world.db.project(P).productionStatus == Status.STOPPED  # type: ignore[union-attr]


def test_a_dead_instance_is_repaired_as_a_repair_deployment(world: World) -> None:
    world.write("one")
    world.controller.reconcile(P)
    world.runtime.close()
    world.runtime.instances.clear()
    assert world.controller.reconcile(P) == Done()
    assert world.serving() == "one"
    assert world.deployments()[-1][:2] == (DeploymentKind.REPAIR, DeploymentState.SUCCEEDED)


def test_a_deleted_file_stops_the_project(world: World) -> None:
    world.write("one")
    world.controller.reconcile(P)
    (world.root / "desired" / "www.yaml").unlink()
    first = world.controller.reconcile(P)
    assert isinstance(first, RequeueAfter), "a deletion must hold for a second first"
    assert world.serving() == "one"
    time.sleep(first.seconds)
    assert world.controller.reconcile(P) == Done()
    assert world.runtime.instances == {}
    assert world.db.project(P).productionStatus == Status.STOPPED  # type: ignore[union-attr]


def test_a_resync_queues_only_projects_whose_inputs_moved(world: World) -> None:
    world.write("one")
    assert world.controller.reconcile(P) == Done()
    assert world.controller.reconcile(P) == Done()  # converged from an unchanged sign
    assert world.controller.resync(full=False) == 0
    assert world.controller.resync(full=True) == 1
    world.controller.queue.get(timeout=0)
    world.controller.queue.done(P)
    world.write("one", generation=2)  # a file event the watcher missed
    assert world.controller.resync(full=False) == 1


def test_a_reload_skips_projects_unchanged_since_they_converged(world: World) -> None:
    world.write("one")
    assert world.controller.reconcile(P) == Done()
    assert world.controller.resync(full=True, changed_only=True) == 0
    world.write("one", generation=2)
    assert world.controller.resync(full=True, changed_only=True) == 1
    assert world.controller.resync(full=True) == 1, "a forced one queues every project"


def test_the_health_poll_notices_a_current_moved_by_hand(world: World) -> None:
    world.write("one")
    assert world.controller.reconcile(P) == Done()
    world.controller.check_health()
    assert world.controller.queue.depth() == 0
    (world.releases.project_dir(P) / "current").unlink()
    world.controller.check_health()
    assert world.controller.queue.get(timeout=0) == P


def test_the_periodic_resync_spends_a_bounded_share_on_full_reconciles(world: World) -> None:
    net = world.controller.net
    assert net.full_share(10_000) == 1000, "a tenth of them a tick, before any cost is known"
    net.reconciled(0.001)  # one reconcile costs 1 ms of CPU
    assert net.full_share(10_000) == pytest.approx(FULL_BUDGET * net.interval / 0.001)
    assert net.full_share(10) == 1.0, "few projects: each every 10 ticks"
    world.write("one")
    assert world.controller.reconcile(P) == Done()
    queued = [world.controller.resync(full=False) for _ in range(10)]
    assert queued.count(1) == 1 and queued.count(0) == 9, "once in 10 ticks"


@pytest.mark.parametrize(
    ("source", "said"),
    [("/", "source / is the whole filesystem"), ("..", "contains the data dir")],
)
def test_a_source_that_is_the_filesystem_or_holds_the_data_dir_is_refused(
    world: World, source: str, said: str
) -> None:
    world.write("one")
    path = world.root / "desired" / "www.yaml"
    path.write_text(path.read_text().replace("source: ../site", f"source: {source}"))
    result = world.controller.reconcile(P)
    assert isinstance(result, Permanent) and said in result.reason
    assert world.runtime.builds == 0, "nothing was built"
    assert world.releases.versions(P) == []


def test_a_build_is_refused_early_when_the_disk_is_nearly_full(world: World) -> None:
    world.controller.pipeline.builder.min_free = 1 << 62
    world.write("one")
    result = world.controller.reconcile(P)
    assert isinstance(result, Retry) and "MiB free on" in result.reason
    assert "--min-free-mb" in result.reason
    assert world.runtime.builds == 0
    row = world.db.project(P)
    assert row is not None and row.productionStatus == Status.ERROR
    assert world.db.open_deployment(P) is None


def test_a_full_disk_anywhere_in_a_deploy_is_said_so_and_retried(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(The build has its own words for it; here the start meets the full disk.)"""
    start = world.runtime.start

    def full(*args: Any, **kwargs: Any) -> Instance:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/logs/app.log")

    monkeypatch.setattr(world.runtime, "start", full)
    world.write("one")
    result = world.controller.reconcile(P)
    assert isinstance(result, Retry), result
    assert "the disk is full (/data/logs/app.log)" in result.reason
    row = world.db.project(P)
    assert row is not None and row.productionStatus == Status.ERROR
    assert "unexpected" not in str(row.productionError)
    monkeypatch.setattr(world.runtime, "start", start)
    assert isinstance(world.controller.reconcile(P), Done)


def test_a_stopped_status_carries_no_old_error(world: World) -> None:
    world.runtime.fail_build = BuildFailed("Build failed: exit 1")
    world.write("one")
    assert isinstance(world.controller.reconcile(P), Permanent)
    assert world.db.project(P).productionError  # type: ignore[union-attr]
    world.write("one", state="stopped")
    assert world.controller.reconcile(P) == Done()
    row = world.db.project(P)
    assert row is not None and row.productionStatus == Status.STOPPED
    assert (row.productionError, row.productionUrl) == (None, None)
    from reconciler.cli.client import LocalClient

    client = LocalClient(world.root / "desired", world.root / "data")
    assert client.status("www")["error"] is None
    client.close()


# -- at the edge: the same controller with a fake edge in front -----------------------------


@dataclass
class FakeFront:
    """The edge at its boundary: keeps the sites it is told to route and answers a GET from
    the release store (a static site's files, a preview) or from the instance on the slot a
    dynamic site routes to, as Caddy does with its configuration."""

    releases: ReleaseStore
    control_port: int
    sites: dict[str, Site] = field(default_factory=dict)

    def put(self, site: Site) -> None:
        self.sites[site.project_id] = site

    def drop(self, project_id: ProjectId) -> None:
        self.sites.pop(project_id, None)

    def answer(self, url: str) -> tuple[int, str | None] | None:
        found = self._get(url)
        return None if found is None else (found[0], found[2])

    def fetch(self, port: int, path: str = "/") -> str:
        found = self._get(f"http://127.0.0.1:{port}{path}")
        assert found is not None and found[0] == 200, f"the edge does not serve port {port}"
        return found[1]

    def _get(self, url: str) -> tuple[int, str, str | None] | None:
        parts = urllib.parse.urlsplit(url)
        path = parts.path if not parts.path.endswith("/") else parts.path + "index.html"
        if parts.port == self.control_port:
            project, _, rest = path.lstrip("/").partition("/preview/dist/")
            return self._file(self.releases.root / project / "preview" / "dist" / rest)
        site = next((s for s in self.sites.values() if s.port == parts.port), None)
        if site is None:
            return None
        root = self.releases.root / site.project_id
        if site.mode == ServeMode.STATIC:
            return self._file(root / "current" / "dist" / path.lstrip("/"))
        slot = self.releases.slot(ProjectId(site.project_id))
        if site.slots is None or slot is None:
            return None
        port = site.slots[0] if slot == "a" else site.slots[1]
        try:
            response = httpx.get(f"http://127.0.0.1:{port}{parts.path}", timeout=5)
        except httpx.HTTPError:
            return None
        return response.status_code, response.text, slot

    @staticmethod
    def _file(path: Path) -> tuple[int, str, str | None]:
        return (200, path.read_text(), None) if path.is_file() else (404, "", None)


@dataclass
class EdgeWorld(World):
    front: FakeFront = field(default=None)  # type: ignore[assignment]

    def serving(self) -> str:
        row = self.db.project(P)
        assert row is not None and row.productionPort is not None
        return self.front.fetch(row.productionPort)

    def write_site(self, html: str, *, extra: str = "", **production: object) -> None:
        self.write(html, **production)
        path = self.root / "desired" / "www.yaml"
        path.write_text(path.read_text() + extra)
        old = time.time() - 2
        os.utime(path, (old, old))


@pytest.fixture
def edge_world(tmp_path: Path) -> Iterator[EdgeWorld]:
    (tmp_path / "desired").mkdir()
    first = max(20000, min(free_port(), 60000))
    config = Config(
        desired_dir=tmp_path / "desired",
        data_dir=tmp_path / "data",
        port_range=PortRange(first, first + 49),
        internal_port_range=PortRange(first + 50, first + 99),
        edge=EdgeMode.ON,
        drain=0.05,
    )
    db = StateDB(config.state_db)
    releases = ReleaseStore(config.releases_dir)
    runtime = FakeRuntime()
    front = FakeFront(releases, control_port=free_port())
    drainer = Drainer(db, drain=config.drain, grace=1.0)
    drainer.start()
    sites = SiteAllocator(db, config.port_range, config.internal_port_range, records=releases.root)
    controller = make_controller(
        config, db, releases, runtime, AtEdge(front, sites, drainer, front.control_port)
    )
    yield EdgeWorld(tmp_path, controller, runtime, db, releases, front)
    drainer.close()
    runtime.close()
    db.close()


def test_at_the_edge_a_static_site_is_checked_in_preview_and_keeps_its_port(
    edge_world: EdgeWorld,
) -> None:
    world = edge_world
    world.write_site("one")
    assert world.controller.reconcile(P) == Done()
    row = world.db.project(P)
    assert row is not None and row.productionStatus == Status.RUNNING
    port = row.productionPort
    assert world.front.sites[P].mode == ServeMode.STATIC and world.front.sites[P].port == port
    assert world.serving() == "one" and world.runtime.instances == {}, "no process serves it"
    world.write_site("two", generation=2)
    assert world.controller.reconcile(P) == Done()
    assert world.serving() == "two"
    assert world.db.project(P).productionPort == port  # type: ignore[union-attr]
    # a health path the release does not have fails at once; the old version keeps serving
    world.write_site("three", generation=3, extra="  path: /missing.html\n")
    result = world.controller.reconcile(P)
    assert isinstance(result, Permanent) and "answered 404" in result.reason
    assert world.serving() == "two"


def test_at_the_edge_a_dynamic_site_flips_its_slot_and_drains_the_old_instance(
    edge_world: EdgeWorld,
) -> None:
    world = edge_world
    start = "start:\n  command: serve\nrollback:\n  window: off\n"
    world.write_site("one", extra=start)
    assert world.controller.reconcile(P) == Done()
    site = world.front.sites[P]
    assert site.mode == ServeMode.DYNAMIC and site.slots is not None
    assert world.releases.slot(P) == "a" and world.serving() == "one"
    first = world.db.project(P).productionHash  # type: ignore[union-attr]
    world.write_site("two", generation=2, extra=start)
    assert world.controller.reconcile(P) == Done()
    assert world.releases.slot(P) == "b" and world.serving() == "two"
    wait_for(lambda: [i.hash for i in world.runtime.instances.values()] != [first] and
             len(world.runtime.instances) == 1, 10, "the old instance drained")  # fmt: skip
    stop = next(j for j in world.db.jobs(P) if j.type == JobType.STOP)
    assert stop.hash == first and stop.deployment is None, "drained outside the deployment"


def test_within_the_rollback_window_a_rollback_is_a_switch_to_the_kept_instance(
    edge_world: EdgeWorld,
) -> None:
    """A deploy keeps the instance it replaced running, out of service; a rollback within
    the window switches the edge back to it (no start), and keeps the other one in turn; when
    a window ends its instance stops; a stop keeps none."""
    world = edge_world
    start = "start:\n  command: serve\nrollback:\n  window: {window}\n"
    world.write_site("one", extra=start.format(window="5m"))
    assert world.controller.reconcile(P) == Done()
    first = world.db.project(P).productionHash  # type: ignore[union-attr]
    world.write_site("two", generation=2, extra=start.format(window="5m"))
    assert world.controller.reconcile(P) == Done()
    second = world.db.project(P).productionHash  # type: ignore[union-attr]
    assert world.serving() == "two"
    time.sleep(0.2)  # past the drain period: the old one is held, not stopped
    kept = {i.hash for i in world.runtime.instances.values()}
    assert kept == {first, second}
    roles = {r.hash: r.role for r in world.db.instances(P)}
    assert roles == {first: InstanceRole.STANDBY, second: InstanceRole.ACTIVE}
    reader = Reader(world.db, world.controller.desired, world.releases, EdgeMode.ON)
    assert [kept.hash for kept in reader.snapshot(P).status().standby] == [first]

    starts = [j for j in world.db.jobs(P) if j.type == JobType.START]
    world.write_site("one", generation=2, version=f'"{first}"', extra=start.format(window="5m"))
    assert world.controller.reconcile(P) == Done()
    assert world.serving() == "one"
    again = [j for j in world.db.jobs(P) if j.type == JobType.START]
    assert len(again) == len(starts) + 1  # the reuse is recorded as a start job...
    assert world.runtime.starts == 2, "...but nothing was started"
    time.sleep(0.2)
    roles = {r.hash: r.role for r in world.db.instances(P)}
    assert roles == {first: InstanceRole.ACTIVE, second: InstanceRole.STANDBY}

    # a shorter window: the kept instance stops when it ends
    world.write_site("one", generation=2, version=f'"{first}"', extra=start.format(window="1s"))
    world.write_site("two", generation=2, extra=start.format(window="1s"))
    assert world.controller.reconcile(P) == Done()
    assert world.serving() == "two"
    wait_for(lambda: {i.hash for i in world.runtime.instances.values()} == {second}, 10,
             "the kept instance stopped at the end of its window")  # fmt: skip
    world.write_site("two", generation=2, state="stopped", extra=start.format(window="5m"))
    assert world.controller.reconcile(P) == Done()
    assert world.runtime.instances == {}


def test_at_the_edge_a_stop_drops_the_site_and_keeps_its_port(edge_world: EdgeWorld) -> None:
    world = edge_world
    world.write_site("one")
    world.controller.reconcile(P)
    port = world.db.project(P).productionPort  # type: ignore[union-attr]
    world.write_site("one", state="stopped")
    assert world.controller.reconcile(P) == Done()
    assert P not in world.front.sites
    assert world.db.project(P).productionStatus == Status.STOPPED  # type: ignore[union-attr]
    assert world.db.site(P).publicPort == port  # type: ignore[union-attr]
