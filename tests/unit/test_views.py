"""The "what happens next" view, table-driven: the status an operator sees for each situation."""

from __future__ import annotations

import pytest

from reconciler.core.kinds import DeploymentKind, DeploymentState, JobState, JobType, Status
from reconciler.core.plan import (
    Activate,
    Build,
    DesiredView,
    Fail,
    Record,
    RestoreCurrent,
    Step,
    StopInstances,
)
from reconciler.core.spec import ProjectSpec
from reconciler.readside.views import ActiveJob, in_progress, next_job, production_status
from reconciler.stores.state import DeploymentRow, JobRow, ProjectRow

A, B = "aaaaaaaa", "bbbbbbbb"
SPEC = ProjectSpec.model_validate({"source": "s", "production": {"state": "running"}})
DESIRED = DesiredView(SPEC, SPEC.digest())
ROW = ProjectRow(
    "www", Status.RUNNING, 3001, "http://localhost:3001", None, "2025-01-01T00:00:00.000Z",
    A, A, 0, None, None, None, "2025-01-01T00:00:00.000Z",
)  # fmt: skip


def deployment(kind: DeploymentKind, digest: str | None = DESIRED.digest) -> DeploymentRow:
    return DeploymentRow(
        1, "www", kind, 0, DeploymentState.RUNNING, "2025-01-01T00:00:00.000Z", None, digest, None
    )


def job(kind: JobType) -> JobRow:
    return JobRow(7, "www", 1, kind, JobState.RUNNING, 0, A, "t", "t", None, None)


def queued(kind: JobType) -> ActiveJob:
    return ActiveJob(type=kind, state=JobState.QUEUED)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param([], None, id="nothing"),
        pytest.param([Build(2)], queued(JobType.BUILD), id="build"),
        pytest.param(
            [StopInstances((B,), final=False), Build(2)], queued(JobType.BUILD), id="strays-first"
        ),
        pytest.param([Activate(A)], queued(JobType.START), id="activate"),
        pytest.param([Activate(A, repair=True)], queued(JobType.START), id="repair"),
        pytest.param([StopInstances((A,), final=True)], queued(JobType.STOP), id="stop"),
        pytest.param([Record(Status.STOPPED)], queued(JobType.STOP), id="record-stopped"),
        pytest.param([Fail("not kept")], None, id="fail-waits-for-nothing"),
        pytest.param(
            [StopInstances((B,), final=False), RestoreCurrent(A), Record(Status.RUNNING, A)],
            None,
            id="housekeeping-only",
        ),
    ],
)
def test_next_job(steps: list[Step], expected: ActiveJob | None) -> None:
    assert next_job(steps) == expected


@pytest.mark.parametrize(
    ("dep", "job_row", "steps", "status", "active"),
    [
        pytest.param(None, None, [], Status.RUNNING, None, id="idle"),
        pytest.param(None, None, [Build(1)], Status.QUEUED, queued(JobType.BUILD), id="pending"),
        pytest.param(
            deployment(DeploymentKind.DEPLOY),
            job(JobType.WAIT_READY),
            [Build(1)],
            Status.RUNNING,
            ActiveJob(type=JobType.WAIT_READY, state=JobState.RUNNING),
            id="our-deployment-runs",
        ),
        pytest.param(
            deployment(DeploymentKind.ACTIVATE, digest="older"),
            job(JobType.STOP),
            [StopInstances((A,), final=True)],
            Status.STOPPED,
            queued(JobType.STOP),
            id="older-deployment-is-not-ours",
        ),
        pytest.param(
            deployment(DeploymentKind.STOP),
            job(JobType.STOP),
            [],
            Status.STOPPED,
            ActiveJob(type=JobType.STOP, state=JobState.RUNNING),
            id="stopping",
        ),
        pytest.param(
            deployment(DeploymentKind.ACTIVATE),
            None,
            [],
            Status.RUNNING,
            None,
            id="between-jobs",
        ),
    ],
)
def test_production_status(
    dep: DeploymentRow | None,
    job_row: JobRow | None,
    steps: list[Step],
    status: Status,
    active: ActiveJob | None,
) -> None:
    got = production_status(DESIRED, ROW, dep, job_row, steps)
    assert (got.status, got.activeJob) == (status, active)
    if status == Status.STOPPED:
        assert (got.url, got.port, got.hash) == (None, None, A), "the hash is kept when stopped"
    else:
        assert (got.url, got.port) == ("http://localhost:3001", 3001)


def test_in_progress_is_a_deploy_not_a_stop() -> None:
    idle = production_status(DESIRED, ROW, None, None, [])
    assert not in_progress(idle)
    assert in_progress(production_status(DESIRED, ROW, None, None, [Build(1)]))
    assert not in_progress(production_status(DESIRED, ROW, None, None, [Record(Status.STOPPED)]))
