"""The host's rows: each project's reserved ports (``sites``), the edge's status (``edge``)
and the daemon's liveness (``daemon``)."""

from __future__ import annotations

import os
import time

from reconciler.core.kinds import EdgeMode
from reconciler.core.timeutil import utcnow
from reconciler.stores.state.history import History
from reconciler.stores.state.rows import DaemonRow, EdgeRow, SiteRow, as_row, first_row


class EdgeTables(History):
    """Sites, the edge status row and the daemon's liveness row."""

    def daemon_started(self, runtime: str) -> None:
        with self.write() as conn:
            conn.execute(
                "INSERT INTO daemon (id, pid, runtime, startedAt, pulse, stoppedAt)"
                " VALUES (1, ?, ?, ?, ?, NULL) ON CONFLICT(id) DO UPDATE SET pid = excluded.pid,"
                " runtime = excluded.runtime, startedAt = excluded.startedAt,"
                " pulse = excluded.pulse, stoppedAt = NULL",
                (os.getpid(), runtime, utcnow(), time.time()),
            )

    def daemon_pulse(self) -> None:
        with self.write() as conn:
            conn.execute("UPDATE daemon SET pulse = ? WHERE id = 1", (time.time(),))

    def put_metrics(self, text: bytes) -> None:
        with self.write() as conn:
            conn.execute(
                "INSERT INTO metrics (id, text, writtenAt) VALUES (1, ?, ?) ON CONFLICT(id) "
                "DO UPDATE SET text = excluded.text, writtenAt = excluded.writtenAt",
                (text, time.time()),
            )

    def daemon_metrics(self) -> bytes | None:
        """The daemon's metrics as it last wrote them, while its pulse is fresh."""
        if not self.daemon_alive():
            return None
        rows = self.read("SELECT text FROM metrics WHERE id = 1")
        return bytes(rows[0][0]) if rows else None

    def daemon_alive(self) -> bool:
        row = self.daemon()
        return row is not None and row.stoppedAt is None and row.alive(time.time())

    def daemon_stopped(self) -> None:
        with self.write() as conn:
            conn.execute("UPDATE daemon SET stoppedAt = ? WHERE id = 1", (utcnow(),))

    def daemon(self) -> DaemonRow | None:
        return first_row(DaemonRow, self.read("SELECT * FROM daemon WHERE id = 1"))

    def site(self, project_id: str) -> SiteRow | None:
        return first_row(SiteRow, self.read("SELECT * FROM sites WHERE project = ?", (project_id,)))

    def sites(self) -> list[SiteRow]:
        return [as_row(SiteRow, r) for r in self.read("SELECT * FROM sites ORDER BY project")]

    def remove_site(self, project_id: str) -> None:
        with self.write() as conn:
            conn.execute("DELETE FROM sites WHERE project = ?", (project_id,))

    def set_edge(
        self,
        mode: EdgeMode,
        status: str,
        *,
        pid: int | None,
        version: str | None,
        sites: int,
        error: str | None,
        loaded: bool = False,
    ) -> None:
        now = utcnow()
        with self.write() as conn:
            conn.execute(
                "INSERT INTO edge (id, mode, status, pid, version, sites, error, loadedAt,"
                " updatedAt) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                " mode = excluded.mode, status = excluded.status, pid = excluded.pid,"
                " version = excluded.version, sites = excluded.sites, error = excluded.error,"
                " loadedAt = COALESCE(excluded.loadedAt, edge.loadedAt),"
                " updatedAt = excluded.updatedAt",
                (mode, status, pid, version, sites, error, now if loaded else None, now),
            )

    def edge(self) -> EdgeRow | None:
        return first_row(EdgeRow, self.read("SELECT * FROM edge WHERE id = 1"))
