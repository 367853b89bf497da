"""Read models: what the API and the CLI report about a project, and how it is derived.

Observed state comes from the state database. Desired state may be ahead of it (the daemon has
not picked up an edit yet, or is down), and a client that reads right after a write must not
see a stale answer. So "what will the daemon do next" is not guessed here: it is ``plan()``
itself, asked with the desired file and the database's record of what runs (the same planner
the daemon runs, through the same ``facts`` conversions), and the first step that means work
becomes the status's pending ``activeJob``.

A deployment the daemon has open for the current desired spec is reported as it runs; jobs
outside a deployment (stopping a stray instance) are housekeeping and never shown as an
operator's request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from reconciler.core.kinds import (
    DeploymentKind,
    EdgeMode,
    EventType,
    InstanceRole,
    JobState,
    JobType,
    RuntimeName,
    Status,
)
from reconciler.core.plan import (
    DesiredView,
    Fail,
    Step,
    deciding,
    deployment_of,
    plan,
)
from reconciler.core.spec import ProjectId, ProjectSpec
from reconciler.stores.desired import DesiredFile, DesiredStore
from reconciler.stores.facts import running_commit
from reconciler.stores.observation import Observe
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import DeploymentRow, JobRow, ProjectRow, SourceRow, StateDB
from reconciler.stores.vault import Vault

IN_PROGRESS = (Status.QUEUED, Status.BUILDING)
INVALID_FILE = "the desired file is invalid"  # how a status's error says so


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceState(_Out):
    tip: str | None = Field(description="the commit the ref points at (or a dir's fingerprint)")
    error: str | None = Field(description="why the source could not be read at the last check")
    checkedAt: str


class ActiveJob(_Out):
    type: JobType
    state: JobState


class AppFound(_Out):
    """How a version was built and starts, worked out from its files (its desired file named
    no build or start command)."""

    kind: str = Field(description="python, node, procfile, static")
    seen: list[str] = Field(description="the files it went by")
    build: str | None = None
    start: str | None = Field(default=None, description="None: a static site")
    release: str | None = Field(default=None, description="the Procfile's release phase")

    @classmethod
    def of(cls, record: Mapping[str, Any] | None) -> AppFound | None:
        """From a release's manifest ``app`` (None: the desired file said how)."""
        if record is None:
            return None
        try:
            return cls.model_validate(
                {k: record.get(k) for k in ("kind", "seen", "build", "start", "release")}
            )
        except ValueError:
            return None


class InstanceUsage(_Out):
    memory: int | None = Field(description="bytes")
    cpu: float | None = Field(description="percent of one core")
    at: str | None = Field(description="when it was sampled (ISO 8601 UTC)")


class Standby(_Out):
    """An instance of an earlier version kept running out of service for the rollback
    window: a rollback to it is a switch. What it uses is what the window costs."""

    hash: str
    memory: int | None = Field(description="bytes, as last sampled")


class ProductionStatus(_Out):
    status: Status
    url: str | None
    port: int | None
    error: str | None
    startedAt: str | None = Field(description="ISO 8601 UTC; when the serving instance got ready")
    activeJob: ActiveJob | None
    hash: str | None = Field(description="the version serving now (kept when stopped)")
    config: str | None = Field(
        default=None,
        description="digest of the settings the serving instance runs with (runtime, start, "
        "env); None for a static site served by the edge",
    )
    note: str | None = Field(
        default=None, description="something an operator should know that is not an error"
    )
    commit: str | None = Field(
        default=None, description="git source: the commit the serving version was built from"
    )
    subject: str | None = Field(default=None, description="that commit's subject line")
    source: SourceState | None = Field(
        default=None, description="a followed source: where it stands now (production.follow)"
    )
    replicas: str | None = Field(
        default=None, description="swarm: tasks running / replicas wanted, e.g. 2/2"
    )
    usage: InstanceUsage | None = Field(
        default=None,
        description="what the serving instance uses, as the daemon last sampled it (process "
        "and docker runtimes)",
    )
    app: AppFound | None = Field(
        default=None, description="the serving version's build and start, found from its files"
    )
    pinned: str | None = Field(
        default=None,
        description="the version the desired file pins (production.version); None: the latest",
    )
    following: bool = Field(
        default=False,
        description="new commits deploy by themselves (production.follow, and not pinned)",
    )
    standby: list[Standby] = Field(
        default_factory=list,
        description="earlier versions kept running for the rollback window (rollback.window)",
    )


class Version(_Out):
    hash: str
    isActive: bool
    createdAt: str
    config: str | None = Field(
        default=None, description="the active version: digest of the settings it runs with"
    )
    commit: str | None = Field(default=None, description="git source: the commit it was built from")
    subject: str | None = None
    app: AppFound | None = Field(
        default=None, description="its build and start, found from its files"
    )
    previewUrl: str | None = Field(
        default=None,
        description="where the edge shows this version on its own (versions served as files)",
    )
    served: bool = Field(
        default=False, description="it went live at least once (a rollback to it is safe)"
    )
    servedAt: str | None = Field(default=None, description="when it first served")
    failure: str | None = Field(
        default=None,
        description="never served: why its last start or health check failed (None: it was "
        "never started)",
    )


