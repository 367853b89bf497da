"""The controller: a work queue of project ids, and ``reconcile(id)`` = observe -> plan -> execute.

``reconcile`` never branches on the event that queued it: file watcher, periodic resync,
health monitor, engine events and startup all just ``enqueue(id)``. A pipeline in flight is
cancelled (within a second: the build's process group or the docker build is killed, a
half-started instance removed) when an enqueue finds that the desired spec it works for has
changed; the reconcile that follows applies the new desired state.

Also here: startup adoption of instances that outlived the daemon, the full resync, and the
health poll that notices a dead instance; the periodic safety nets (fingerprints, a rolling
full reconcile, ``current`` links) walk the projects a slice at a time (``sweeps``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from reconciler.controller.activate import Activator, AtEdge, sync_previews
from reconciler.controller.adopt import Adoption
from reconciler.controller.observe import (
    FactFinder,
    Facts,
    Fingerprints,
    RepairLog,
    Runtimes,
    Sign,
    SpecListener,
    instance_from_row,
)
from reconciler.controller.pipeline import Pipeline
from reconciler.controller.recorder import Listener, Recorder
from reconciler.controller.refusals import Refusals
from reconciler.controller.sleep import observed_for_sleep, tell_sleeper
from reconciler.controller.sweeps import SafetyNet
from reconciler.core.config import Config
from reconciler.core.errors import TransientError
from reconciler.core.kinds import DeploymentKind, InstanceRole, RuntimeName, Status
from reconciler.core.logfiles import rotate
from reconciler.core.plan import Step, deployment_of, plan, should_cancel
from reconciler.core.queue import (
    Done,
    RateLimiter,
    RequeueAfter,
    Result,
    Retry,
    Workers,
    WorkQueue,
)
from reconciler.core.spec import InvalidProjectId, ProjectId, check_project_id, is_hash8
from reconciler.core.timeutil import iso
from reconciler.stores.desired import DesiredStore, LastGood
from reconciler.stores.desired.parse import SETTLE
from reconciler.stores.ports import PortAllocator
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB, StateWriteFailed
from reconciler.stores.vault import Vault

logger = logging.getLogger(__name__)
SAMPLED = (InstanceRole.ACTIVE, InstanceRole.STANDBY)  # what the usage job samples
USAGE_FRESH = 300.0  # seconds: figures that did not move are written again after this


class Controller:
    def __init__(
        self,
        config: Config,
        *,
        desired: DesiredStore,
        db: StateDB,
        releases: ReleaseStore,
        ports: PortAllocator,
        runtimes: Runtimes,
        at_edge: AtEdge | None = None,
        clock: Callable[[], float] = time.monotonic,
        listener: Listener | None = None,
        on_reconciled: Callable[[float], None] | None = None,
        on_spec: SpecListener | None = None,
        last_good: LastGood | None = None,
    ) -> None:
        self.on_reconciled = on_reconciled  # the seconds each reconcile took (metrics)
        self.config = config
        self.desired = desired
        self.db = db
        self.releases = releases
        self.ports = ports
        self.runtimes = runtimes
        self.last_good = last_good if last_good is not None else LastGood(config.default_runtime)
        repairs = RepairLog(clock)
        self.fingerprints = Fingerprints(desired, releases)
        self.facts = FactFinder(
            desired=desired,
            db=db,
            releases=releases,
            runtimes=self.runtimes,
            last_good=self.last_good,
            repairs=repairs,
            edge=config.edge,
            on_spec=on_spec,
            vault=Vault(config.layout.vault),
        )
        self.at_edge = at_edge
        self.pipeline = Pipeline(
            config,
            db=db,
            releases=releases,
            ports=ports,
            runtimes=self.runtimes,
            repairs=repairs,
            activator=Activator(
                config, db=db, releases=releases, ports=ports, runtimes=runtimes, at_edge=at_edge
            ),
            listener=listener,
        )
        self.queue: WorkQueue[str] = WorkQueue(clock)
        self.workers = Workers(
            self.queue,
            lambda key: self.reconcile(ProjectId(key)),
            count=config.workers,
            budget=lambda key: self._budget(ProjectId(key)),
            limiter=RateLimiter(),
            clock=clock,
        )
        self._inflight: dict[ProjectId, tuple[str | None, threading.Event]] = {}
        self._inflight_lock = threading.Lock()
        self.refusals = Refusals()
        self._missing_since: dict[ProjectId, float] = {}
        self.clock = clock
        # Observing and planning is pure Python: workers doing it at once only fight over
        # the GIL (a full resync of 300 projects took 0.8 s with 8 workers, 0.4 s with one).
        # One at a time; the steps (builds, starts, health checks) still run side by side.
        self._thinking = threading.Lock()
        self.net = SafetyNet(
            ids=lambda: set(desired.ids()) | db.project_ids(),
            fingerprints=self.fingerprints,
            db=db,
            releases=releases,
            enqueue=self.enqueue,
            watched=config.watch,
            interval=config.resync_interval,
            clock=clock,
        )

    # -- the queue -------------------------------------------------------------------------

    def enqueue(self, project_id: ProjectId, delay: float = 0.0, *, routine: bool = False) -> None:
        """Ask for a reconcile; cancels a pipeline whose desired spec just changed. A
        ``routine`` ask (the safety net's) leaves a retry's backoff as it is."""
        with self._inflight_lock:
            inflight = self._inflight.get(project_id)
        if inflight is not None and delay == 0:
            digest, cancel = inflight
            with contextlib.suppress(Exception):
                if should_cancel(digest, self.facts.desired_now(project_id)):
                    logger.info("%s: desired state changed; cancelling the pipeline", project_id)
                    cancel.set()
        self.queue.add(project_id, delay, routine=routine)

    def start(self) -> None:
        self.workers.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel in-flight work and wait for the workers. Instances keep running."""
        with self._inflight_lock:
            for _digest, cancel in self._inflight.values():
                cancel.set()
        self.workers.stop(timeout)

    def hung(self) -> list[str]:
        return self.workers.hung()

    def _budget(self, project_id: ProjectId) -> float:
        """The longest one reconcile may take: its timeouts plus a margin."""
        spec = self.last_good.get(project_id)
        if spec is None:
            return 3600.0
        return spec.build.timeout + spec.health.timeout + 120.0

    # -- reconcile -------------------------------------------------------------------------

    def reconcile(self, project_id: ProjectId) -> Result:
        """Converge one project: observe, plan, execute."""
        if self.workers.stopping:
            return Done()
        started, cpu = time.monotonic(), time.thread_time()
        try:
            result, sign = self._reconcile(project_id)
        except StateWriteFailed as exc:  # a full disk: said in a line, retried
            logger.error("%s: the state database cannot be written: %s; retried", project_id, exc)
            return Retry(f"the state database cannot be written: {exc}", at_least=5)
        self.net.reconciled(time.thread_time() - cpu)
        if self.on_reconciled is not None:
            self.on_reconciled(time.monotonic() - started)
        # the sign it leaves: its inputs as they were when it read them (a file saved while it
        # ran moves the sign: the next resync reconciles again)
        self.fingerprints.converged(project_id, isinstance(result, Done), sign)
        self.net.swept(project_id)
        return result

    def _reconcile(self, project_id: ProjectId) -> tuple[Result, Sign | None]:
        """The result, and the project's fingerprint as the reconcile found it (its release
        dir as the steps left it)."""
        sleeper = self.at_edge.sleeper if self.at_edge is not None else None
        with self._thinking:
            sign = self.fingerprints.sign(project_id)  # before reading: a later save moves it
            facts = self.facts.observe(project_id)
            if facts is None:
                return Done(), sign
            facts = observed_for_sleep(sleeper, facts)
            steps = plan(facts.view, facts.observed)
        desired = facts.desired
        self.refusals.project(project_id, desired)
        wait = self._stop_settles(project_id, facts, steps)
        if wait > 0:
            return RequeueAfter(wait), None
        if desired is not None and desired.spec is not None and facts.spec is not None:
            # the spec in force: the file's, with the production state kept when it has none
            known = self.last_good.get(project_id) == facts.spec
            if not known or facts.row is None or facts.row.lastGoodSpec is None:
                self.last_good.remember(project_id, facts.spec)
                recorder = Recorder(self.db, project_id, digest=facts.digest)
                recorder.remember_spec(facts.spec, facts.row)
        with self._inflight_scope(project_id, facts.digest) as cancel:
            result = self.pipeline.execute(facts, steps, cancel)
        sync_previews(self.at_edge, self.releases, facts, bool(steps))
        tell_sleeper(sleeper, self.db, self.releases, facts, bool(steps or facts.gone))
        if desired is not None and desired.settles_at is not None and isinstance(result, Done):
            # saved without a final newline: read it again once it has settled
            return RequeueAfter(max(0.05, desired.settles_at - time.time() + 0.01)), None
        return result, self.fingerprints.rebased(project_id, sign) if steps else sign

    def _stop_settles(self, project_id: ProjectId, facts: Facts, steps: list[Step]) -> float:
        """Seconds to wait before stopping a site that serves: a change that takes a site
        down (state: stopped, or the file deleted) must have held for SETTLE seconds, so a
        torn or half-done write never causes an outage. 0: go ahead."""
        if facts.desired is not None:
            self._missing_since.pop(project_id, None)
        serving = facts.observed.status in (Status.RUNNING, Status.ERROR, Status.SLEEPING)
        if not serving or deployment_of(steps) != DeploymentKind.STOP:
            return 0.0
        if facts.desired is None:
            since = self._missing_since.setdefault(project_id, time.time())
        else:
            try:
                since = os.stat(facts.desired.path, follow_symlinks=False).st_mtime
            except OSError:
                return 0.0
        wait = since + SETTLE - time.time()
        if wait > 0:
            logger.info("%s: a stop waits %.1f s for the desired file to settle", project_id, wait)
        return max(0.0, wait + 0.01) if wait > 0 else 0.0

    @contextlib.contextmanager
    def _inflight_scope(
        self, project_id: ProjectId, digest: str | None
    ) -> Iterator[threading.Event]:
        cancel = threading.Event()
        entry = (digest, cancel)
        with self._inflight_lock:
            self._inflight[project_id] = entry
        try:
            yield cancel
        finally:
            with self._inflight_lock:
                if self._inflight.get(project_id) is entry:
                    del self._inflight[project_id]

    # -- startup, resync, health -----------------------------------------------------------

    def known_projects(self) -> set[ProjectId]:
        """Every project with a desired file, a row, an instance or a release dir."""
        ids: set[ProjectId] = set(self.desired.ids()) | self.db.project_ids()
        if self.releases.root.is_dir():
            for entry in self.releases.root.iterdir():
                with contextlib.suppress(InvalidProjectId):
                    ids.add(check_project_id(entry.name))
        return ids

    def adopt(self) -> None:
        """At startup: record what really runs and free port reservations nothing holds."""
        Adoption(
            self.config, self.desired, self.db, self.releases, self.ports, self.facts,
            self.last_good, self.at_edge.drainer if self.at_edge is not None else None,
        ).run(self.known_projects())  # fmt: skip

    def resync(self, *, full: bool = True, changed_only: bool = False) -> int:
        """Queue every known project (``full``; with ``changed_only``, those whose
        fingerprint moved since they converged), or the periodic slice: those whose inputs
        moved, and this tick's share of full reconciles (``SafetyNet.tick``). Returns how
        many were queued."""
        if not full:
            return self.net.tick()
        self.refusals.orphans(self.desired.scan_names())
        return self.net.full(self.known_projects(), changed_only=changed_only)

    def rotate_logs(self) -> int:
        """Rotate the app logs of running process instances past their size limit (their
        processes keep writing: copy and truncate). Returns how many were rotated."""
        done = 0
        for row in self.db.instances():
            if row.runtime != RuntimeName.PROCESS or not is_hash8(row.hash):
                continue
            log = self.releases.log(ProjectId(row.project), row.hash, "app")
            if rotate(log, self.config.logs):
                logger.info("%s: rotated %s", row.project, log)
                done += 1
        return done

    def sample_usage(self) -> int:
        """Record what each serving instance uses now (memory, CPU), where its runtime can
        tell, in one write; an instance whose figures did not move is written again only
        when its last sample is ``USAGE_FRESH`` old (each write bumps its project's revision:
        readers' caches of it start over). Returns how many were sampled."""
        found = []
        stale = iso(datetime.now(UTC) - timedelta(seconds=USAGE_FRESH))
        for row in self.db.instances():
            if row.role not in SAMPLED or not is_hash8(row.hash):
                continue
            try:
                usage = self.runtimes.get(row.runtime).usage(instance_from_row(row))
            except Exception as exc:  # an engine away: the next sample tries again
                logger.debug("%s: usage: %s", row.project, exc)
                continue
            if usage is None:
                continue
            moved = (usage.memory, usage.cpu) != (row.memory, row.cpu)
            if moved or row.usageAt is None or row.usageAt < stale:
                found.append((row.project, row.key, usage.memory, usage.cpu))
        self.db.set_usages(found)
        return len(found)

    def check_health(self) -> None:
        """Queue every project whose active instance is gone, and those of the slice whose
        ``current`` drifted."""
        self.net.check_current()
        for row in self.db.instances():
            if row.role != InstanceRole.ACTIVE or not is_hash8(row.hash):
                continue
            try:
                alive = self.runtimes.get(row.runtime).alive(instance_from_row(row))
            except TransientError:
                continue
            if not alive:
                logger.warning("%s: instance of %s is gone", row.project, row.hash)
                self.enqueue(ProjectId(row.project))
