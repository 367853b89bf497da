"""The pipeline: one executor per planned ``Step``, run in order inside one deployment.

``Pipeline.execute(facts, steps)`` names the deployment (``deployment_of``), runs each step's
executor (dispatched exhaustively: a new step type fails the type check until it is handled)
and turns the outcome into the work queue's ``Result``:

- ``PermanentError``: the project is ``failed`` for this exact desired spec (the running
  version keeps serving); not retried until the spec changes.
- ``TransientError`` and any unexpected error: status ``error`` with the message, retried with
  backoff. Nothing is left open: the recorder closes the deployment and its jobs.
- ``Cancelled``: the desired state changed mid-way; reconcile again at once.

Deploy order (failure isolation): build -> stage release -> start the new instance on a new
port while the old one serves -> wait ready -> switch ``current`` and the status -> stop the
old instance -> prune. A failure before the switch leaves the old version serving, untouched.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
from typing import assert_never

from reconciler.controller.activate import Activator
from reconciler.controller.build import Builder
from reconciler.controller.observe import Facts, RepairLog, Runtimes, instance_from_row
from reconciler.controller.recorder import Listener, Recorder, describe
from reconciler.controller.run import Run
from reconciler.core.config import Config
from reconciler.core.errors import Cancelled, PermanentError, TransientError
from reconciler.core.kinds import DeploymentKind, EventType, InstanceRole, ServeMode, Status
from reconciler.core.plan import (
    Activate,
    Build,
    Fail,
    Record,
    RestoreCurrent,
    Sleep,
    Step,
    StopInstances,
    deployment_of,
)
from reconciler.core.queue import Done, Permanent, RequeueAfter, Result, Retry
from reconciler.core.timeutil import utcnow
from reconciler.runtimes.base import Instance, Runtime, wait_ready
from reconciler.stores.gitcache import GitCache
from reconciler.stores.ports import PortAllocator
from reconciler.stores.releases import Release, ReleaseStore
from reconciler.stores.state import InstanceRow, StateDB

logger = logging.getLogger(__name__)


class FellBack(PermanentError):
    """A deploy failed after it went live: the version before it serves again."""


class Pipeline:
    def __init__(
        self,
        config: Config,
        *,
        db: StateDB,
        releases: ReleaseStore,
        ports: PortAllocator,
        runtimes: Runtimes,
        repairs: RepairLog,
        activator: Activator,
        listener: Listener | None = None,
    ) -> None:
        self.listener = listener
        self.db = db
        self.releases = releases
        self.ports = ports
        self.repairs = repairs
        self.runtimes = runtimes
        self.builder = Builder(
            releases=releases,
            runtimes=runtimes,
            log_limits=config.logs,
            min_free=config.min_free_bytes,
            disk_default=config.limits.disk,
            git=GitCache(config.layout.git_caches),
            caches=config.layout.caches,
        )
        self.activator = activator
        self.site_url = config.site_url
        self.max_limits = config.max_limits
        self.probe_host = config.probe_host

    def execute(self, facts: Facts, steps: list[Step], cancel: threading.Event) -> Result:
        recorder = Recorder(
            self.db,
            facts.project_id,
            digest=facts.digest,
            listener=self.listener,
            pinned=facts.spec.production.pinned if facts.spec else None,
            keep=self.releases.keep_record,
        )
        run = Run(facts, recorder, cancel, dict(facts.live))
        if facts.spec is not None:
            with contextlib.suppress(Exception):  # an engine away: told next time
                for message in self.runtimes.for_spec(facts.spec).exits(facts.project_id):
                    logger.warning("%s: %s", facts.project_id, message)
                    recorder.emit(EventType.EXITED, {"message": message})
        for stale in facts.gone:
            if stale.role == InstanceRole.ACTIVE:
                self._ended(recorder, stale)
            with contextlib.suppress(Exception):  # whatever its leader left behind
                self.runtimes.get(stale.runtime).stop(instance_from_row(stale), timeout=2)
            recorder.forget_instance(stale.key)
            self.ports.release(stale.port)
        kind = deployment_of(steps)
        generation = next((s.generation for s in steps if isinstance(s, Build)), None)
        if generation is None and kind not in (None, DeploymentKind.STOP) and facts.spec:
            generation = facts.spec.production.generation
        try:
            with recorder.deployment(kind, generation=generation):
                self._run_all(run, steps)
        except Cancelled:
            return RequeueAfter(0.01)
        except PermanentError as exc:
            return Permanent(str(exc))
        except TransientError as exc:
            return Retry(str(exc), at_least=exc.delay or 0.0)
        except Exception as exc:
            return Retry(describe(exc))
        try:
            self.activator.serve(run, changed=bool(steps or facts.gone))
        except TransientError as exc:
            logger.warning("%s: %s", facts.project_id, exc)
            recorder.update(productionStatus=Status.ERROR, productionError=str(exc))
            return Retry(str(exc), at_least=exc.delay or 0.0)
        self._show_file_error(run, changed=bool(steps or facts.gone))
        return Done()

    def _ended(self, recorder: Recorder, row: InstanceRow) -> None:
        """Say in the project's events why its serving instance ended (an exit code, the
        memory limit), before it is forgotten and started again."""
        try:
            why = self.runtimes.get(row.runtime).describe_exit(instance_from_row(row))
        except Exception as exc:
            why = describe(exc)
        message = why.removeprefix("Start failed: ").split("\n", 1)[0]
        message = message.replace(" before it became ready", "")  # it had served
        logger.warning("%s: %s", row.project, message)
        recorder.emit(EventType.EXITED, {"message": message, "hash": row.hash})

    def _run_all(self, run: Run, steps: list[Step]) -> None:
        project_id = run.facts.project_id
        try:
            for step in steps:
                run.check()
                self.run(run, step)
        except Cancelled:
            logger.info("%s: pipeline cancelled; applying the new desired state", project_id)
            raise
        except PermanentError as exc:
            message = str(exc) if isinstance(exc, FellBack) else _with_serving(str(exc), run)
            exc.args = (message,)  # the deployment's error event says it too
            logger.warning("%s: failed: %s", project_id, message.splitlines()[0])
            if not _serving(run) and not isinstance(exc, FellBack):  # no dead address shown
                run.recorder.update(productionUrl=None, productionPort=None)
            run.recorder.update(
                productionStatus=Status.FAILED,
                productionError=message,
                failedDigest=run.facts.digest,
                desiredDigest=run.facts.digest,
            )
            raise
        except TransientError as exc:
            logger.warning("%s: %s (will retry)", project_id, exc)
            run.recorder.update(productionStatus=Status.ERROR, productionError=str(exc))
            raise
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                self._unexpected(run, exc)
                raise
            full = TransientError(
                f"the disk is full ({exc.filename or self.releases.root}): the deploy stopped "
                "where it was and is retried with backoff; free some space (old releases: "
                "lower keep)"
            )
            logger.warning("%s: %s", project_id, full)
            run.recorder.update(productionStatus=Status.ERROR, productionError=str(full))
            raise full from exc
        except Exception as exc:
            self._unexpected(run, exc)
            raise

    def _unexpected(self, run: Run, exc: Exception) -> None:
        logger.exception("%s: unexpected error", run.facts.project_id)
        run.recorder.update(
            productionStatus=Status.ERROR,
            productionError=f"unexpected error (will retry): {describe(exc)}",
        )

    def run(self, run: Run, step: Step) -> None:
        match step:
            case StopInstances():
                self.stop_instances(run, step)
            case Fail(error=error):
                raise PermanentError(error)
            case Build(generation=generation):
                self.check_limits(run)
                release = self.builder.build(run, generation)
                self.activator.activate(run, release, generation=generation, built=True)
            case Activate():
                self.check_limits(run)
                self.activate_kept(run, step)
            case RestoreCurrent(hash=version):
                logger.info("%s: restoring current -> %s", run.facts.project_id, version)
                self.releases.switch(run.facts.project_id, version)
            case Record():
                self.record(run, step)
            case Sleep(keys=keys):
                self.activator.sleep(run, keys)
            case _:
                assert_never(step)

    # -- executors -------------------------------------------------------------------------

    def check_limits(self, run: Run) -> None:
        """A desired file may not ask for more than the host allows (``--max-limits``)."""
        spec, maximum = run.spec, self.max_limits
        over = spec.limits.over(maximum, "limits") or spec.build.limits.over(
            maximum, "build.limits"
        )
        if over is not None:
            raise PermanentError(
                f"{over} (--max-limits {maximum.describe()}); lower it in the desired file"
            )

    def stop_instances(self, run: Run, step: StopInstances) -> None:
        if not step.final:
            self.activator.retire(run, step.keys)
            return
        run.recorder.emit(EventType.STOPPING, {"message": "Stopping production..."})
        self.activator.unserve(run)
        self.activator.stop(run, step.keys)
        self._stopped(run)

    def activate_kept(self, run: Run, step: Activate) -> None:
        project_id, rec, row = run.facts.project_id, run.recorder, run.facts.row
        release = self.releases.get(project_id, step.hash)
        if release is None:
            raise PermanentError(f"version {step.hash} is not kept")
        if step.after is not None:
            fall_back(self.activator, run, release, step.after)
            return
        # the version a failed deploy left serving, put back: the deploy stays failed
        failed = step.repair and row is not None and row.failedDigest == run.facts.digest
        if step.repair:
            self.repairs.note(project_id)
            message = f"The instance of {step.hash} is not running; starting it again"
            logger.warning("%s: %s", project_id, message)
            if not failed:
                rec.update(productionStatus=Status.ERROR, productionError=message)
        elif row is None or row.productionStatus in (Status.STOPPED, Status.FAILED):
            rec.update(productionStatus=Status.QUEUED, productionError=None)
        self.activator.activate(run, release, generation=None, built=False)
        if failed and row is not None:
            error = row.productionError if row.productionStatus == Status.FAILED else (
                f"this desired file's deploy failed; {step.hash} serves (started again after "
                "its instance died)"
            )  # fmt: skip
            rec.update(productionStatus=Status.FAILED, productionError=error,
                       failedDigest=row.failedDigest)  # fmt: skip

    def record(self, run: Run, step: Record) -> None:
        if step.status != Status.RUNNING or step.hash is None:
            self.activator.unserve(run)
            self._stopped(run)
            return
        run.version = step.hash
        entry = run.find(step.hash) if run.mode != ServeMode.STATIC else None
        instance = entry[0] if entry is not None else None
        if entry is not None and run.mode == ServeMode.PORT:
            self._probe_unproven(run, *entry)
        row = run.facts.row
        if run.mode == ServeMode.PORT:
            assert instance is not None  # planned only for a live instance
            port = instance.port
        else:
            port = run.facts.observed.public_port
        started = (
            row.productionStartedAt
            if row is not None and row.productionHash == step.hash and row.productionStartedAt
            else (instance.started_at if instance else None) or utcnow()
        )
        logger.info("%s: running %s on port %s", run.facts.project_id, step.hash, port)
        run.recorder.update(
            productionStatus=Status.RUNNING,
            productionHash=step.hash,
            productionPort=port,
            productionUrl=self.site_url(port, run.spec.domains),
            productionStartedAt=started,
            productionError=None,
        )
        if instance is not None:
            run.recorder.put_instance(instance, InstanceRole.ACTIVE)

    def _probe_unproven(self, run: Run, instance: Instance, runtime: Runtime) -> None:
        """An instance the status is about to name that never passed its health check (a
        candidate adopted after a crash) is probed first."""
        known = {r.key: r.role for r in self.db.instances(run.facts.project_id)}
        if known.get(instance.key) == InstanceRole.ACTIVE or instance.port is None:
            return
        health = run.spec.health
        wait_ready(
            f"http://{self.probe_host}:{instance.port}{health.path}",
            health,
            alive=lambda: runtime.alive(instance),
            why_dead=lambda: runtime.describe_exit(instance),
            cancel=run.cancel,
        )

    # -- shared pieces ---------------------------------------------------------------------

    def _stopped(self, run: Run) -> None:
        run.recorder.update(
            productionStatus=Status.STOPPED,
            productionPort=None,
            productionUrl=None,
            productionError=None,
            productionStartedAt=None,
            failedDigest=None,
            desiredDigest=run.facts.digest,
        )
        run.recorder.emit(EventType.STOPPED, {"status": "stopped"})

    def _show_file_error(self, run: Run, *, changed: bool = True) -> None:
        """An invalid desired file shows in the status while the last good spec runs."""
        row = self.db.project(run.facts.project_id) if changed else run.facts.row
        if row is None:
            return
        desired = run.facts.desired
        if desired is not None and desired.error is not None:
            if row.productionError != desired.error:
                run.recorder.update(productionError=desired.error)
        elif (
            row.productionError is not None
            and row.productionStatus in (Status.RUNNING, Status.STOPPED)
            and row.failedDigest is None
        ):
            run.recorder.update(productionError=None)


def fall_back(activator: Activator, run: Run, release: Release, died: str) -> None:
    """The version that went live died within its rollback window: the instance it replaced
    (kept running for that window) serves again, with no start, and the deploy is failed
    (not retried until the desired file changes or a deploy is asked)."""
    project_id = run.facts.project_id
    logger.warning("%s: %s died after it went live; back to %s", project_id, died, release.hash)
    # the one live instance of that version is the one kept (the dead one is gone)
    run.taken = next((k for k, (i, _rt) in run.live.items() if i.hash == release.hash), None)
    activator.activate(run, release, generation=None, built=False)
    kept = "its instance with the settings before" if died == release.hash else (
        f"{release.hash}, the version it replaced"
    )  # fmt: skip
    raise FellBack(
        f"{died} went live, then stopped running (why: its events, `reconciler logs`); "
        f"{kept}, kept for the rollback window, serves again. Deploy again (or edit the "
        "desired file) to try once more"
    )


def _serving(run: Run) -> bool:
    """Does the version the status names still serve at its address?"""
    row, observed = run.facts.row, run.facts.observed
    if row is None or row.productionStatus == Status.STOPPED or not row.productionUrl:
        return False
    version = row.productionHash
    if run.mode == ServeMode.STATIC:
        return observed.current == version
    return any(i.hash == version and not i.draining for i in observed.instances)


def _with_serving(message: str, run: Run) -> str:
    """A failure as an operator must read it: with the version that keeps serving (at the
    end of its first line), when one does."""
    row = run.facts.row
    if row is None or not _serving(run):
        return message
    version = row.productionHash
    first, _, rest = message.partition("\n")
    first = f"{first.rstrip('.')}; version {version} keeps serving at {row.productionUrl}"
    return f"{first}\n{rest}" if rest else first
