"""Observed state: SQLite at ``data/state.db`` in WAL mode.

Shared by the daemon's threads and by the API sidecar process. Each thread has its own
connection; every write is one short ``BEGIN IMMEDIATE`` transaction, so writers queue on
SQLite's lock (busy timeout) instead of failing, and readers never block writers.

Event ids come from ``AUTOINCREMENT`` inside serialized write transactions: they strictly
increase, are never reused after retention deletes old rows, and a reader that has seen id N
sees every later event exactly once by asking for ``id > N``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from reconciler.spec import ProjectId, check_project_id
from reconciler.timeutil import utcnow

JobType = Literal["production.build", "production.start", "production.waitReady", "production.stop"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Status = Literal["stopped", "queued", "building", "running", "failed", "error"]
JOB_TYPES: tuple[str, ...] = get_args(JobType)

MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE projects (
        id TEXT PRIMARY KEY,
        productionStatus TEXT NOT NULL DEFAULT 'stopped',
        productionPort INTEGER,
        productionUrl TEXT,
        productionError TEXT,
        productionStartedAt TEXT,
        productionHash TEXT,
        latestHash TEXT,
        observedGeneration INTEGER,
        failedDigest TEXT,
        desiredDigest TEXT,
        lastGoodSpec TEXT,
        updatedAt TEXT NOT NULL
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project TEXT NOT NULL,
        deployment INTEGER,
        type TEXT NOT NULL,
        state TEXT NOT NULL,
        generation INTEGER,
        hash TEXT,
        createdAt TEXT NOT NULL,
        startedAt TEXT,
        finishedAt TEXT,
        error TEXT
    );
    CREATE INDEX jobs_by_project ON jobs (project, id);
    CREATE TABLE deployments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project TEXT NOT NULL,
        kind TEXT NOT NULL,
        generation INTEGER,
        state TEXT NOT NULL,
        createdAt TEXT NOT NULL,
        finishedAt TEXT
    );
    CREATE INDEX deployments_by_project ON deployments (project, id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project TEXT NOT NULL,
        deployment INTEGER,
        type TEXT NOT NULL,
        data TEXT NOT NULL,
        createdAt TEXT NOT NULL
    );
    CREATE INDEX events_by_project ON events (project, id);
    CREATE TABLE instances (
        project TEXT NOT NULL,
        hash TEXT NOT NULL,
        runtime TEXT NOT NULL,
        port INTEGER,
        pid INTEGER,
        pidStart INTEGER,
        containerId TEXT,
        role TEXT NOT NULL,
        startedAt TEXT NOT NULL,
        PRIMARY KEY (project, hash)
    );
    CREATE TABLE ports (
        port INTEGER PRIMARY KEY,
        project TEXT NOT NULL,
        hash TEXT,
        reservedAt TEXT NOT NULL
    );
    """,
]

PROJECT_COLUMNS = (
    "productionStatus",
    "productionPort",
    "productionUrl",
    "productionError",
    "productionStartedAt",
    "productionHash",
    "latestHash",
    "observedGeneration",
    "failedDigest",
    "desiredDigest",
    "lastGoodSpec",
)


@dataclass(frozen=True)
class ProjectRow:
    id: str
    productionStatus: str
    productionPort: int | None
    productionUrl: str | None
    productionError: str | None
    productionStartedAt: str | None
    productionHash: str | None
    latestHash: str | None
    observedGeneration: int | None
    failedDigest: str | None
    desiredDigest: str | None
    lastGoodSpec: str | None
    updatedAt: str


@dataclass(frozen=True)
class JobRow:
    id: int
    project: str
    deployment: int | None
    type: str
    state: str
    generation: int | None
    hash: str | None
    createdAt: str
    startedAt: str | None
    finishedAt: str | None
    error: str | None


@dataclass(frozen=True)
class DeploymentRow:
    id: int
    project: str
    kind: str
    generation: int | None
    state: str
    createdAt: str
    finishedAt: str | None


@dataclass(frozen=True)
class EventRow:
    id: int
    project: str
    deployment: int | None
    type: str
    data: str
    createdAt: str

    def payload(self) -> dict[str, Any]:
        value = json.loads(self.data)
        return value if isinstance(value, dict) else {"value": value}


@dataclass(frozen=True)
class InstanceRow:
    project: str
    hash: str
    runtime: str
    port: int | None
    pid: int | None
    pidStart: int | None
    containerId: str | None
    role: str
    startedAt: str


def _row(cls: type[Any], row: sqlite3.Row | None) -> Any:
    if row is None:
        return None
    return cls(**{f.name: row[f.name] for f in fields(cls)})


