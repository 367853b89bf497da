"""Bringing a release live: start (or reuse) its instance, wait until it answers, switch
``current`` and the status, then stop the instances it replaces and prune old releases.

A failure before the switch removes what was started for it and frees its port; the
version that served keeps serving, untouched.
"""

from __future__ import annotations

import contextlib
import logging

from reconciler.config import Config
from reconciler.controller.observe import Runtimes
from reconciler.controller.run import Run
from reconciler.kinds import EventType, InstanceRole, JobType, Status
from reconciler.ports import PortAllocator
from reconciler.releases import Release, ReleaseStore
from reconciler.runtimes.base import Instance, Runtime, wait_ready
from reconciler.state import ProjectChanges, StateDB
from reconciler.timeutil import utcnow

logger = logging.getLogger(__name__)


class Activator:
    def __init__(
        self,
        config: Config,
        *,
        db: StateDB,
        releases: ReleaseStore,
        ports: PortAllocator,
        runtimes: Runtimes,
    ) -> None:
        self.config = config
        self.db = db
        self.releases = releases
        self.ports = ports
        self.runtimes = runtimes

    def activate(self, run: Run, release: Release, *, generation: int | None, built: bool) -> None:
        """Start (or reuse) an instance of ``release``, wait ready, switch, stop the others."""
        pid, rec = run.facts.project_id, run.recorder
        runtime = self.runtimes.for_spec(run.spec)
        instance = self._start_ready(run, runtime, release, generation)
        self.releases.switch(pid, release.hash)
        url = self.config.url_for(instance.port)
        changes: ProjectChanges = {
            "productionStatus": Status.RUNNING,
            "productionHash": release.hash,
            "productionPort": instance.port,
            "productionUrl": url,
            "productionStartedAt": utcnow(),
            "productionError": None,
            "failedDigest": None,
            "desiredDigest": run.facts.digest,
        }
        if built:
            changes["observedGeneration"] = generation
            changes["latestHash"] = release.hash
        rec.update(**changes)
        rec.put_instance(instance, InstanceRole.ACTIVE)
        logger.info("%s: running %s at %s", pid, release.hash, url)
        rec.emit(
            EventType.READY,
            {"status": "running", "url": url, "port": instance.port, "hash": release.hash},
        )
        others = tuple(h for h in run.live if h != release.hash)
        run.live[release.hash] = (instance, runtime)
        self.stop(run, others)
        self._prune(run, release.hash)

    def _start_ready(
        self, run: Run, runtime: Runtime, release: Release, generation: int | None
    ) -> Instance:
        """The production.start and production.waitReady jobs. A failure removes what they
        started and frees its port; an instance that was already running is left alone."""
        pid, rec, spec = run.facts.project_id, run.recorder, run.spec
        existing = run.live.get(release.hash)
        reused = existing[0] if existing is not None and existing[0].port is not None else None
        started: Instance | None = None
        port: int | None = None
        try:
            with rec.job(JobType.START, hash=release.hash, generation=generation):
                if reused is not None:
                    port = reused.port
                    message = f"Reusing the running instance of {release.hash} on port {port}"
                    rec.emit(EventType.STARTING, {"message": message, "port": port})
                    instance = reused
                else:
                    port = self.ports.allocate(pid, hash=release.hash)
                    logger.info("%s: start %s on port %s", pid, release.hash, port)
                    rec.emit(
                        EventType.STARTING,
                        {"message": f"Starting {release.hash} on port {port}...", "port": port},
                    )
                    instance = started = runtime.start(release, spec, port=port)
                    rec.put_instance(started, InstanceRole.CANDIDATE)
            with rec.job(JobType.WAIT_READY, hash=release.hash, generation=generation):
                wait_ready(
                    f"http://{self.config.probe_host}:{port}{spec.health.path}",
                    spec.health,
                    alive=lambda: runtime.alive(instance),
                    why_dead=lambda: runtime.describe_exit(instance),
                    cancel=run.cancel,
                )
        except BaseException:
            if reused is None:
                if started is not None:
                    with contextlib.suppress(Exception):
                        runtime.stop(started, timeout=2)
                    rec.forget_instance(release.hash)
                self.ports.release(port)
            raise
        return instance

    def stop(self, run: Run, hashes: tuple[str, ...]) -> None:
        for version in hashes:
            entry = run.live.pop(version, None)
            if entry is None:
                continue
            instance, runtime = entry
            with run.recorder.job(JobType.STOP, hash=version):
                logger.info("%s: stop %s (port %s)", instance.project_id, version, instance.port)
                runtime.stop(instance)
            run.recorder.forget_instance(version)
            self.ports.release(instance.port)

    def _prune(self, run: Run, active: str) -> None:
        pid, spec = run.facts.project_id, run.spec
        protect = {active, *run.live}
        if spec.production.pinned:
            protect.add(spec.production.pinned)
        row = self.db.project(pid)
        if row is not None and row.latestHash:
            protect.add(row.latestHash)
        removed = self.releases.prune(pid, keep=spec.keep, protect=protect)
        runtime = self.runtimes.for_spec(spec)
        for version in removed:
            logger.info("%s: pruned %s", pid, version)
            with contextlib.suppress(Exception):
                runtime.remove_version(pid, version)
