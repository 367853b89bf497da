"""``StateDB``: the state database as the daemon and the API use it."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any, Unpack

from reconciler.core.redact import scrub
from reconciler.core.spec import ProjectId
from reconciler.core.timeutil import utcnow
from reconciler.stores.state.edge import EdgeTables
from reconciler.stores.state.rows import (
    PROJECT_COLUMNS,
    InstanceRow,
    ProjectChanges,
    ProjectRow,
    SourceRow,
    as_row,
    first_row,
)

# the tables whose rows name a project (``project``), besides ``projects`` itself
FORGOTTEN = ("instances", "sites", "sources", "ports", "revisions", "events", "jobs",
             "deployments", "versions", "triggers", "samples")  # fmt: skip


class StateDB(EdgeTables):
    """The state database. One instance per process; safe to use from any thread.

    Projects and instances here; sites and the edge status in ``EdgeTables``; deployments,
    jobs and events in ``History``; connections, transactions and migrations in ``Database``.
    """

    def project(self, project_id: str) -> ProjectRow | None:
        return first_row(
            ProjectRow, self.read("SELECT * FROM projects WHERE id = ?", (project_id,))
        )

    def running(self, *, after: str = "", limit: int = -1) -> list[tuple[ProjectId, str]]:
        """(project, version) of the projects whose status is running, by id: all of them,
        or ``limit`` after the id ``after`` (a walk a slice at a time)."""
        rows = self.read(
            "SELECT id, productionHash FROM projects WHERE id > ? "
            "AND productionStatus = 'running' AND productionHash IS NOT NULL "
            "ORDER BY id LIMIT ?",
            (after, limit),
        )
        return [(ProjectId(r[0]), str(r[1])) for r in rows]

    def status_counts(self) -> dict[str, int]:
        """How many projects are in each production status."""
        rows = self.read("SELECT productionStatus, COUNT(*) FROM projects GROUP BY 1")
        return {str(r[0]): int(r[1]) for r in rows}

    def project_ids(self) -> set[ProjectId]:
        """Every project with a row or an instance row (no row is parsed)."""
        rows = self.read("SELECT id FROM projects UNION SELECT project FROM instances")
        return {ProjectId(r[0]) for r in rows}

    def projects(self) -> list[ProjectRow]:
        return [as_row(ProjectRow, r) for r in self.read("SELECT * FROM projects ORDER BY id")]

    def update_project(self, project_id: ProjectId, **values: Unpack[ProjectChanges]) -> ProjectRow:
        """Create the row if needed and set the given columns."""
        unknown = set(values) - PROJECT_COLUMNS
        if unknown:
            raise ValueError(f"unknown project columns: {sorted(unknown)}")
        now = utcnow()
        if values.get("productionError"):  # an error may quote a URL that carries a token
            values["productionError"] = scrub(str(values["productionError"]))
        with self.write() as conn:
            conn.execute(
                "INSERT INTO projects (id, updatedAt) VALUES (?, ?) ON CONFLICT(id) DO NOTHING",
                (project_id, now),
            )
            if values:
                assignments = ", ".join(f"{name} = ?" for name in values)
                conn.execute(
                    f"UPDATE projects SET {assignments}, updatedAt = ? WHERE id = ?",  # noqa: S608
                    (*values.values(), now, project_id),
                )
            row = conn.execute("SELECT * FROM projects WHERE id = ?", (project_id,)).fetchone()
        return as_row(ProjectRow, row)

    # -- sources ---------------------------------------------------------------------------

    def source(self, project_id: str) -> SourceRow | None:
        return first_row(
            SourceRow, self.read("SELECT * FROM sources WHERE project = ?", (project_id,))
        )

    def set_source(
        self,
        project_id: ProjectId,
        *,
        rev: str | None,
        detail: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> bool:
        """Record where a followed source stands. True when its revision or error moved
        (an unchanged check writes nothing)."""
        text = json.dumps(detail, sort_keys=True) if detail is not None else None
        with self.write() as conn:
            old = conn.execute(
                "SELECT rev, error FROM sources WHERE project = ?", (project_id,)
            ).fetchone()
            if old is not None and old[0] == rev and old[1] == error:
                return False
            conn.execute(
                "INSERT INTO sources (project, rev, detail, error, checkedAt) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (project) DO UPDATE SET rev = excluded.rev, "
                "detail = COALESCE(excluded.detail, sources.detail), error = excluded.error, "
                "checkedAt = excluded.checkedAt",
                (project_id, rev, text, error, utcnow()),
            )
        return True

    def forget_project(self, project_id: str) -> None:
        """Every row of a project that is gone for good (a removed branch preview)."""
        with self.write() as conn:
            for table in FORGOTTEN:
                conn.execute(f"DELETE FROM {table} WHERE project = ?", (project_id,))  # noqa: S608
            conn.execute("DELETE FROM projects WHERE id = ?", (project_id,))

    def forget_source(self, project_id: str) -> None:
        with self.write() as conn:
            conn.execute("DELETE FROM sources WHERE project = ?", (project_id,))

    # -- instances -------------------------------------------------------------------------

    def put_instance(self, instance: InstanceRow) -> None:
        names = [f.name for f in fields(InstanceRow)]
        with self.write() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO instances ({', '.join(names)}) "  # noqa: S608
                f"VALUES ({', '.join('?' for _ in names)})",
                tuple(getattr(instance, n) for n in names),
            )

    def remove_instance(self, project_id: str, key: str) -> None:
        with self.write() as conn:
            conn.execute("DELETE FROM instances WHERE project = ? AND key = ?", (project_id, key))

    def set_usage(self, project_id: str, key: str, memory: int | None, cpu: float | None) -> None:
        self.set_usages([(project_id, key, memory, cpu)])

    def set_usages(self, found: list[tuple[str, str, int | None, float | None]]) -> None:
        """(project, key, memory, cpu) of instances sampled, in one transaction."""
        if not found:
            return
        now = utcnow()
        with self.write() as conn:
            conn.executemany(
                "UPDATE instances SET memory = ?, cpu = ?, usageAt = ? "
                "WHERE project = ? AND key = ?",
                [(memory, cpu, now, project, key) for project, key, memory, cpu in found],
            )

    def instances(self, project_id: str | None = None) -> list[InstanceRow]:
        if project_id is None:
            rows = self.read("SELECT * FROM instances ORDER BY project, startedAt")
        else:
            rows = self.read(
                "SELECT * FROM instances WHERE project = ? ORDER BY startedAt", (project_id,)
            )
        return [as_row(InstanceRow, r) for r in rows]