class StateDB:
    """The state database. One instance per process; safe to use from any thread."""

    def __init__(self, path: Path, *, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    # -- connections -----------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction (BEGIN IMMEDIATE: takes the write lock up front)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self._conn().execute(sql, params).fetchall()

    def _migrate(self) -> None:
        with self.write() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.path} has schema version {version}, newer than this reconciler "
                    f"({len(MIGRATIONS)}); upgrade reconciler"
                )
            for index in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[index].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {index + 1}")

    @property
    def schema_version(self) -> int:
        return int(self.read("PRAGMA user_version")[0][0])

    # -- projects --------------------------------------------------------------------------

    def project(self, project_id: str) -> ProjectRow | None:
        rows = self.read("SELECT * FROM projects WHERE id = ?", (project_id,))
        return _row(ProjectRow, rows[0] if rows else None)  # type: ignore[no-any-return]

    def projects(self) -> list[ProjectRow]:
        return [_row(ProjectRow, r) for r in self.read("SELECT * FROM projects ORDER BY id")]

    def update_project(self, project_id: ProjectId, **values: Any) -> ProjectRow:
        """Create the row if needed and set the given columns."""
        check_project_id(project_id)
        unknown = set(values) - set(PROJECT_COLUMNS)
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
        return _row(ProjectRow, row)  # type: ignore[no-any-return]

    # -- deployments -----------------------------------------------------------------------

    def start_deployment(self, project_id: str, kind: str, *, generation: int | None) -> int:
        with self.write() as conn:
            cur = conn.execute(
                "INSERT INTO deployments (project, kind, generation, state, createdAt) "
                "VALUES (?, ?, ?, 'running', ?)",
                (project_id, kind, generation, utcnow()),
            )
            return int(cur.lastrowid or 0)

    def finish_deployment(self, deployment_id: int, state: str) -> None:
        with self.write() as conn:
            conn.execute(
                "UPDATE deployments SET state = ?, finishedAt = ? "
                "WHERE id = ? AND finishedAt IS NULL",
                (state, utcnow(), deployment_id),
            )

    def latest_deployment(self, project_id: str) -> DeploymentRow | None:
        rows = self.read(
            "SELECT * FROM deployments WHERE project = ? ORDER BY id DESC LIMIT 1", (project_id,)
        )
        return _row(DeploymentRow, rows[0] if rows else None)  # type: ignore[no-any-return]

    # -- jobs ------------------------------------------------------------------------------

    def create_job(
        self,
        project_id: str,
        job_type: str,
        *,
        generation: int | None,
        hash: str | None = None,
        deployment: int | None = None,
        state: str = "running",
    ) -> int:
        if job_type not in JOB_TYPES:
            raise ValueError(f"unknown job type {job_type!r}")
        now = utcnow()
        with self.write() as conn:
            cur = conn.execute(
                "INSERT INTO jobs (project, deployment, type, state, generation, hash, createdAt,"
                " startedAt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    project_id,
                    deployment,
                    job_type,
                    state,
                    generation,
                    hash,
                    now,
                    now if state == "running" else None,
                ),
            )
            return int(cur.lastrowid or 0)

    def finish_job(
        self, job_id: int, state: str, *, error: str | None = None, hash: str | None = None
    ) -> None:
        with self.write() as conn:
            conn.execute(
                "UPDATE jobs SET state = ?, error = ?, hash = COALESCE(?, hash), finishedAt = ? "
                "WHERE id = ?",
                (state, error, hash, utcnow(), job_id),
            )

    def active_job(self, project_id: str) -> JobRow | None:
        rows = self.read(
            "SELECT * FROM jobs WHERE project = ? AND state IN ('queued', 'running') "
            "ORDER BY id DESC LIMIT 1",
            (project_id,),
        )
        return _row(JobRow, rows[0] if rows else None)  # type: ignore[no-any-return]

    def jobs(self, project_id: str, *, limit: int = 50) -> list[JobRow]:
        rows = self.read(
            "SELECT * FROM jobs WHERE project = ? ORDER BY id DESC LIMIT ?", (project_id, limit)
        )
        return [_row(JobRow, r) for r in rows]

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
                "UPDATE deployments SET state = 'cancelled', finishedAt = ? "
                "WHERE finishedAt IS NULL",
                (now,),
            )
            return cur.rowcount

    # -- events ----------------------------------------------------------------------------

    def append_event(
        self,
        project_id: str,
        event_type: str,
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
                    json.dumps(data, separators=(",", ":")),
                    utcnow(),
                ),
            )
            return int(cur.lastrowid or 0)

    def events_after(self, project_id: str, after: int, *, limit: int = 1000) -> list[EventRow]:
        rows = self.read(
            "SELECT * FROM events WHERE project = ? AND id > ? ORDER BY id LIMIT ?",
            (project_id, after, limit),
        )
        return [_row(EventRow, r) for r in rows]

    def deployment_events(self, deployment_id: int) -> list[EventRow]:
        rows = self.read("SELECT * FROM events WHERE deployment = ? ORDER BY id", (deployment_id,))
        return [_row(EventRow, r) for r in rows]

    def last_event_id(self, project_id: str | None = None) -> int:
        if project_id is None:
            rows = self.read("SELECT COALESCE(MAX(id), 0) FROM events")
        else:
            rows = self.read(
                "SELECT COALESCE(MAX(id), 0) FROM events WHERE project = ?", (project_id,)
            )
        return int(rows[0][0])

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

    # -- instances -------------------------------------------------------------------------

    def put_instance(self, instance: InstanceRow) -> None:
        names = [f.name for f in fields(InstanceRow)]
        with self.write() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO instances ({', '.join(names)}) "  # noqa: S608
                f"VALUES ({', '.join('?' for _ in names)})",
                tuple(getattr(instance, n) for n in names),
            )

    def remove_instance(self, project_id: str, hash: str) -> None:
        with self.write() as conn:
            conn.execute("DELETE FROM instances WHERE project = ? AND hash = ?", (project_id, hash))

    def instances(self, project_id: str | None = None) -> list[InstanceRow]:
        if project_id is None:
            rows = self.read("SELECT * FROM instances ORDER BY project, startedAt")
        else:
            rows = self.read(
                "SELECT * FROM instances WHERE project = ? ORDER BY startedAt", (project_id,)
            )
        return [_row(InstanceRow, r) for r in rows]
