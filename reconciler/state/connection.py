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
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reconciler.state.schema import MIGRATIONS


class Database:
    """Connections (one per thread), short write transactions, and the migrations."""

    def __init__(self, path: Path, *, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._commits = 0  # commits through this object (see ``changed``)
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
        self._commits += 1

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self._conn().execute(sql, params).fetchall()

    def changed(self) -> bool:
        """Whether anyone committed since this thread last asked: another connection
        (SQLite's ``data_version`` on this thread's) or any thread through this object (its
        own connection's commits do not move ``data_version``). True the first time."""
        conn = self._conn()
        version = (int(conn.execute("PRAGMA data_version").fetchone()[0]), self._commits)
        last: tuple[int, int] | None = getattr(self._local, "data_version", None)
        self._local.data_version = version
        return last != version

    def _migrate(self) -> None:
        with self.write() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.path} has schema version {version}, newer than this reconciler "
                    f"({len(MIGRATIONS)}); upgrade reconciler"
                )
            for index in range(version, len(MIGRATIONS)):
                for statement in _statements(MIGRATIONS[index]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {index + 1}")

    @property
    def schema_version(self) -> int:
        return int(self.read("PRAGMA user_version")[0][0])

    # -- projects --------------------------------------------------------------------------


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration, one by one (a trigger's body holds semicolons)."""
    pending = ""
    for part in script.split(";"):
        pending += part + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""
    if pending.strip(" \n;"):
        raise ValueError(f"incomplete statement in a migration: {pending.strip()[:60]}")
