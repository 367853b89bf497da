"""The bookkeeping of one reconcile: its deployment, job and event rows, and status writes.

Business logic says what happens; the recorder writes it down, and closes every row it opened
whatever happens inside::

    with recorder.deployment(DeploymentKind.DEPLOY, generation=4):
        with recorder.job(JobType.BUILD, generation=4) as job:
            job.hash = build()

A job or deployment left by an exception is closed as ``cancelled`` (``Cancelled``) or
``failed`` (anything else, with its message); a deployment's end also becomes the SSE stream's
last event (``production.error`` or ``production.cancelled``). Jobs outside a deployment are
the pipeline's housekeeping (stopping strays), never an operator's request.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Unpack

from reconciler.controller.metrics import Finished
from reconciler.core.errors import Cancelled
from reconciler.core.kinds import (
    DeploymentKind,
    DeploymentState,
    EventType,
    InstanceRole,
    JobState,
    JobType,
)
from reconciler.core.spec import ProjectId, ProjectSpec
from reconciler.core.timeutil import utcnow
from reconciler.runtimes.base import Instance
from reconciler.stores.state import InstanceRow, ProjectChanges, ProjectRow, StateDB

logger = logging.getLogger(__name__)


@dataclass
class Job:
    id: int
    hash: str | None = None  # set by the step when it learns it (a build's version)


def instance_row(instance: Instance, role: InstanceRole) -> InstanceRow:
    return InstanceRow(
        instance.project_id,
        instance.key,
        instance.hash,
        instance.config,
        instance.runtime,
        instance.port,
        instance.pid,
        instance.pid_start,
        instance.container_id,
        role,
        instance.started_at or utcnow(),
    )


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Listener(Protocol):
    """Hears what the recorder writes down; must not block (it runs in the reconcile)."""

    def deployment_finished(self, finished: Finished) -> None: ...

    def job_finished(
        self, project: ProjectId, job_type: JobType, result: JobState, seconds: float
    ) -> None: ...


class Listeners:
    """Several listeners as one; a failing one never fails a deploy."""

    def __init__(self, listeners: Sequence[Listener] = ()) -> None:
        self.listeners = list(listeners)

    def deployment_finished(self, finished: Finished) -> None:
        for listener in self.listeners:
            try:
                listener.deployment_finished(finished)
            except Exception:
                logger.exception("a deployment listener failed")

    def job_finished(
        self, project: ProjectId, job_type: JobType, result: JobState, seconds: float
    ) -> None:
        for listener in self.listeners:
            try:
                listener.job_finished(project, job_type, result, seconds)
            except Exception:
                logger.exception("a job listener failed")


class Recorder:
    def __init__(
        self,
        db: StateDB,
        project_id: ProjectId,
        *,
        digest: str | None,
        listener: Listener | None = None,
        pinned: str | None = None,
        keep: Callable[[ProjectId, dict[str, object]], None] | None = None,
    ) -> None:
        self.db = db
        self.keep = keep  # the spare record beside the releases (``SiteLinks.keep_record``)
        self.project_id = project_id
        self.digest = digest
        self.listener = listener
        self.pinned = pinned
        self.current: int | None = None  # the open deployment
        self._kind: DeploymentKind | None = None
        self._started = 0.0
        self._ready: dict[str, Any] | None = None

    # -- deployments and jobs --------------------------------------------------------------

    @contextlib.contextmanager
    def deployment(self, kind: DeploymentKind | None, *, generation: int | None) -> Iterator[None]:
        """One deployment row around the body (no row for ``None``: housekeeping)."""
        if kind is None:
            yield
            return
        self.current = self.db.start_deployment(
            self.project_id, kind, generation=generation, digest=self.digest
        )
        self._kind, self._started, self._ready = kind, time.monotonic(), None
        try:
            yield
        except Cancelled:
            self.emit(EventType.CANCELLED, {"message": "Cancelled: the desired state changed"})
            self._close(DeploymentState.CANCELLED, "cancelled: the desired state changed")
            raise
        except BaseException as exc:
            self.emit(EventType.ERROR, {"error": describe(exc)})
            self._close(DeploymentState.FAILED, describe(exc))
            raise
        self._close(DeploymentState.SUCCEEDED, None)

    def _close(self, state: DeploymentState, error: str | None) -> None:
        if self.current is not None:
            self.db.finish_deployment(self.current, state, error=error)
            self.current = None
            if self.listener is not None and self._kind is not None:
                self.listener.deployment_finished(
                    Finished(self.project_id, self._kind, state,
                             time.monotonic() - self._started, error, self._ready, self.pinned)
                )  # fmt: skip

    @contextlib.contextmanager
    def job(
        self, job_type: JobType, *, hash: str | None = None, generation: int | None = None
    ) -> Iterator[Job]:
        started = time.monotonic()
        job = Job(
            self.db.create_job(
                self.project_id,
                job_type,
                generation=generation,
                hash=hash,
                deployment=self.current,
            ),
            hash,
        )
        try:
            yield job
        except Cancelled as exc:
            self.db.finish_job(job.id, JobState.CANCELLED, error=describe(exc))
            self._job_heard(job_type, JobState.CANCELLED, started)
            raise
        except BaseException as exc:
            self.db.finish_job(job.id, JobState.FAILED, error=describe(exc))
            if job.hash is not None and job_type in (JobType.START, JobType.WAIT_READY):
                self.db.version_failed(self.project_id, job.hash, describe(exc))
            self._job_heard(job_type, JobState.FAILED, started)
            raise
        self.db.finish_job(job.id, JobState.SUCCEEDED, hash=job.hash)
        self._job_heard(job_type, JobState.SUCCEEDED, started)

    def _job_heard(self, job_type: JobType, result: JobState, started: float) -> None:
        if self.listener is not None:
            self.listener.job_finished(
                self.project_id, job_type, result, time.monotonic() - started
            )

    def emit(self, event: EventType, data: dict[str, Any]) -> None:
        self.db.append_event(self.project_id, event, data, deployment=self.current)
        if event == EventType.READY:
            self._ready = data
            if data.get("hash"):
                self.db.version_served(self.project_id, str(data["hash"]))

    # -- rows ------------------------------------------------------------------------------

    def update(self, **changes: Unpack[ProjectChanges]) -> ProjectRow:
        row = self.db.update_project(self.project_id, **changes)
        if self.keep is not None and ("observedGeneration" in changes or "failedDigest" in changes):
            self.keep(self.project_id, dict(changes))
        return row

    def put_instance(self, instance: Instance, role: InstanceRole) -> None:
        self.db.put_instance(instance_row(instance, role))

    def forget_instance(self, key: str) -> None:
        self.db.remove_instance(self.project_id, key)

    def remember_spec(self, spec: ProjectSpec, row: ProjectRow | None) -> None:
        """Keep the applied spec in the database: it stays in force across a restart while the
        file is invalid."""
        text = spec.model_dump_json()
        if row is None or row.lastGoodSpec != text:
            self.update(lastGoodSpec=text)
