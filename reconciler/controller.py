"""The controller: a work queue of project ids and the reconcile function that serves it.

``reconcile(id)`` reads the desired file, observes what really runs (state DB, runtimes,
release store), asks the pure planner for steps and runs them. It never branches on the
event that queued it: file watcher, periodic resync, health monitor, Docker events and
startup all just ``enqueue(id)``.

The queue hands a key to one worker at a time; a key added while it is being reconciled is
reconciled once more afterwards. Outcomes: done; requeue after a delay (transient errors,
capped exponential backoff); permanent failure recorded against the exact desired spec and not
retried until the spec changes.

A pipeline in flight is cancelled (within a second: the build's process group or the docker
build is killed, a half-started instance removed) when an enqueue finds that the desired spec
it works for has changed; the reconcile that follows applies the new desired state.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reconciler.config import Config
from reconciler.desired import DesiredStore, Loaded
from reconciler.errors import Cancelled, PermanentError, TransientError
from reconciler.plan import (
    FLAP_WINDOW,
    Activate,
    Build,
    DesiredView,
    Fail,
    ObservedInstance,
    ObservedView,
    Record,
    RestoreCurrent,
    Step,
    StopInstances,
    plan,
    should_cancel,
)
from reconciler.ports import PortAllocator
from reconciler.releases import Release, ReleaseStore
from reconciler.runtimes.base import BuildRequest, Instance, Runtime, wait_ready
from reconciler.spec import ProjectId, ProjectSpec, check_project_id, is_hash8
from reconciler.state import InstanceRow, ProjectRow, StateDB
from reconciler.timeutil import utcnow

logger = logging.getLogger(__name__)

MAX_BACKOFF = 60.0


class WorkQueue:
    """De-duplicated keys, one worker per key at a time, delayed re-adds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._ready: collections.deque[str] = collections.deque()
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()
        self._delayed: list[tuple[float, str]] = []
        self._closed = False

    def add(self, key: str, delay: float = 0.0) -> None:
        with self._cond:
            if self._closed:
                return
            if delay > 0:
                heapq.heappush(self._delayed, (self._clock() + delay, key))
            else:
                self._add_now(key)
            self._cond.notify_all()

    def _add_now(self, key: str) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.append(key)

    def get(self, timeout: float | None = None) -> str | None:
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while not self._closed:
                now = self._clock()
                while self._delayed and self._delayed[0][0] <= now:
                    self._add_now(heapq.heappop(self._delayed)[1])
                if self._ready:
                    key = self._ready.popleft()
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                waits = [0.5]
                if self._delayed:
                    waits.append(self._delayed[0][0] - now)
                if deadline is not None:
                    if now >= deadline:
                        return None
                    waits.append(deadline - now)
                self._cond.wait(max(0.001, min(waits)))
            return None

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._add_now(key)
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class Inflight:
    digest: str | None
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class Context:
    """What one reconcile works with."""

    project_id: ProjectId
    loaded: Loaded | None
    spec: ProjectSpec | None
    digest: str | None
    row: ProjectRow | None
    instances: dict[str, tuple[Instance, Runtime]]
    cancel: threading.Event
    deployment: int | None = None


def instance_from_row(row: InstanceRow) -> Instance:
    return Instance(
        ProjectId(row.project),
        row.hash,
        row.runtime,
        row.port,
        row.startedAt,
        pid=row.pid,
        pid_start=row.pidStart,
        container_id=row.containerId,
    )