class History(_Out):
    versions: list[Version]


class Plan(_Out):
    """What the next reconcile of a project would do, as the stores record it now."""

    project: str
    pending: bool  # something is to be done
    deployment: str | None  # the kind of deployment the steps make (deploy, stop, ...)
    steps: list[str]


class RollbackResult(_Out):
    success: bool
    hash: str | None = None
    message: str | None = None
    error: str | None = None


class ProjectSummary(_Out):
    id: str | None
    file: str
    valid: bool
    production: ProductionStatus | None
    error: str | None


class ProjectList(_Out):
    projects: list[ProjectSummary]


# ---------------------------------------------------------------------------------------------
# Deriving the status


JOB_OF = {
    DeploymentKind.DEPLOY: JobType.BUILD,
    DeploymentKind.ACTIVATE: JobType.START,
    DeploymentKind.REPAIR: JobType.START,
    DeploymentKind.STOP: JobType.STOP,
}


def next_job(steps: Sequence[Step]) -> ActiveJob | None:
    """The job the daemon will run next for ``steps`` (None: nothing an operator waits on;
    a ``Fail`` is recorded, not waited for)."""
    kind = deployment_of(steps)
    if kind is None or isinstance(deciding(steps), Fail):
        return None
    return ActiveJob(type=JOB_OF[kind], state=JobState.QUEUED)


def queued(status: ProductionStatus, job: ActiveJob) -> ProductionStatus:
    """The status of a project whose next job waits to run."""
    return status.model_copy(update={"status": Status.QUEUED, "error": None, "activeJob": job})


def stopping(status: ProductionStatus, job: ActiveJob) -> ProductionStatus:
    """The status of a project being stopped: no address any more; the version is kept."""
    return status.model_copy(
        update={"status": Status.STOPPED, "url": None, "port": None, "startedAt": None,
                "error": None, "activeJob": job, "config": None}
    )  # fmt: skip


def production_status(
    desired: DesiredView | None,
    row: ProjectRow | None,
    deployment: DeploymentRow | None,
    job: JobRow | None,
    steps: Sequence[Step],
    config: str | None = None,
) -> ProductionStatus:
    """The status an operator sees: the row, the open deployment, or what comes next.
    ``config``: the settings digest of the instance serving the row's version."""
    status = ProductionStatus(
        status=row.productionStatus if row else Status.STOPPED,
        url=row.productionUrl if row else None,
        port=row.productionPort if row else None,
        error=row.productionError if row else None,
        startedAt=row.productionStartedAt if row else None,
        activeJob=None,
        hash=row.productionHash if row else None,
        config=config if row and row.productionStatus != Status.STOPPED else None,
    )
    digest = desired.digest if desired is not None else None
    ours = deployment is not None and digest is not None and deployment.digest == digest
    if ours and job is not None:
        active = ActiveJob(type=job.type, state=job.state)
        if deployment is not None and deployment.kind == DeploymentKind.STOP:
            return stopping(status, active)
        return status.model_copy(update={"activeJob": active})
    # no job runs now (the daemon has not started, or is between two jobs): what comes next
    pending = next_job(steps)
    if pending is None:
        return status
    if pending.type == JobType.STOP:
        return stopping(status, pending)
    if status.status == Status.ERROR and status.error:
        # retrying after a transient error: say which, and that it is queued again
        return status.model_copy(update={"activeJob": pending})
    return queued(status, pending)


def in_progress(status: ProductionStatus) -> bool:
    """A deploy, start or repair is queued or running (a stop is not)."""
    return status.status in IN_PROGRESS or (
        status.activeJob is not None and status.activeJob.type != JobType.STOP
    )


def state_event(status: ProductionStatus) -> tuple[EventType, dict[str, Any]]:
    """The current state as the one event a stream sends when nothing is in progress."""
    if status.status == Status.RUNNING:
        return EventType.READY, {
            "status": "running", "url": status.url, "port": status.port, "hash": status.hash,
        }  # fmt: skip
    if status.status == Status.FAILED:
        return EventType.ERROR, {"error": status.error, "status": "failed"}
    if status.status == Status.STOPPED:
        return EventType.STOPPED, {"status": "stopped"}
    return EventType.STATUS, status.model_dump(mode="json")


