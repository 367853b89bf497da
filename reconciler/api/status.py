"""What the API reports: observed state from the database, corrected by pending desired state.

The daemon may not have picked up a desired edit yet (debounce, a busy queue, the daemon is
down). A client that polls right after a write must not see a stale answer, so when desired
state asks for something observed state does not show yet, the status already says so:
``queued`` with the pending job, or ``stopped`` with a queued ``production.stop``.
"""

from __future__ import annotations

from reconciler.api.models import ActiveJob, ProductionStatus
from reconciler.spec import ProjectSpec
from reconciler.state import JobRow, ProjectRow

IN_PROGRESS = ("queued", "building")


def pending_job(spec: ProjectSpec | None, row: ProjectRow | None) -> ActiveJob | None:
    """The job desired state asks for that the daemon has not started or finished yet."""
    if spec is None:
        return None
    status = row.productionStatus if row else "stopped"
    if spec.production.state == "stopped":
        if status != "stopped":
            return ActiveJob(type="production.stop", state="queued")
        return None
    if row is not None and row.failedDigest is not None and row.failedDigest == spec.digest():
        return None  # the daemon tried this exact spec and it failed
    pinned = spec.production.pinned
    if pinned is not None:
        if row is None or row.productionHash != pinned or status != "running":
            return ActiveJob(type="production.start", state="queued")
        return None
    if row is None or row.observedGeneration != spec.production.generation:
        return ActiveJob(type="production.build", state="queued")
    if status == "stopped":
        return ActiveJob(type="production.start", state="queued")
    return None


def production_status(
    spec: ProjectSpec | None, row: ProjectRow | None, job: JobRow | None
) -> ProductionStatus:
    status = row.productionStatus if row else "stopped"
    active = ActiveJob(type=job.type, state=job.state) if job is not None else None
    result = ProductionStatus(
        status=status,
        url=row.productionUrl if row else None,
        port=row.productionPort if row else None,
        error=row.productionError if row else None,
        startedAt=row.productionStartedAt if row else None,
        activeJob=active,
        hash=row.productionHash if row else None,
    )
    pending = pending_job(spec, row)
    if pending is None or (active is not None and pending.type != "production.stop"):
        return result
    if active is not None and active.type == "production.stop":
        return result
    if pending.type == "production.stop":
        return result.model_copy(
            update={"status": "stopped", "url": None, "port": None, "startedAt": None,
                    "error": None, "activeJob": pending}
        )  # fmt: skip
    return result.model_copy(update={"status": "queued", "error": None, "activeJob": pending})


def in_progress(status: ProductionStatus) -> bool:
    return status.status in IN_PROGRESS or (
        status.activeJob is not None and status.activeJob.type != "production.stop"
    )
