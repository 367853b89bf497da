"""What happened: deployments, the jobs they ran and the events they emitted (the SSE source)."""

from __future__ import annotations

import json
from typing import Any

from reconciler.core.kinds import DeploymentKind, DeploymentState, EventType, JobState, JobType
from reconciler.core.redact import scrub
from reconciler.core.timeutil import utcnow
from reconciler.stores.state.activity import Activity
from reconciler.stores.state.rows import (
    DeploymentRow,
    EventRow,
    JobRow,
    VersionRow,
    as_row,
    first_row,
)


class History(Activity):
    """Deployments, jobs and events: append-mostly, bounded by ``prune``."""

    # -- deployments -----------------------------------------------------------------------

    def start_deployment(
        self,
        project_id: str,
        kind: DeploymentKind,
        *,
        generation: int | None,
        digest: str | None = None,
    ) -> int:
        with self.write() as conn:
            trigger = self.take_trigger(conn, project_id, kind)
            cur = conn.execute(
                "INSERT INTO deployments (project, kind, generation, state, createdAt, digest, "
                "trigger) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (project_id, kind, generation, DeploymentState.RUNNING, utcnow(), digest,
                 trigger),
            )  # fmt: skip
            return int(cur.lastrowid or 0)

    def finish_deployment(
        self, deployment_id: int, state: DeploymentState, *, error: str | None = None
    ) -> None:
        with self.write() as conn:
            conn.execute(
                "UPDATE deployments SET state = ?, error = ?, finishedAt = ? "
                "WHERE id = ? AND finishedAt IS NULL",
                (state, scrub(error) if error else error, utcnow(), deployment_id),
            )

    def latest_deployment(self, project_id: str) -> DeploymentRow | None:
        return first_row(
            DeploymentRow,
            self.read(
                "SELECT * FROM deployments WHERE project = ? ORDER BY id DESC LIMIT 1",
                (project_id,),
            ),
        )

    def deployment(self, deployment_id: int) -> DeploymentRow | None:
        return first_row(
            DeploymentRow, self.read("SELECT * FROM deployments WHERE id = ?", (deployment_id,))
        )

    def open_deployment(self, project_id: str) -> DeploymentRow | None:
        """The deployment in progress, if any (at most one per project is open)."""
        return first_row(
            DeploymentRow,
            self.read(
                "SELECT * FROM deployments WHERE project = ? AND finishedAt IS NULL "
                "ORDER BY id DESC LIMIT 1",
                (project_id,),
            ),
        )

    # -- jobs ------------------------------------------------------------------------------

    def create_job(
        self,
        project_id: str,
        job_type: JobType,
        *,
        generation: int | None,
        hash: str | None = None,
        deployment: int | None = None,
        state: JobState = JobState.RUNNING,
    ) -> int:
        now = utcnow()
        with self.write() as conn:
            cur = conn.execute(
                "INSERT INTO jobs (project, deployment, type, state, generation, hash, createdAt,"
                " startedAt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    project_id,
                    deployment,
                    JobType(job_type),
                    JobState(state),
                    generation,
                    hash,
                    now,
                    now if state == JobState.RUNNING else None,
                ),
            )
            return int(cur.lastrowid or 0)

    def finish_job(
        self, job_id: int, state: JobState, *, error: str | None = None, hash: str | None = None
    ) -> None:
        with self.write() as conn:
            conn.execute(
                "UPDATE jobs SET state = ?, error = ?, hash = COALESCE(?, hash), finishedAt = ? "
                "WHERE id = ?",
                (state, scrub(error) if error else error, hash, utcnow(), job_id),
            )

    def active_job(self, project_id: str, *, deployment: int | None = None) -> JobRow | None:
        """The newest unfinished job of the project (or of one of its deployments)."""
        if deployment is None:
            rows = self.read(
                "SELECT * FROM jobs WHERE project = ? AND state IN ('queued', 'running') "
                "ORDER BY id DESC LIMIT 1",
                (project_id,),
            )
        else:
            rows = self.read(
                "SELECT * FROM jobs WHERE deployment = ? AND state IN ('queued', 'running') "
                "ORDER BY id DESC LIMIT 1",
                (deployment,),
            )
        return first_row(JobRow, rows)

    def latest_attempt(self, project_id: str) -> JobRow | None:
        """The newest build or start job: what the project last tried to run."""
        rows = self.read(
            "SELECT * FROM jobs WHERE project = ? AND type IN (?, ?, ?) ORDER BY id DESC LIMIT 1",
            (project_id, JobType.BUILD, JobType.START, JobType.WAIT_READY),
        )
        return first_row(JobRow, rows)

    def deployments(self, project_id: str, *, limit: int = 20) -> list[DeploymentRow]:
        """The newest deployments, newest first."""
        rows = self.read(
            "SELECT * FROM deployments WHERE project = ? ORDER BY id DESC LIMIT ?",
            (project_id, limit),
        )
        return [as_row(DeploymentRow, r) for r in rows]

    def deployment_jobs(self, deployment_ids: list[int]) -> list[JobRow]:
        if not deployment_ids:
            return []
        marks = ",".join("?" * len(deployment_ids))
        rows = self.read(
            f"SELECT * FROM jobs WHERE deployment IN ({marks}) ORDER BY id",  # noqa: S608
            tuple(deployment_ids),
        )
        return [as_row(JobRow, r) for r in rows]

    def jobs(self, project_id: str, *, limit: int = 50) -> list[JobRow]:
        rows = self.read(
            "SELECT * FROM jobs WHERE project = ? ORDER BY id DESC LIMIT ?", (project_id, limit)
        )
        return [as_row(JobRow, r) for r in rows]

    def interrupt_jobs(self, message: str = "interrupted: the daemon stopped") -> int:
        """Close jobs and deployments a crash left open. Returns how many jobs were closed."""
        now = utcnow()
        with self.write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'cancelled', error = ?, finishedAt = ? "
                "WHERE state IN ('queued', 'running')",
                (message, now),
            )
            conn.execute(
                "UPDATE deployments SET state = 'cancelled', error = ?, finishedAt = ? "
                "WHERE finishedAt IS NULL",
                (message, now),
            )
            return cur.rowcount

    # -- events ----------------------------------------------------------------------------

    def append_event(
        self,
        project_id: str,
        event_type: EventType,
        data: dict[str, Any],
        *,
        deployment: int | None = None,
    ) -> int:
        with self.write() as conn:
            cur = conn.execute(
                "INSERT INTO events (project, deployment, type, data, createdAt) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    project_id,
                    deployment,
                    event_type,
                    scrub(json.dumps(data, separators=(",", ":"))),  # git's words name URLs
                    utcnow(),
                ),
            )
            return int(cur.lastrowid or 0)

    def events_after(self, project_id: str, after: int, *, limit: int = 1000) -> list[EventRow]:
        rows = self.read(
            "SELECT * FROM events WHERE project = ? AND id > ? ORDER BY id LIMIT ?",
            (project_id, after, limit),
        )
        return [as_row(EventRow, r) for r in rows]

    def deployment_events(self, deployment_id: int) -> list[EventRow]:
        rows = self.read("SELECT * FROM events WHERE deployment = ? ORDER BY id", (deployment_id,))
        return [as_row(EventRow, r) for r in rows]

    def recent_events(
        self, project_id: str, *, limit: int = 100, event_type: str | None = None
    ) -> list[EventRow]:
        """The project's latest events (of one type, if given), oldest first."""
        where, args = "project = ?", [project_id]
        if event_type is not None:
            where += " AND type = ?"
            args.append(event_type)
        rows = self.read(
            f"SELECT * FROM events WHERE {where} ORDER BY id DESC LIMIT ?",  # noqa: S608
            (*args, limit),
        )
        return [as_row(EventRow, r) for r in reversed(rows)]

    def last_event_id(self, project_id: str | None = None) -> int:
        if project_id is None:
            rows = self.read("SELECT COALESCE(MAX(id), 0) FROM events")
        else:
            rows = self.read(
                "SELECT COALESCE(MAX(id), 0) FROM events WHERE project = ?", (project_id,)
            )
        return int(rows[0][0])

    # -- what became of each version -------------------------------------------------------

    def version_served(self, project_id: str, version: str) -> None:
        """The version served (its first time is kept; a later failure does not undo it)."""
        with self.write() as conn:
            conn.execute(
                "INSERT INTO versions (project, hash, servedAt) VALUES (?, ?, ?) "
                "ON CONFLICT (project, hash) DO UPDATE SET "
                "servedAt = COALESCE(versions.servedAt, excluded.servedAt)",
                (project_id, version, utcnow()),
            )

    def version_failed(self, project_id: str, version: str, error: str) -> None:
        """A start or health check of the version failed (its last failure is kept)."""
        with self.write() as conn:
            conn.execute(
                "INSERT INTO versions (project, hash, failedAt, error) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (project, hash) DO UPDATE SET "
                "failedAt = excluded.failedAt, error = excluded.error",
                (project_id, version, utcnow(), error[:2000]),
            )

    def versions(self, project_id: str) -> dict[str, VersionRow]:
        rows = self.read("SELECT * FROM versions WHERE project = ?", (project_id,))
        return {row[1]: as_row(VersionRow, row) for row in rows}

    def prune(self, *, events_per_project: int = 5000, jobs_per_project: int = 500) -> int:
        """Bounded retention: keep the newest N events, jobs and deployments per project."""
        removed = 0
        with self.write() as conn:
            for table, keep in (
                ("events", events_per_project),
                ("jobs", jobs_per_project),
                ("deployments", jobs_per_project),
            ):
                cur = conn.execute(
                    f"DELETE FROM {table} WHERE id IN ("  # noqa: S608 - table names are constants
                    f"  SELECT id FROM (SELECT id, ROW_NUMBER() OVER ("
                    f"    PARTITION BY project ORDER BY id DESC) AS n FROM {table}) WHERE n > ?)",
                    (keep,),
                )
                removed += cur.rowcount
        return removed
