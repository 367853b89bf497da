"""Bringing a release live, whatever serves it: go live (``golive``), then switch the status,
retire the instances it replaces and prune old releases.

Retiring: without the edge the old instance is stopped at once (its port was the address);
at the edge it is drained in the background (``drain``), so the deploy is reported running,
and a rollback answers, as soon as the edge serves the new version.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass

from reconciler.controller.decide import Retire, retire_how
from reconciler.controller.drain import Drainer
from reconciler.controller.front import Front
from reconciler.controller.golive import (
    GoLive,
    NoEdge,
    OnPort,
    Service,
    Slots,
    Static,
    site_for,
)
from reconciler.controller.observe import Facts, Runtimes
from reconciler.controller.run import Run
from reconciler.controller.sleep import Sleeper
from reconciler.core.config import Config
from reconciler.core.kinds import EventType, InstanceRole, JobType, ServeMode, Status
from reconciler.core.plan import mode_of
from reconciler.core.spec import ProjectId
from reconciler.core.timeutil import utcnow
from reconciler.edge.routes import PreviewLinks
from reconciler.stores.facts import commit_fields
from reconciler.stores.ports import PortAllocator, SiteAllocator
from reconciler.stores.releases import Release, ReleaseStore
from reconciler.stores.state import ProjectChanges, StateDB

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AtEdge:
    """What serving through the edge takes: the edge, the ports reserved for each site, the
    drainer, and the edge's check listener."""

    edge: Front
    sites: SiteAllocator
    drainer: Drainer
    control_port: int
    previews: PreviewLinks | None = None  # the links previews of kept versions go through
    sleeper: Sleeper | None = None  # idle sites sleep, and their requests wake them


def sync_previews(at_edge: AtEdge | None, releases: ReleaseStore, facts: Facts, ran: bool) -> None:
    """Point the project's preview links at its kept versions that are served as files, and
    give those that run as apps a preview dir (started on demand, ``VersionPreviews``; an
    app's files are its code: never served). ``ran``: steps ran, so the store is read again."""
    if at_edge is None or at_edge.previews is None:
        return
    project_id = facts.project_id
    if facts.view is None:  # its desired file is gone, and so are its previews
        at_edge.previews.sync(project_id, [])
        return
    if ran:
        kept = frozenset(r.hash for r in releases.versions(project_id))
        apps = frozenset(v for v in kept if releases.runs_app(project_id, v))
    else:
        kept, apps = facts.observed.releases, facts.observed.apps
    modes = {v: mode_of(facts.view.mode, v, apps) for v in kept}
    shown = [v for v, mode in modes.items() if mode == ServeMode.STATIC]
    started = [v for v, mode in modes.items() if mode == ServeMode.DYNAMIC]  # on demand
    at_edge.previews.sync(project_id, shown, started)


