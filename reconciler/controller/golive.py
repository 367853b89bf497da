"""How a release goes live, one class per way a project is served (its ``ServeMode``).

Each ``go_live(run, release, generation)`` runs the ``production.start`` and
``production.waitReady`` jobs and returns what now serves: the instance (None for a static
site) and the port users reach it on.

- ``OnPort`` (no edge): a new instance on a newly allocated public port; the port is the
  address, so it moves with every version.
- ``Static`` (edge): no process. ``preview`` is pointed at the release and its health path
  is fetched through the edge's check route; only then ``current`` flips, and the edge,
  which serves ``current/dist`` for the project's stable port, serves the new files.
- ``Service`` (edge, swarm runtime): the project's one service is updated and the engine
  rolls its tasks (start-first); the edge follows the tasks that run while it does, so the
  stable port never routes to nothing. A rollout the engine rolled back leaves the old
  version serving, as a failed start does elsewhere.
- ``Slots`` (edge): blue-green on the project's two slot ports. The new instance starts on
  the slot the edge does not route to, must answer there, then ``slot`` flips and the edge
  routes the stable port to it; the answer through the edge is checked for the slot.

A failure before the switch removes what was started for it; the old version keeps serving.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Protocol

from reconciler.controller.decide import Reuse, Running, on_port, slot_adoption, slot_choice
from reconciler.controller.drain import Drainer
from reconciler.controller.front import Front
from reconciler.controller.observe import Runtimes
from reconciler.controller.run import Run
from reconciler.core.config import Config
from reconciler.core.errors import StartFailed, TransientError
from reconciler.core.kinds import EventType, InstanceRole, JobType, ServeMode, Status
from reconciler.core.spec import ProjectId, ProjectSpec
from reconciler.edge.config import Site, site_of
from reconciler.runtimes.base import (
    Instance,
    Ports,
    Runtime,
    ServiceRuntime,
    ServiceTasks,
    describe_seconds,
    wait_ready,
)
from reconciler.stores.ports import PortAllocator, SiteAllocator
from reconciler.stores.releases import Release, ReleaseStore

logger = logging.getLogger(__name__)

EDGE_CHECK_TIMEOUT = 5.0


class GoLive(Protocol):
    def go_live(
        self, run: Run, release: Release, generation: int | None
    ) -> tuple[Instance | None, int]: ...


def start_and_wait(
    run: Run,
    runtime: Runtime,
    release: Release,
    generation: int | None,
    *,
    port: int,
    probe_host: str,
) -> Instance:
    """Start an instance on ``port`` and wait until its health path answers there. On failure
    the instance is stopped and forgotten; the caller frees the port if it owns it."""
    project_id, rec, spec = run.facts.project_id, run.recorder, run.spec
    started: Instance | None = None
    try:
        with rec.job(JobType.START, hash=release.hash, generation=generation):
            logger.info("%s: start %s on port %s", project_id, release.hash, port)
            rec.emit(
                EventType.STARTING,
                {"message": f"Starting {release.hash} on port {port}...", "port": port},
            )
            started = runtime.start(release, run.runtime_spec, port=port, config=run.settings)
            rec.put_instance(started, InstanceRole.CANDIDATE)
        instance = started
        with rec.job(JobType.WAIT_READY, hash=release.hash, generation=generation):
            wait_ready(
                f"http://{probe_host}:{port}{spec.health.path}",
                spec.health,
                alive=lambda: runtime.alive(instance),
                why_dead=lambda: runtime.describe_exit(instance),
                cancel=run.cancel,
                wrong_port=(
                    (lambda: runtime.wrong_port(instance))
                    if isinstance(runtime, Ports)
                    else (lambda: None)
                ),
            )
            other = runtime.foreign(instance) if isinstance(runtime, Ports) else None
            if other is not None:  # the answer was not the instance's own
                raise StartFailed(f"Start failed: {other}")
    except BaseException as exc:
        if started is not None:
            with contextlib.suppress(Exception):
                runtime.stop(started, timeout=2)
            rec.forget_instance(started.key)
        if isinstance(exc, StartFailed):
            exc.args = (f"{exc}\nFull log: reconciler logs {project_id} --log app",)
        raise
    return instance


def reuse(run: Run, release: Release, instance: Instance, generation: int | None) -> Instance:
    """Record that an instance already running the release is taken as it is."""
    with run.recorder.job(JobType.START, hash=release.hash, generation=generation):
        message = f"Reusing the running instance of {release.hash} on port {instance.port}"
        run.recorder.emit(EventType.STARTING, {"message": message, "port": instance.port})
    return instance


class OnPort:
    def __init__(self, config: Config, *, ports: PortAllocator, runtimes: Runtimes) -> None:
        self.config = config
        self.ports = ports
        self.runtimes = runtimes

    def go_live(
        self, run: Run, release: Release, generation: int | None
    ) -> tuple[Instance | None, int]:
        runtime = self.runtimes.for_spec(run.spec)
        existing = run.find(release.hash)
        if existing is not None and isinstance(on_port(running(existing[0])), Reuse):
            instance = reuse(run, release, existing[0], generation)
            assert instance.port is not None
            return instance, instance.port
        port = self.ports.allocate(run.facts.project_id, hash=release.hash)
        try:
            instance = start_and_wait(
                run, runtime, release, generation, port=port, probe_host=self.config.probe_host
            )
        except BaseException:
            self.ports.release(port)
            raise
        return instance, port


def running(instance: Instance, *, draining: bool = False) -> Running:
    return Running(instance.key, instance.port, draining)


def site_for(
    run: Run, port: int, mode: ServeMode, slots: tuple[int, int] | None, *, asleep: bool = False
) -> Site:
    return site_of(run.facts.project_id, port, mode, run.spec, slots, asleep=asleep)


def check_through_edge(
    front: Front, url: str, *, slot: str | None = None, timeout: float = EDGE_CHECK_TIMEOUT
) -> None:
    """The edge answers ``url`` with 2xx (from ``slot``, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = front.answer(url)
        if answer is not None:
            status, served_by = answer
            if 200 <= status < 300 and (slot is None or served_by == slot):
                return
            last = f"HTTP {status}" + (f" from slot {served_by}" if slot else "")
        else:
            last = "no answer"
        if time.monotonic() > deadline:
            raise TransientError(f"the edge does not serve the new version at {url} ({last})")
        time.sleep(0.02)


class Static:
    def __init__(
        self,
        config: Config,
        *,
        releases: ReleaseStore,
        sites: SiteAllocator,
        edge: Front,
        control_port: int,
    ) -> None:
        self.config = config
        self.releases = releases
        self.sites = sites
        self.edge = edge
        self.control_port = control_port

    def preview_url(self, run: Run) -> str:
        path = run.spec.health.path
        return f"http://127.0.0.1:{self.control_port}/{run.facts.project_id}/preview/dist{path}"

    def go_live(
        self, run: Run, release: Release, generation: int | None
    ) -> tuple[Instance | None, int]:
        project_id, rec, spec = run.facts.project_id, run.recorder, run.spec
        site = self.sites.reserve(project_id)
        with rec.job(JobType.START, hash=release.hash, generation=generation):
            self.releases.preview(project_id, release.hash)
            rec.emit(
                EventType.STARTING,
                {"message": f"Checking {release.hash} through the edge (no process needed)"},
            )
        with rec.job(JobType.WAIT_READY, hash=release.hash, generation=generation):
            try:
                check_static(self.edge, self.preview_url(run), release, spec, run)
            finally:
                self.releases.unpreview(project_id)
        self.releases.switch(project_id, release.hash)
        self.edge.put(site_for(run, site.publicPort, ServeMode.STATIC, None))
        check_through_edge(
            self.edge, f"http://{self.config.probe_host}:{site.publicPort}{spec.health.path}"
        )
        return None, site.publicPort


def check_static(front: Front, url: str, release: Release, spec: ProjectSpec, run: Run) -> None:
    """The release's health path, fetched through the edge's check route: a definite answer
    other than 2xx fails at once (the file is not in the release); no answer is retried
    until the health timeout (the edge may be restarting)."""
    deadline = time.monotonic() + spec.health.timeout
    delay = 0.01
    last = "no answer"
    while True:
        run.check()
        answer = front.answer(url)
        if answer is not None:
            status = answer[0]
            if 200 <= status < 300:
                return
            if status < 500:
                raise StartFailed(
                    f"Start failed: GET {spec.health.path} answered {status} "
                    f"from version {release.hash} (checked through the edge at {url}); "
                    "is it in the build output?"
                )
            last = f"HTTP {status}"
        if time.monotonic() > deadline:
            raise TransientError(
                f"the edge did not answer GET {url} within "
                f"{describe_seconds(spec.health.timeout)} (last: {last})"
            )
        time.sleep(delay)
        delay = min(delay * 2, spec.health.interval)


class Slots:
    def __init__(
        self,
        config: Config,
        *,
        releases: ReleaseStore,
        sites: SiteAllocator,
        edge: Front,
        runtimes: Runtimes,
        drainer: Drainer,
    ) -> None:
        self.config = config
        self.releases = releases
        self.sites = sites
        self.edge = edge
        self.runtimes = runtimes
        self.drainer = drainer

    def go_live(
        self, run: Run, release: Release, generation: int | None
    ) -> tuple[Instance | None, int]:
        project_id, spec = run.facts.project_id, run.spec
        runtime = self.runtimes.for_spec(spec)
        site = self.sites.reserve(project_id)
        found = run.find(release.hash)
        existing = None
        if found is not None:
            existing = running(found[0], draining=found[0].key in self.drainer.pending(project_id))
        slots = self.sites.reserve_slots(project_id, adopt=slot_adoption(existing, site.slots))
        choice = slot_choice(slots, self.releases.slot(project_id), existing)
        target = choice.slot
        if choice.reuse and found is not None:
            self.drainer.reclaim(project_id, found[0].key)  # within its rollback window
            instance = reuse(run, release, found[0], generation)
        else:
            self._clear(run, choice.port, f"{release.hash}-{run.settings}")
            instance = start_and_wait(
                run, runtime, release, generation, port=choice.port, probe_host="127.0.0.1"
            )
        # waking: requests wait at the waker, so the slot flips before they are let through
        waking = run.facts.observed.status == Status.SLEEPING
        if waking:
            self.releases.set_slot(project_id, target)
        try:
            self.edge.put(site_for(run, site.publicPort, ServeMode.DYNAMIC, slots))
        except BaseException:
            if not choice.reuse:
                with contextlib.suppress(Exception):
                    runtime.stop(instance, timeout=2)
                run.recorder.forget_instance(instance.key)
            raise
        if not waking:
            self.releases.set_slot(project_id, target)
        check_through_edge(
            self.edge,
            f"http://{self.config.probe_host}:{site.publicPort}{spec.health.path}",
            slot=target,
        )
        self.releases.switch(project_id, release.hash)
        return instance, site.publicPort

    def _clear(self, run: Run, port: int, key: str) -> None:
        """Free ``port`` and the instance identity ``key`` for a new instance: a draining
        instance holding either is stopped now; a stray one too."""
        project_id = run.facts.project_id
        for pending_key, pending in self.drainer.out_of_service(project_id).items():
            if pending.port == port or pending_key == key:
                self.drainer.finish(project_id, pending_key)
                run.live.pop(pending_key, None)
        for other, (instance, runtime) in list(run.live.items()):
            if instance.port == port or other == key:
                logger.info("%s: stopping %s to free port %s", project_id, other, port)
                with run.recorder.job(JobType.STOP, hash=other):
                    runtime.stop(instance, timeout=self.config.stop_grace)
                run.live.pop(other, None)
                run.recorder.forget_instance(other)


def service_runtime(runtime: Runtime) -> ServiceRuntime:
    if not isinstance(runtime, ServiceRuntime):
        raise StartFailed(f"runtime {runtime.name} does not run services")
    return runtime


class Service:
    def __init__(
        self,
        config: Config,
        *,
        releases: ReleaseStore,
        sites: SiteAllocator,
        edge: Front,
        runtimes: Runtimes,
    ) -> None:
        self.config = config
        self.releases = releases
        self.sites = sites
        self.edge = edge
        self.runtimes = runtimes

    def route(
        self, run: Run, port: int, upstreams: tuple[str, ...], *, asleep: bool = False
    ) -> None:
        """Make the edge route the project's stable port to ``upstreams``: the task files
        it reads on every request, and its site (``asleep``: its requests wake it first)."""
        site = site_for(run, port, ServeMode.SERVICE, None, asleep=asleep)
        if self.releases.route_tasks(site.project_id, upstreams, site.fanout):
            logger.info("%s: routing to %s", site.project_id, ", ".join(upstreams) or "no task")
        self.edge.put(site)

    def follow(self, run: Run, port: int, upstreams: tuple[str, ...]) -> None:
        """``route`` during a rollout: a failure is logged (the rollout goes on; the route
        after it says whether the edge serves). While no task runs yet (a service woken from
        0 replicas) the route stays as it is: requests keep waiting at the waker rather than
        meet a site with no task."""
        if not upstreams:
            return
        try:
            self.route(run, port, upstreams)
        except (TransientError, OSError) as exc:
            logger.warning("%s: could not route to the tasks: %s", run.facts.project_id, exc)

    def go_live(
        self, run: Run, release: Release, generation: int | None
    ) -> tuple[Instance | None, int]:
        project_id, rec, spec = run.facts.project_id, run.recorder, run.spec
        runtime = service_runtime(self.runtimes.for_spec(spec))
        port = self.sites.reserve(project_id).publicPort
        existing = run.find(release.hash)
        if existing is not None:  # the service runs it already: route to it
            instance = reuse(run, release, existing[0], generation)
        else:
            replicas = spec.deploy.replicas
            with rec.job(JobType.START, hash=release.hash, generation=generation):
                logger.info("%s: roll out %s (%d replicas)", project_id, release.hash, replicas)
                rec.emit(
                    EventType.STARTING,
                    {
                        "message": f"Rolling out {release.hash} to {replicas} "
                        f"replica{'s' if replicas != 1 else ''} (start-first)...",
                        "port": port,
                    },
                )
                instance = runtime.start(release, run.runtime_spec, port=port, config=run.settings)
                rec.put_instance(instance, InstanceRole.CANDIDATE)
            try:
                with rec.job(JobType.WAIT_READY, hash=release.hash, generation=generation):
                    runtime.rollout(
                        instance,
                        run.runtime_spec,
                        cancel=run.cancel,
                        progress=lambda message: rec.emit(
                            EventType.STARTING, {"message": message, "port": port}
                        ),
                        tasks_changed=lambda upstreams: self.follow(run, port, upstreams),
                    )
            except BaseException:
                rec.forget_instance(instance.key)
                with contextlib.suppress(Exception):  # route to what serves after it
                    self.follow(run, port, upstreams(runtime, project_id))
                raise
        self.route(run, port, upstreams(runtime, project_id))
        check_through_edge(self.edge, f"http://{self.config.probe_host}:{port}{spec.health.path}")
        self.releases.switch(project_id, release.hash)
        return instance, port

    def tasks(self, run: Run) -> ServiceTasks | None:
        return service_runtime(self.runtimes.for_spec(run.spec)).tasks(run.facts.project_id)

    def sleep(self, run: Run, instance: Instance) -> None:
        """The site sleeps: its service goes to 0 replicas, and the edge to no task."""
        service_runtime(self.runtimes.for_spec(run.spec)).sleep(instance)
        self.releases.route_tasks(run.facts.project_id, (), 0)


def upstreams(runtime: ServiceRuntime, project_id: ProjectId) -> tuple[str, ...]:
    tasks = runtime.tasks(project_id)
    return tasks.upstreams if tasks is not None else ()


class NoEdge:
    """Without the edge a service has no address: its tasks listen on ports the engine picks."""

    def go_live(
        self, run: Run, release: Release, generation: int | None
    ) -> tuple[Instance | None, int]:
        raise StartFailed(
            f"Start failed: runtime {run.spec.runtime or 'swarm'} needs the edge (--edge on or "
            "external): a service's tasks have no one address without it"
        )
