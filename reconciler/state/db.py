"""``StateDB``: the state database as the daemon and the API use it."""

from __future__ import annotations

from dataclasses import fields
from typing import Unpack

from reconciler.spec import ProjectId
from reconciler.state.edge import EdgeTables
from reconciler.state.rows import (
    PROJECT_COLUMNS,
    InstanceRow,
    ProjectChanges,
    ProjectRow,
    as_row,
    first_row,
)
from reconciler.timeutil import utcnow


class StateDB(EdgeTables):
    """The state database. One instance per process; safe to use from any thread.

    Projects and instances here; sites and the edge status in ``EdgeTables``; deployments,
    jobs and events in ``History``; connections, transactions and migrations in ``Database``.
    """

    def project(self, project_id: str) -> ProjectRow | None:
        return first_row(
            ProjectRow, self.read("SELECT * FROM projects WHERE id = ?", (project_id,))
        )

    def running(self) -> list[tuple[ProjectId, str]]:
        """(project, version) of every project whose status is running."""
        rows = self.read(
            "SELECT id, productionHash FROM projects "
            "WHERE productionStatus = 'running' AND productionHash IS NOT NULL"
        )
        return [(ProjectId(r[0]), str(r[1])) for r in rows]

    def projects(self) -> list[ProjectRow]:
        return [as_row(ProjectRow, r) for r in self.read("SELECT * FROM projects ORDER BY id")]

    def update_project(self, project_id: ProjectId, **values: Unpack[ProjectChanges]) -> ProjectRow:
        """Create the row if needed and set the given columns."""
        unknown = set(values) - PROJECT_COLUMNS
        if unknown:
            raise ValueError(f"unknown project columns: {sorted(unknown)}")
        now = utcnow()
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

    def instances(self, project_id: str | None = None) -> list[InstanceRow]:
        if project_id is None:
            rows = self.read("SELECT * FROM instances ORDER BY project, startedAt")
        else:
            rows = self.read(
                "SELECT * FROM instances WHERE project = ? ORDER BY startedAt", (project_id,)
            )
        return [as_row(InstanceRow, r) for r in rows]
