"""A project's recent deployments as a timeline (each with its phases and their durations,
its result, version, commit and what set it off), and its traffic and use over the last hour
as series for small charts. Both are read from the state database only."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from reconciler.core.kinds import JobType
from reconciler.core.timeutil import parse_iso
from reconciler.stores.state import DeploymentRow, JobRow, SampleRow, StateDB

PHASE_OF = {
    JobType.BUILD: "build",
    JobType.START: "start",
    JobType.WAIT_READY: "ready",
    JobType.STOP: "stop",
}


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Phase(_Out):
    name: str = Field(description="build, stage, start, ready, switch or stop")
    seconds: float
    state: str = Field(description="succeeded, failed, cancelled or running")


class Deployment(_Out):
    id: int
    kind: str = Field(description="deploy, activate, repair, stop or wake")
    state: str
    trigger: str | None = Field(description="what set it off: api: deploy, push: <commit>...")
    createdAt: str
    finishedAt: str | None
    seconds: float | None = Field(description="from start to end (None: still running)")
    version: str | None = Field(description="the version it built or started")
    commit: str | None = Field(default=None, description="git source: the version's commit")
    subject: str | None = Field(default=None, description="that commit's subject line")
    error: str | None
    phases: list[Phase]


class Timeline(_Out):
    deployments: list[Deployment]


class Series(_Out):
    """Per minute, oldest first; a gap (no sample, or the edge restarted) is null."""

    at: list[float] = Field(description="Unix time of each point")
    requestsPerSecond: list[float | None]
    errorRate: list[float | None] = Field(description="5xx answers / answers, 0-1")
    latencyMs: list[float | None] = Field(description="mean time to answer")
    memory: list[int | None] = Field(description="bytes the serving instance used")
    cpu: list[float | None] = Field(description="percent of one core")


def _seconds(start: str | None, end: str | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, round((parse_iso(end) - parse_iso(start)).total_seconds(), 3))


def phases(deployment: DeploymentRow, jobs: Sequence[JobRow]) -> list[Phase]:
    """Its jobs as phases, with the gaps between them that are phases of their own: stage
    (a build's output becomes a release) and switch (from the new instance being ready to
    the end: the edge turns to it and the old one is retired, its stop included)."""
    found: list[Phase] = []
    last_end: str | None = None
    ready_end: str | None = None
    for job in jobs:
        name = PHASE_OF.get(job.type, str(job.type))
        if ready_end is not None and name == "stop":
            continue  # retiring the old instance: part of the switch
        start = job.startedAt or job.createdAt
        if name == "start" and found and found[-1].name == "build":
            gap = _seconds(last_end, start)
            if gap is not None:
                found.append(Phase(name="stage", seconds=gap, state="succeeded"))
        end = job.finishedAt
        found.append(Phase(name=name, seconds=_seconds(start, end) or 0.0, state=str(job.state)))
        last_end = end
        if name == "ready" and str(job.state) == "succeeded":
            ready_end = end
    if ready_end is not None:
        gap = _seconds(ready_end, deployment.finishedAt)
        if gap is not None:
            found.append(Phase(name="switch", seconds=gap, state=str(deployment.state)))
    return found


def timeline(
    db: StateDB,
    project_id: str,
    *,
    limit: int = 20,
    commit_of: Callable[[str], dict[str, str]] = lambda _version: {},
) -> Timeline:
    """``commit_of``: the commit and subject a version was built from ({}: not a git one)."""
    rows = db.deployments(project_id, limit=limit)
    jobs: dict[int, list[JobRow]] = {}
    for job in db.deployment_jobs([r.id for r in rows]):
        if job.deployment is not None:
            jobs.setdefault(job.deployment, []).append(job)
    items = []
    for row in rows:
        own = jobs.get(row.id, [])
        # the version it built or started (a stop job names the old one it retired)
        named = [j.hash for j in own if j.hash and j.type != JobType.STOP]
        stopped = [j.hash for j in own if j.hash]
        version = (named or stopped)[-1] if named or stopped else None
        items.append(
            Deployment(
                id=row.id,
                kind=str(row.kind),
                state=str(row.state),
                trigger=row.trigger,
                createdAt=row.createdAt,
                finishedAt=row.finishedAt,
                seconds=_seconds(row.createdAt, row.finishedAt),
                version=version,
                error=row.error,
                phases=phases(row, own),
                **(commit_of(version) if version else {}),
            )
        )
    return Timeline(deployments=items)


def _delta(now: float | None, before: float | None) -> float | None:
    if now is None or before is None or now < before:
        return None  # no counter, or it went back (the edge restarted)
    return now - before


def series(db: StateDB, project_id: str, *, window: float = 3600.0) -> Series:
    """Rates between consecutive samples: requests per second, the share that were 5xx,
    the mean latency; memory and CPU as sampled."""
    rows: list[SampleRow] = db.samples(project_id, since=time.time() - window)
    out = Series(at=[], requestsPerSecond=[], errorRate=[], latencyMs=[], memory=[], cpu=[])
    for before, now in itertools.pairwise(rows):
        span = now.at - before.at
        answered = _delta(now.requests, before.requests)
        errors = _delta(now.errors, before.errors)
        spent = _delta(now.seconds, before.seconds)
        out.at.append(round(now.at, 1))
        out.requestsPerSecond.append(
            None if answered is None else round(answered / span, 3) if span > 0 else None
        )
        out.errorRate.append(
            None if not answered or errors is None else round(min(1.0, errors / answered), 4)
        )
        out.latencyMs.append(
            None if not answered or spent is None else round(1000 * spent / answered, 1)
        )
        out.memory.append(now.memory)
        out.cpu.append(now.cpu)
    return out
