"""Previews of kept versions that run as apps: started on demand, put back to sleep.

A kept version served as files is previewed by the edge from its files (``PreviewLinks``). A
version that runs as an app has a preview dir instead, routed to the waker while nothing runs
it: the first request for ``<version>.<project>.<preview domain>`` reaches ``wake``, which
starts an instance of that version with the project's settings on a free internal port
(named ``PREVIEW_CONFIG``: production's reconciles never plan around it), waits for its
health path, and routes the preview to it. ``tick`` stops the ones no request reached for
``idle`` seconds (the preview server's access log, as for sleeping sites), and the ones whose
version is no longer kept.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.controller.observe import Runtimes
from reconciler.controller.sleep import RETRY_AFTER, Answer
from reconciler.core.errors import StartFailed
from reconciler.core.kinds import RuntimeName
from reconciler.core.spec import ProjectId, ProjectSpec, check_project_id, is_hash8
from reconciler.edge.routes import PreviewLinks
from reconciler.edge.traffic import Traffic
from reconciler.runtimes.base import PREVIEW_CONFIG, Instance, Runtime, wait_ready
from reconciler.stores.ports import port_is_free
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB

logger = logging.getLogger(__name__)

PREVIEW_IDLE = 600.0  # seconds without a request before a preview instance stops


@dataclass
class Running:
    instance: Instance
    runtime: Runtime
    host: str  # <version>.<project>.<domain>, as the access log names it
    since: float


class VersionPreviews:
    """A part of the daemon (its instances stop with it)."""

    name = "version-previews"

    def __init__(
        self,
        links: PreviewLinks,
        releases: ReleaseStore,
        runtimes: Runtimes,
        db: StateDB,
        spec_of: Callable[[ProjectId], ProjectSpec | None],
        *,
        traffic: Traffic | None,
        domain: str,
        ports: range,
        idle: float = PREVIEW_IDLE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.links = links
        self.releases = releases
        self.runtimes = runtimes
        self.db = db
        self.spec_of = spec_of
        self.traffic = traffic
        self.domain = domain
        self.ports = ports  # internal ports a preview instance may take (slots are skipped)
        self.idle = idle
        self.clock = clock
        self._running: dict[tuple[ProjectId, str], Running] = {}
        self._starting: dict[tuple[ProjectId, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """What a previous daemon left: every preview asleep, its instances stopped."""
        for project_id, version in self.links.apps():
            self.links.awake(project_id, version, None)
            with contextlib.suppress(Exception):
                spec = self.spec_of(project_id)
                runtime = self.runtimes.for_spec(spec)
                for instance in runtime.observe(project_id):
                    if instance.config == PREVIEW_CONFIG:
                        runtime.stop(instance, timeout=5)

    def stop(self) -> None:
        with self._lock:
            running, self._running = self._running, {}
        for (project_id, version), entry in running.items():
            self.links.awake(project_id, version, None)
            with contextlib.suppress(Exception):
                entry.runtime.stop(entry.instance, timeout=5)

    def wake(self, key: str) -> Answer:
        """``<project>/<version>``: run that version's preview (one start for every request)."""
        project_raw, _, version = key.partition("/")
        try:
            project_id = check_project_id(project_raw)
        except ValueError:
            return Answer(404, "no such preview")
        if not is_hash8(version) or self.links.app_dir(project_id, version) is None:
            return Answer(404, "no preview of this version")
        with self._lock:
            gate = self._starting.setdefault((project_id, version), threading.Lock())
        with gate:  # the first request starts it; the others wait for it, then go through
            if (project_id, version) in self._running:
                return Answer(204)
            try:
                self._start(project_id, version)
            except Exception as exc:
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                logger.warning("%s: the preview of %s did not start: %s", project_id, version,
                               message)  # fmt: skip
                return Answer(503, f"the preview could not start: {message}", RETRY_AFTER)
        return Answer(204)

    def _start(self, project_id: ProjectId, version: str) -> None:
        spec = self.spec_of(project_id)
        release = self.releases.get(project_id, version)
        if spec is None or release is None:
            raise StartFailed(f"{version} is not kept")
        runtime = self.runtimes.for_spec(spec)
        if runtime.name == RuntimeName.SWARM:
            raise StartFailed("a swarm service's versions have no preview")
        port = self._free_port()
        logger.info("%s: starting a preview of %s on port %s", project_id, version, port)
        instance = runtime.start(release, spec, port=port, config=PREVIEW_CONFIG)
        try:
            wait_ready(
                f"http://127.0.0.1:{port}{spec.health.path}",
                spec.health.model_copy(update={"timeout": min(spec.health.timeout, 60)}),
                alive=lambda: runtime.alive(instance),
                why_dead=lambda: runtime.describe_exit(instance),
            )
        except BaseException:
            with contextlib.suppress(Exception):
                runtime.stop(instance, timeout=2)
            raise
        host = f"{version}.{project_id}.{self.domain}"
        with self._lock:
            self._running[(project_id, version)] = Running(instance, runtime, host, self.clock())
        self.links.awake(project_id, version, f"127.0.0.1:{port}")

    def _free_port(self) -> int:
        taken = {p for s in self.db.sites() for p in (s.slotA, s.slotB) if p is not None}
        with self._lock:
            taken |= {r.instance.port for r in self._running.values() if r.instance.port}
        for port in reversed(self.ports):
            if port not in taken and port_is_free("127.0.0.1", port):
                return port
        raise StartFailed("no free internal port for a preview")

    def tick(self) -> int:
        """Stop the previews nobody asked for lately, and those of versions no longer kept;
        returns how many stopped."""
        now = self.clock()
        with self._lock:
            running = list(self._running.items())
        stopped = 0
        for (project_id, version), entry in running:
            seen = self.traffic.last(None, [entry.host]) if self.traffic is not None else None
            latest = max(entry.since, seen or 0.0)
            gone = self.links.app_dir(project_id, version) is None
            if not gone and now - latest < self.idle:
                continue
            with self._lock:
                self._running.pop((project_id, version), None)
            self.links.awake(project_id, version, None)
            logger.info("%s: the preview of %s sleeps", project_id, version)
            with contextlib.suppress(Exception):
                entry.runtime.stop(entry.instance, timeout=5)
            stopped += 1
        return stopped