class Controller:
    def __init__(
        self,
        config: Config,
        *,
        desired: DesiredStore,
        db: StateDB,
        releases: ReleaseStore,
        ports: PortAllocator,
        runtime_factory: Callable[[str], Runtime],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.desired = desired
        self.db = db
        self.releases = releases
        self.ports = ports
        self._runtime_factory = runtime_factory
        self._runtimes: dict[str, Runtime] = {}
        self._runtimes_lock = threading.Lock()
        self.clock = clock
        self.queue = WorkQueue(clock)
        self._inflight: dict[str, Inflight] = {}
        self._inflight_lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._repairs: dict[str, collections.deque[float]] = {}
        self._workers: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.reconciles = 0
        self.seen: set[str] = set()
        self._busy: dict[str, tuple[float, float]] = {}  # key -> (started, budget)
        self._busy_lock = threading.Lock()

    # -- runtimes --------------------------------------------------------------------------

    def runtime(self, name: str) -> Runtime:
        with self._runtimes_lock:
            if name not in self._runtimes:
                self._runtimes[name] = self._runtime_factory(name)
            return self._runtimes[name]

    def runtime_name(self, spec: ProjectSpec | None) -> str:
        if spec is not None and spec.runtime is not None:
            return spec.runtime
        return self.config.default_runtime

    # -- queue and workers -----------------------------------------------------------------

    def enqueue(self, project_id: str, delay: float = 0.0) -> None:
        """Ask for a reconcile; cancels a pipeline whose desired spec just changed."""
        with self._inflight_lock:
            inflight = self._inflight.get(project_id)
        if inflight is not None and delay == 0:
            with contextlib.suppress(Exception):
                view = self._desired_view(self.desired.load(ProjectId(project_id)))
                if should_cancel(inflight.digest, view):
                    logger.info(
                        "%s: desired state changed; cancelling the running pipeline", project_id
                    )
                    inflight.cancel.set()
        self.queue.add(project_id, delay)

    def start(self) -> None:
        for index in range(self.config.workers):
            thread = threading.Thread(target=self._work, name=f"reconcile-{index}", daemon=True)
            thread.start()
            self._workers.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel in-flight work and wait for the workers. Instances keep running."""
        self._stopping.set()
        with self._inflight_lock:
            for inflight in self._inflight.values():
                inflight.cancel.set()
        self.queue.close()
        deadline = time.monotonic() + timeout
        for thread in self._workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._workers = [t for t in self._workers if t.is_alive()]

    def _work(self) -> None:
        while not self._stopping.is_set():
            key = self.queue.get(timeout=0.5)
            if key is None:
                continue
            with self._busy_lock:
                self._busy[key] = (self.clock(), self._budget(key))
            try:
                delay = self.reconcile(ProjectId(key))
            except Exception:
                logger.exception("%s: reconcile crashed", key)
                delay = self._backoff(key)
            finally:
                with self._busy_lock:
                    self._busy.pop(key, None)
                self.queue.done(key)
                self.seen.add(key)
                self.reconciles += 1
            if delay is not None and not self._stopping.is_set():
                self.queue.add(key, delay)

    def _budget(self, key: str) -> float:
        """The longest one reconcile of ``key`` may take: its timeouts plus a margin."""
        spec = self.desired.last_good(ProjectId(key))
        if spec is None:
            return 3600.0
        return spec.build.timeout + spec.health.timeout + 120.0

    def hung(self) -> list[str]:
        """Keys whose reconcile outlived every timeout it could be waiting on."""
        now = self.clock()
        with self._busy_lock:
            return [k for k, (start, budget) in self._busy.items() if now - start > budget]

    def _backoff(self, key: str) -> float:
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        return float(min(MAX_BACKOFF, 2 ** (count - 1)))

    # -- observing -------------------------------------------------------------------------

    def _desired_view(self, loaded: Loaded | None) -> DesiredView | None:
        if loaded is None:
            return None
        spec = loaded.in_force
        return DesiredView(spec, spec.digest() if spec else None, loaded.error)

    def _load(self, project_id: ProjectId, row: ProjectRow | None) -> Loaded | None:
        loaded = self.desired.load(project_id)
        if loaded is None:
            return None
        if loaded.spec is None and loaded.in_force is None and row and row.lastGoodSpec:
            with contextlib.suppress(ValueError):
                self.desired.remember(project_id, ProjectSpec.model_validate_json(row.lastGoodSpec))
                loaded = self.desired.load(project_id)
        return loaded

    def _observe(
        self, project_id: ProjectId, spec: ProjectSpec | None
    ) -> tuple[dict[str, tuple[Instance, Runtime]], list[InstanceRow]]:
        """Instances that really run (by runtime), and DB rows of ones that do not."""
        rows = self.db.instances(project_id)
        names = {self.runtime_name(spec)} | {r.runtime for r in rows}
        if spec is None and not rows:
            names = {self.config.default_runtime}
        alive: dict[str, tuple[Instance, Runtime]] = {}
        for name in sorted(names):
            runtime = self.runtime(name)
            for instance in runtime.observe(project_id):
                alive[instance.hash] = (instance, runtime)
        gone = [r for r in rows if r.hash not in alive]
        return alive, gone

    def _observed_view(
        self, project_id: ProjectId, row: ProjectRow | None, alive: dict[str, Any]
    ) -> ObservedView:
        repairs = self._repairs.get(project_id, collections.deque())
        now = self.clock()
        while repairs and now - repairs[0] > FLAP_WINDOW:
            repairs.popleft()
        return ObservedView(
            status=row.productionStatus if row else "stopped",
            active_hash=row.productionHash if row else None,
            latest_hash=row.latestHash if row else None,
            observed_generation=row.observedGeneration if row else None,
            failed_digest=row.failedDigest if row else None,
            current=self.releases.current(project_id),
            instances=tuple(
                ObservedInstance(h, True, inst.port) for h, (inst, _rt) in sorted(alive.items())
            ),
            releases=frozenset(r.hash for r in self.releases.versions(project_id)),
            recent_repairs=len(repairs),
        )

    # -- reconcile -------------------------------------------------------------------------

    def reconcile(self, project_id: ProjectId) -> float | None:
        """Converge one project. Returns a delay to requeue after, or None."""
        check_project_id(project_id)
        row = self.db.project(project_id)
        loaded = self._load(project_id, row)
        if loaded is None and row is None and not self.db.instances(project_id):
            return None
        view = self._desired_view(loaded)
        spec = view.spec if view else None
        inflight = Inflight(view.digest if view else None)
        with self._inflight_lock:
            self._inflight[project_id] = inflight
        ctx = Context(project_id, loaded, spec, inflight.digest, row, {}, inflight.cancel)
        try:
            if self._stopping.is_set():
                return None
            alive, gone = self._observe(project_id, spec)
            ctx.instances = alive
            for stale in gone:
                self.db.remove_instance(project_id, stale.hash)
                self.ports.release(stale.port)
            steps = plan(view, self._observed_view(project_id, row, alive))
            if spec is not None and loaded is not None and loaded.spec is not None:
                self._remember(project_id, spec, row)
            for step in steps:
                if ctx.cancel.is_set():
                    raise Cancelled("desired state changed")
                self._run(ctx, step)
            self._show_file_error(ctx)
            self._failures.pop(project_id, None)
            return None
        except Cancelled:
            logger.info("%s: pipeline cancelled; applying the new desired state", project_id)
            self._close_deployment(ctx, "cancelled", "Cancelled: the desired state changed")
            return None if self._stopping.is_set() else 0.01
        except PermanentError as exc:
            self._failed(ctx, str(exc))
            return None
        except TransientError as exc:
            delay = max(exc.delay or 0.0, self._backoff(project_id))
            logger.warning("%s: %s (retrying in %.0fs)", project_id, exc, delay)
            self.db.update_project(project_id, productionStatus="error", productionError=str(exc))
            self._close_deployment(ctx, "failed", None, error=str(exc))
            return delay
        finally:
            with self._inflight_lock:
                if self._inflight.get(project_id) is inflight:
                    del self._inflight[project_id]

    def _remember(self, project_id: ProjectId, spec: ProjectSpec, row: ProjectRow | None) -> None:
        text = spec.model_dump_json()
        if row is None or row.lastGoodSpec != text:
            self.db.update_project(project_id, lastGoodSpec=text)

    def _show_file_error(self, ctx: Context) -> None:
        row = self.db.project(ctx.project_id)
        if row is None:
            return
        if ctx.loaded is not None and ctx.loaded.error is not None:
            if row.productionError != ctx.loaded.error:
                self.db.update_project(ctx.project_id, productionError=ctx.loaded.error)
        elif (
            row.productionError is not None
            and row.productionStatus in ("running", "stopped")
            and row.failedDigest is None
        ):
            self.db.update_project(ctx.project_id, productionError=None)

    def _run(self, ctx: Context, step: Step) -> None:
        spec = ctx.spec
        if isinstance(step, StopInstances):
            self._stop_instances(ctx, step.hashes, final=step.final)
        elif isinstance(step, Fail):
            raise PermanentError(step.error)
        elif isinstance(step, Build):
            assert spec is not None
            self._deploy(ctx, spec, step.generation)
        elif isinstance(step, Activate):
            assert spec is not None
            self._activate_kept(ctx, spec, step.hash, repair=step.repair)
        elif isinstance(step, RestoreCurrent):
            logger.info("%s: restoring current -> %s", ctx.project_id, step.hash)
            self.releases.switch(ctx.project_id, step.hash)
        elif isinstance(step, Record):
            self._record(ctx, step)

    # -- steps -----------------------------------------------------------------------------

    def _emit(self, ctx: Context, event: str, data: dict[str, Any]) -> None:
        self.db.append_event(ctx.project_id, event, data, deployment=ctx.deployment)

    def _begin(self, ctx: Context, kind: str, generation: int | None) -> None:
        ctx.deployment = self.db.start_deployment(ctx.project_id, kind, generation=generation)

    def _close_deployment(
        self, ctx: Context, state: str, message: str | None, *, error: str | None = None
    ) -> None:
        if ctx.deployment is None:
            return
        if error is not None:
            self._emit(ctx, "production.error", {"error": error})
        elif message is not None:
            self._emit(ctx, "production.cancelled", {"message": message})
        self.db.finish_deployment(ctx.deployment, state)
        ctx.deployment = None

    def _failed(self, ctx: Context, message: str) -> None:
        logger.warning("%s: failed: %s", ctx.project_id, message.splitlines()[0])
        self.db.update_project(
            ctx.project_id,
            productionStatus="failed",
            productionError=message,
            failedDigest=ctx.digest,
            desiredDigest=ctx.digest,
        )
        if ctx.deployment is None:
            self._begin(ctx, "deploy", ctx.spec.production.generation if ctx.spec else None)
        self._close_deployment(ctx, "failed", None, error=message)

    def _stop_instances(self, ctx: Context, hashes: tuple[str, ...], *, final: bool) -> None:
        if final:
            self._begin(ctx, "stop", None)
            self._emit(ctx, "production.stopping", {"message": "Stopping production..."})
        for version in hashes:
            entry = ctx.instances.pop(version, None)
            if entry is None:
                continue
            instance, runtime = entry
            job = self.db.create_job(
                ctx.project_id,
                "production.stop",
                generation=None,
                hash=version,
                deployment=ctx.deployment,
            )
            logger.info("%s: stop %s (port %s)", ctx.project_id, version, instance.port)
            try:
                runtime.stop(instance)
            except Exception as exc:
                self.db.finish_job(job, "failed", error=str(exc))
                raise
            self.db.remove_instance(ctx.project_id, version)
            self.ports.release(instance.port)
            self.db.finish_job(job, "succeeded")
        if final:
            self.db.update_project(
                ctx.project_id,
                productionStatus="stopped",
                productionPort=None,
                productionUrl=None,
                productionError=None,
                productionStartedAt=None,
                failedDigest=None,
                desiredDigest=ctx.digest,
            )
            self._emit(ctx, "production.stopped", {"status": "stopped"})
            self._close_deployment(ctx, "succeeded", None)

    def _record(self, ctx: Context, step: Record) -> None:
        if step.status == "running" and step.hash is not None:
            instance, _rt = ctx.instances[step.hash]
            row = ctx.row
            started = (
                row.productionStartedAt
                if row is not None and row.productionHash == step.hash and row.productionStartedAt
                else instance.started_at or utcnow()
            )
            logger.info("%s: running %s on port %s", ctx.project_id, step.hash, instance.port)
            self.db.update_project(
                ctx.project_id,
                productionStatus="running",
                productionHash=step.hash,
                productionPort=instance.port,
                productionUrl=self.config.url_for(instance.port),
                productionStartedAt=started,
                productionError=None,
            )
            self._put_instance(instance, "active")
        else:
            self.db.update_project(
                ctx.project_id,
                productionStatus=step.status,
                productionPort=None,
                productionUrl=None,
                productionStartedAt=None,
            )

    def _deploy(self, ctx: Context, spec: ProjectSpec, generation: int) -> None:
        runtime = self.runtime(self.runtime_name(spec))
        assert ctx.loaded is not None
        source = spec.source_dir(ctx.loaded.path)
        self._begin(ctx, "deploy", generation)
        self.db.update_project(
            ctx.project_id,
            productionStatus="building",
            productionError=None,
            failedDigest=None,
            desiredDigest=ctx.digest,
        )
        logger.info("%s: build generation %s (%s)", ctx.project_id, generation, runtime.name)
        self._emit(
            ctx, "production.building", {"message": f"Build started (generation {generation})"}
        )
        job = self.db.create_job(
            ctx.project_id, "production.build", generation=generation, deployment=ctx.deployment
        )
        staging = self.releases.begin(ctx.project_id)
        work = staging.path.parent / f"{staging.path.name}-work"
        try:
            result = runtime.build(
                BuildRequest(
                    ctx.project_id,
                    spec,
                    source,
                    staging.logs,
                    work,
                    ctx.cancel,
                    lambda line: self._emit(ctx, "production.building", {"message": line}),
                )
            )
            if ctx.cancel.is_set():
                raise Cancelled("desired state changed")
            output = spec.build_output(runtime.name)
            release = self.releases.commit(
                staging,
                dist=result.dist,
                source=source,
                source_exclude=[output] if runtime.name == "process" else [],
                generation=generation,
                details={**result.details, "desiredDigest": ctx.digest},
            )
            runtime.finish_build(result, release)
        except BaseException as exc:
            self.releases.abort(staging)
            state = "cancelled" if isinstance(exc, Cancelled) else "failed"
            self.db.finish_job(job, state, error=str(exc) or type(exc).__name__)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self.db.finish_job(job, "succeeded", hash=release.hash)
        logger.info("%s: built %s (generation %s)", ctx.project_id, release.hash, generation)
        self._emit(
            ctx,
            "production.building",
            {"message": f"Build complete: version {release.hash}", "hash": release.hash},
        )
        self._activate(ctx, spec, release, generation=generation, built=True)

    def _activate_kept(
        self, ctx: Context, spec: ProjectSpec, version: str, *, repair: bool
    ) -> None:
        release = self.releases.get(ctx.project_id, version)
        if release is None:
            raise PermanentError(f"version {version} is not kept")
        kind = "repair" if repair else "activate"
        self._begin(ctx, kind, spec.production.generation)
        if repair:
            self._repairs.setdefault(ctx.project_id, collections.deque()).append(self.clock())
            message = f"The instance of {version} is not running; starting it again"
            logger.warning("%s: %s", ctx.project_id, message)
            self.db.update_project(
                ctx.project_id, productionStatus="error", productionError=message
            )
        elif ctx.row is None or ctx.row.productionStatus in ("stopped", "failed"):
            self.db.update_project(ctx.project_id, productionStatus="queued", productionError=None)
        self._activate(ctx, spec, release, generation=None, built=False)

    def _activate(
        self,
        ctx: Context,
        spec: ProjectSpec,
        release: Release,
        *,
        generation: int | None,
        built: bool,
    ) -> None:
        """Start (or reuse) an instance of ``release``, wait ready, switch, stop the others."""
        pid = ctx.project_id
        runtime = self.runtime(self.runtime_name(spec))
        job = self.db.create_job(
            pid,
            "production.start",
            generation=generation,
            hash=release.hash,
            deployment=ctx.deployment,
        )
        existing = ctx.instances.get(release.hash)
        port: int | None = None
        instance: Instance | None = None
        try:
            if existing is not None and existing[0].port is not None:
                instance = existing[0]
                port = instance.port
                self._emit(
                    ctx,
                    "production.starting",
                    {
                        "message": f"Reusing the running instance of {release.hash} on port {port}",
                        "port": port,
                    },
                )
            else:
                port = self.ports.allocate(pid, hash=release.hash)
                logger.info("%s: start %s on port %s", pid, release.hash, port)
                self._emit(
                    ctx,
                    "production.starting",
                    {"message": f"Starting {release.hash} on port {port}...", "port": port},
                )
                instance = runtime.start(release, spec, port=port)
                self._put_instance(instance, "candidate")
            self.db.finish_job(job, "succeeded")
            job = self.db.create_job(
                pid,
                "production.waitReady",
                generation=generation,
                hash=release.hash,
                deployment=ctx.deployment,
            )
            url = f"http://{self.config.probe_host}:{port}{spec.health.path}"
            started = instance
            wait_ready(
                url,
                spec.health,
                alive=lambda: runtime.alive(started),
                why_dead=lambda: runtime.describe_exit(started),
                cancel=ctx.cancel,
            )
        except BaseException as exc:
            state = "cancelled" if isinstance(exc, Cancelled) else "failed"
            self.db.finish_job(job, state, error=str(exc) or type(exc).__name__)
            if instance is not None and existing is None:
                with contextlib.suppress(Exception):
                    runtime.stop(instance, timeout=2)
                self.db.remove_instance(pid, release.hash)
            if existing is None:
                self.ports.release(port)
            raise
        self.releases.switch(pid, release.hash)
        values: dict[str, Any] = {
            "productionStatus": "running",
            "productionHash": release.hash,
            "productionPort": port,
            "productionUrl": self.config.url_for(port),
            "productionStartedAt": utcnow(),
            "productionError": None,
            "failedDigest": None,
            "desiredDigest": ctx.digest,
        }
        if built:
            values.update(observedGeneration=generation, latestHash=release.hash)
        self.db.update_project(pid, **values)
        self._put_instance(instance, "active")
        self.db.finish_job(job, "succeeded")
        logger.info("%s: running %s at %s", pid, release.hash, self.config.url_for(port))
        self._emit(
            ctx,
            "production.ready",
            {
                "status": "running",
                "url": self.config.url_for(port),
                "port": port,
                "hash": release.hash,
            },
        )
        others = tuple(h for h in ctx.instances if h != release.hash)
        ctx.instances[release.hash] = (instance, runtime)
        self._stop_instances(ctx, others, final=False)
        self._prune(pid, spec, release.hash, ctx)
        self._close_deployment(ctx, "succeeded", None)

    def _prune(self, project_id: ProjectId, spec: ProjectSpec, active: str, ctx: Context) -> None:
        protect = {active, *(ctx.instances)}
        if spec.production.pinned:
            protect.add(spec.production.pinned)
        row = self.db.project(project_id)
        if row is not None and row.latestHash:
            protect.add(row.latestHash)
        removed = self.releases.prune(project_id, keep=spec.keep, protect=protect)
        runtime = self.runtime(self.runtime_name(spec))
        for version in removed:
            logger.info("%s: pruned %s", project_id, version)
            with contextlib.suppress(Exception):
                runtime.remove_version(project_id, version)

    def _put_instance(self, instance: Instance, role: str) -> None:
        self.db.put_instance(
            InstanceRow(
                instance.project_id,
                instance.hash,
                instance.runtime,
                instance.port,
                instance.pid,
                instance.pid_start,
                instance.container_id,
                role,
                instance.started_at or utcnow(),
            )
        )

    # -- startup, resync, health -----------------------------------------------------------

    def known_projects(self) -> set[str]:
        ids: set[str] = set(self.desired.ids())
        ids |= {row.id for row in self.db.projects()}
        ids |= {row.project for row in self.db.instances()}
        if self.releases.root.is_dir():
            for entry in self.releases.root.iterdir():
                with contextlib.suppress(ValueError):
                    ids.add(check_project_id(entry.name))
        return ids

    def adopt(self) -> None:
        """At startup: record what really runs and free ports nothing holds."""
        keep_ports: set[int] = set()
        for project_id in sorted(self.known_projects()):
            pid = ProjectId(project_id)
            loaded = self.desired.load(pid)
            spec = loaded.in_force if loaded else None
            row = self.db.project(pid)
            try:
                alive, gone = self._observe(pid, spec)
            except TransientError as exc:
                logger.warning("%s: cannot observe instances yet: %s", pid, exc)
                keep_ports |= {r.port for r in self.db.instances(pid) if r.port is not None}
                continue
            for stale in gone:
                self.db.remove_instance(pid, stale.hash)
            for version, (instance, _rt) in alive.items():
                active = row is not None and row.productionHash == version
                self._put_instance(instance, "active" if active else "candidate")
                if instance.port is not None:
                    keep_ports.add(instance.port)
                logger.info("%s: adopted %s on port %s", pid, version, instance.port)
        freed = self.ports.release_unused(keep_ports)
        if freed:
            logger.info("released %d port reservation(s) nothing holds", len(freed))

    def resync(self) -> None:
        for project_id in sorted(self.known_projects()):
            self.enqueue(project_id)

    def check_health(self) -> None:
        """Queue every project whose active instance is gone or whose ``current`` drifted."""
        for project in self.db.projects():
            if (
                project.productionStatus == "running"
                and project.productionHash
                and self.releases.current(ProjectId(project.id)) != project.productionHash
            ):
                self.enqueue(project.id)
        for row in self.db.instances():
            if row.role != "active" or not is_hash8(row.hash):
                continue
            try:
                alive = self.runtime(row.runtime).alive(instance_from_row(row))
            except TransientError:
                continue
            if not alive:
                logger.warning("%s: instance of %s is gone", row.project, row.hash)
                self.enqueue(row.project)