class Activator:
    def __init__(
        self,
        config: Config,
        *,
        db: StateDB,
        releases: ReleaseStore,
        ports: PortAllocator,
        runtimes: Runtimes,
        at_edge: AtEdge | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.releases = releases
        self.ports = ports
        self.runtimes = runtimes
        self.edge = at_edge.edge if at_edge else None
        self.sites = at_edge.sites if at_edge else None
        self.drainer = at_edge.drainer if at_edge else None
        self.ways: dict[ServeMode, GoLive] = {
            ServeMode.PORT: OnPort(config, ports=ports, runtimes=runtimes),
            ServeMode.SERVICE: NoEdge(),
        }
        self.service: Service | None = None
        self._down: dict[ProjectId, tuple[str, ...]] = {}  # the nodes last said to be down
        if at_edge is not None:
            self.ways[ServeMode.STATIC] = Static(
                config, releases=releases, sites=at_edge.sites, edge=at_edge.edge,
                control_port=at_edge.control_port,
            )  # fmt: skip
            self.ways[ServeMode.DYNAMIC] = Slots(
                config, releases=releases, sites=at_edge.sites, edge=at_edge.edge,
                runtimes=runtimes, drainer=at_edge.drainer,
            )  # fmt: skip
            self.service = Service(
                config, releases=releases, sites=at_edge.sites, edge=at_edge.edge,
                runtimes=runtimes,
            )  # fmt: skip
            self.ways[ServeMode.SERVICE] = self.service

    def activate(self, run: Run, release: Release, *, generation: int | None, built: bool) -> None:
        """Bring ``release`` live, record it, retire what it replaces, prune."""
        project_id, rec = run.facts.project_id, run.recorder
        run.bring(release.hash, runs_app=self.releases.runs_app(project_id, release.hash))
        mode = run.mode
        instance, port = self.ways[mode].go_live(run, release, generation)
        if mode == ServeMode.PORT:
            self.releases.switch(project_id, release.hash)
        url = self.config.site_url(port, run.spec.domains)
        changes: ProjectChanges = {
            "productionStatus": Status.RUNNING,
            "productionHash": release.hash,
            "productionPort": port,
            "productionUrl": url,
            "productionStartedAt": utcnow(),
            "productionError": None,
            "failedDigest": None,
            "desiredDigest": run.facts.digest,
        }
        if mode == ServeMode.SERVICE and self.service is not None:
            tasks = self.service.tasks(run)
            changes["productionReplicas"] = tasks.replicas if tasks is not None else None
        if built:
            changes["observedGeneration"] = generation
            changes["latestHash"] = release.hash
            changes["latestSource"] = json.dumps(run.built_from) if run.built_from else None
        rec.update(**changes)
        if instance is not None:
            rec.put_instance(instance, InstanceRole.ACTIVE)
        commit = commit_fields(
            run.built_from if built else self.releases.source_of(project_id, release.hash)
        )
        logger.info(
            "%s: running %s at %s%s", project_id, release.hash, url,
            f" (commit {commit['commit'][:12]})" if commit else "",
        )  # fmt: skip
        rec.emit(
            EventType.READY,
            {"status": "running", "url": url, "port": port, "hash": release.hash, **commit},
        )
        others = tuple(k for k in run.live if instance is None or k != instance.key)
        # the instance of another version the edge routed to: kept for the rollback window
        # (an instance of this version with older settings is not: nothing rolls back to it)
        routed = run.live.get(run.facts.observed.routed or "")
        replaced = run.facts.observed.routed if routed and routed[0].hash != release.hash else None
        if instance is not None:
            run.live[instance.key] = (instance, self.runtimes.for_spec(run.spec))
        self.retire(run, others, replaced=replaced)
        self._prune(run, release.hash)

    def retire(self, run: Run, keys: tuple[str, ...], *, replaced: str | None = None) -> None:
        """Instances no longer wanted: drained at the edge, stopped at once without it. The
        one a deploy ``replaced`` is kept for the spec's rollback window (a rollback to it is
        a switch); a project that stops keeps none."""
        if self.drainer is None or retire_how(run.mode, drains=True) == Retire.STOP:
            self.stop(run, keys)
            return
        window = run.spec.rollback.window if run.facts.spec is not None else 0.0
        for key in keys:
            entry = run.live.pop(key, None)
            if entry is not None:
                keep = window if key == replaced else None
                self.drainer.drain(*entry, standby=keep)

    def stop(self, run: Run, keys: tuple[str, ...]) -> None:
        """Stop instances now (inside the deployment), and free their ports."""
        for key in keys:
            entry = run.live.pop(key, None)
            if entry is None:
                continue
            instance, runtime = entry
            project_id = run.facts.project_id
            if self.drainer is not None and key in self.drainer.out_of_service(project_id):
                self.drainer.finish(project_id, key)
                continue
            with run.recorder.job(JobType.STOP, hash=instance.hash):
                logger.info("%s: stop %s (port %s)", instance.project_id, key, instance.port)
                runtime.stop(instance, timeout=self.config.stop_grace)
            run.recorder.forget_instance(key)
            self.ports.release(instance.port)

    def serve(self, run: Run, *, changed: bool = True) -> None:
        """Make the edge serve a project that runs, with its current settings (domains);
        level-based: nothing happens when it already does. ``changed``: this reconcile
        changed something (else the rows it observed still hold)."""
        row = self.db.project(run.facts.project_id) if changed else run.facts.row
        if self.edge is None or self.sites is None or row is None or row.productionPort is None:
            return
        mode = run.mode
        if mode == ServeMode.PORT or run.facts.spec is None:
            return
        site = run.facts.site if not changed and run.facts.site else None
        site = site or self.sites.reserve(run.facts.project_id)
        if site.publicPort != row.productionPort:
            return  # not yet served at the edge (e.g. before an upgrade's first activation)
        asleep = row.productionStatus == Status.SLEEPING
        if not changed and not asleep and _kind_changes(mode, run.facts.observed.routed):
            return  # files to an app or back: the activation's checked switch, not this
        if mode == ServeMode.SERVICE and self.service is not None:
            # the tasks move (Swarm restarts, reschedules or rescales them): follow them
            tasks = self.service.tasks(run)
            upstreams = tasks.upstreams if tasks and not asleep else ()
            self.service.route(run, site.publicPort, upstreams, asleep=asleep)
            replicas = tasks.replicas if tasks is not None else None
            if replicas != row.productionReplicas:
                run.recorder.update(productionReplicas=replicas)
            self._say_down(run, tasks.down if tasks is not None else (), replicas)
            return
        slots = site.slots if mode == ServeMode.DYNAMIC else None
        if mode == ServeMode.DYNAMIC and slots is None:
            return
        self.edge.put(site_for(run, site.publicPort, mode, slots, asleep=asleep))

    def _say_down(self, run: Run, down: tuple[str, ...], replicas: str | None) -> None:
        """An event when nodes go down under the project's tasks (once for each)."""
        project_id = run.facts.project_id
        if down == self._down.get(project_id, ()):
            return
        self._down[project_id] = down
        if down:
            message = (f"node {', '.join(down)} is down: {replicas} replicas serve; Swarm "
                       "reschedules its tasks")  # fmt: skip
            logger.warning("%s: %s", project_id, message)
            run.recorder.emit(EventType.EXITED, {"message": message})

    def sleep(self, run: Run, keys: tuple[str, ...]) -> None:
        """An idle site sleeps: first its requests go to the waker, then its instances stop
        (drained: requests in flight finish)."""
        project_id = run.facts.project_id
        run.recorder.update(productionStatus=Status.SLEEPING, productionError=None)
        message = "No request for a while: stopped until the next one"
        run.recorder.emit(EventType.SLEEPING, {"status": "sleeping", "message": message})
        self.serve(run)
        logger.info("%s: sleeping (stopping %s)", project_id, ", ".join(keys) or "nothing")
        if run.mode == ServeMode.SERVICE and self.service is not None:
            for key in keys:  # the service stays, at 0 replicas, to be scaled up again
                if (entry := run.live.get(key)) is not None:
                    self.service.sleep(run, entry[0])
                    run.recorder.forget_instance(key)
            return
        self.retire(run, keys)
        if self.drainer is not None:  # a sleeping site keeps no instance for a rollback
            for key in self.drainer.held(project_id):
                self.drainer.finish(project_id, key)

    def unserve(self, run: Run) -> None:
        """The project stops: the edge closes its port; a deleted project gives its ports back."""
        if self.edge is not None:
            self.edge.drop(run.facts.project_id)
        if run.mode == ServeMode.SERVICE:
            self.releases.route_tasks(run.facts.project_id, (), 0)
        if self.sites is not None and run.facts.view is None:
            self.sites.release(run.facts.project_id)

    def _prune(self, run: Run, active: str) -> None:
        project_id, spec = run.facts.project_id, run.spec
        protect = {active, *(i.hash for i, _rt in run.live.values())}
        if self.drainer is not None:
            protect |= {i.hash for i in self.drainer.pending(project_id).values()}
        if spec.production.pinned:
            protect.add(spec.production.pinned)
        row = self.db.project(project_id)
        if row is not None and row.latestHash:
            protect.add(row.latestHash)
        removed = self.releases.prune(project_id, keep=spec.keep, protect=protect)
        runtime = self.runtimes.for_spec(spec)
        for version in removed:
            logger.info("%s: pruned %s", project_id, version)
            with contextlib.suppress(Exception):
                runtime.remove_version(project_id, version)


def _kind_changes(mode: ServeMode, routed: str | None) -> bool:
    """Whether serving the spec's ``mode`` would change what kind the edge serves now: an
    instance of an app (``routed``) as files, or files as an app (a spec whose checked
    switch failed stays in force; what is served stays as it was)."""
    return (mode == ServeMode.STATIC and routed is not None) or (
        mode == ServeMode.DYNAMIC and routed is None
    )