@dataclass(frozen=True)
class Snapshot:
    """One project as the stores record it, with what the planner would do next."""

    desired: DesiredView | None
    spec: ProjectSpec | None
    row: ProjectRow | None
    deployment: DeploymentRow | None
    job: JobRow | None
    steps: tuple[Step, ...]
    config: str | None = None  # the settings digest of the instance serving the row's version
    file: DesiredFile | None = None  # the desired file as read
    commit: dict[str, str] | None = None  # the commit the row's version was built from
    source: SourceRow | None = None  # a followed source's standing
    usage: InstanceUsage | None = None  # what the serving instance uses
    app: AppFound | None = None  # the row's version: its build and start, found from its files
    standby: tuple[Standby, ...] = ()  # instances kept for the rollback window

    @property
    def file_spec(self) -> ProjectSpec | None:
        """What the file itself says (valid files only)."""
        return self.file.spec if self.file is not None else None

    def status(self) -> ProductionStatus:
        status = production_status(
            self.desired, self.row, self.deployment, self.job, self.steps, self.config
        )
        file_spec = self.file_spec
        if file_spec is not None and "production" not in file_spec.model_fields_set:
            if self.spec is not None and "production" in self.spec.model_fields_set:
                note = (
                    "the desired file has no production: block; the project keeps its last "
                    f"production state ({self.spec.production.state}); add one to change it"
                )
            else:
                note = (
                    "the desired file has no production: block, so the project stays "
                    "stopped; set production.state: running (or run `reconciler deploy`)"
                )
            status = status.model_copy(update={"note": note})
        elif status.status == Status.SLEEPING and status.note is None:
            note = "no request for a while: stopped; its next request starts it again"
            status = status.model_copy(update={"note": note})
        extra: dict[str, Any] = dict(self.commit or {})
        if self.spec is not None:
            extra["pinned"] = self.spec.production.pinned
            extra["following"] = self.spec.production.follow and not extra["pinned"]
        if self.file is not None and not self.file.valid and not status.error:
            held = "the last good one stays in force" if self.spec else "nothing runs"
            extra["error"] = f"{INVALID_FILE} ({held}): {self.file.error}"
        if self.row is not None and self.row.productionReplicas and status.hash:
            extra["replicas"] = self.row.productionReplicas
        if self.usage is not None and status.status == Status.RUNNING:
            extra["usage"] = self.usage
        if self.app is not None:
            extra["app"] = self.app
        if self.standby and status.status == Status.RUNNING:
            extra["standby"] = list(self.standby)
        if self.source is not None:
            extra["source"] = SourceState(
                tip=self.source.rev, error=self.source.error, checkedAt=self.source.checkedAt
            )
        return status.model_copy(update=extra) if extra else status

    def converged(self) -> bool:
        """Nothing open and nothing left to do."""
        return self.deployment is None and not self.steps


@dataclass(frozen=True)
class Reader:
    """Reads a project's snapshot from the stores (the state database, desired files and
    release store); never from a runtime or the edge, so it answers the same while the daemon
    is down. The edge mode is the one the daemon last recorded (``edge`` until it has)."""

    db: StateDB
    desired: DesiredStore
    releases: ReleaseStore
    edge: EdgeMode = EdgeMode.OFF
    default_runtime: RuntimeName = RuntimeName.PROCESS
    vault: Vault | None = None

    @property
    def observe(self) -> Observe:
        return Observe(self.db, self.desired, self.releases, self.vault)

    def edge_mode(self) -> EdgeMode:
        row = self.db.edge()
        return row.mode if row is not None else self.edge

    def runtime(self) -> RuntimeName:
        """The daemon's default runtime, as it last recorded it (``default_runtime`` until
        it has): a file without ``runtime:`` runs on it, and its settings digest says so."""
        row = self.db.daemon()
        if row is not None and row.runtime in {r.value for r in RuntimeName}:
            return RuntimeName(row.runtime)
        return self.default_runtime

    def snapshot(self, project_id: ProjectId) -> Snapshot:
        seen = self.observe(project_id, edge=self.edge_mode(), default_runtime=self.runtime())
        row, instances, view = seen.row, seen.instance_rows, seen.view
        deployment = self.db.open_deployment(project_id)
        job = self.db.active_job(project_id, deployment=deployment.id) if deployment else None
        active = [
            r
            for r in instances
            if row is not None and r.hash == row.productionHash and r.role == InstanceRole.ACTIVE
        ]
        serving = [r.config for r in active]
        usage = (
            InstanceUsage(memory=active[0].memory, cpu=active[0].cpu, at=active[0].usageAt)
            if active and active[0].usageAt
            else None
        )
        version = row.productionHash if row is not None else None
        commit = running_commit(row, version, self.releases.source_of(project_id, version))
        return Snapshot(
            view, seen.spec, row, deployment, job, tuple(plan(view, seen.observed)),
            serving[0] if serving else None, seen.desired, commit or None, seen.source, usage,
            AppFound.of(self.releases.app_of(project_id, version)),
            tuple(Standby(hash=r.hash, memory=r.memory) for r in instances
                  if r.role == InstanceRole.STANDBY),
        )  # fmt: skip
