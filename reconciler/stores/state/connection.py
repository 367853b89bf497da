"""Observed state: SQLite at ``data/state.db`` in WAL mode.

Shared by the daemon's threads and by the API sidecar process. Each thread has its own
connection; every write is one short ``BEGIN IMMEDIATE`` transaction, so writers queue on
SQLite's lock (busy timeout) instead of failing, and readers never block writers. The threads
of one process queue on a lock of their own first: SQLite's busy handler polls with sleeps that
grow to 100 ms, so eight threads writing at once waited far longer than their transactions.

Event ids come from ``AUTOINCREMENT`` inside serialized write transactions: they strictly
increase, are never reused after retention deletes old rows, and a reader that has seen id N
sees every later event exactly once by asking for ``id > N``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reconciler.stores.state.schema import MIGRATIONS

# what a write that failed in SQLite raises (a full disk, a lock held past the busy timeout):
# for the parts that may not speak SQL to catch
StateWriteFailed = sqlite3.OperationalError


class Database:
    """Connections (one per thread), short write transactions, and the migrations."""

    def __init__(self, path: Path, *, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._commits = 0  # commits through this object (see ``changed``)
        self._bell: ChangeBell | None = None
        # this process's writers, in turn (reentrant: a nested write still gets SQLite's error)
        self._writer = threading.RLock()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._migrate()
        self._owner_only()

    def _owner_only(self) -> None:
        """The database and its WAL files readable by their owner alone: the specs it keeps
        name git URLs as written, credentials and all (a fetch needs them)."""
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):  # not there (yet), or not ours to change
                os.chmod(f"{self.path}{suffix}", 0o600)

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
        # past the busy timeout, go on to SQLite's lock and its error rather than wait for ever
        turn = self._writer.acquire(timeout=self.busy_timeout)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self._commits += 1
        finally:
            if turn:
                self._writer.release()

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self._conn().execute(sql, params).fetchall()

    @property
    def bell(self) -> ChangeBell:
        """Rings when anyone commits (see :class:`ChangeBell`); made on first use."""
        with self._all_lock:
            if self._bell is None:
                self._bell = ChangeBell(self.path)
            return self._bell

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


class ChangeBell:
    """Wakes waiters soon after anyone commits to the database, in this process or another.

    One thread asks SQLite's ``data_version`` on a connection of its own every ``interval``
    while the bell is in use, and stops after ``linger`` seconds unused; an event stream
    sleeps on it instead of polling the events table on a fixed beat. ``seq()`` before a
    read, ``wait(seq, timeout)`` after it: a commit in between is never missed (``seq()``
    starts the thread and returns once it has its first reading)."""

    def __init__(self, path: Path, *, interval: float = 0.005, linger: float = 5.0) -> None:
        self.path = path
        self.interval = interval
        self.linger = linger
        self._cond = threading.Condition()
        self._seq = 0
        self._waiters = 0
        self._used = 0.0
        self._state = "stopped"  # stopped, starting, running
        self.thread: threading.Thread | None = None

    def seq(self) -> int:
        with self._cond:
            self._used = time.monotonic()
            if self._state == "stopped":
                self._state = "starting"
                self.thread = threading.Thread(target=self._run, name="db-bell", daemon=True)
                self.thread.start()
            self._cond.wait_for(lambda: self._state != "starting", 2.0)
            return self._seq

    def wait(self, seen: int, timeout: float) -> int:
        """Until the database changed after ``seen`` (or ``timeout``); the sequence now."""
        with self._cond:
            if self._state != "running":  # no thread to ring: sleep the timeout out
                self._cond.wait(timeout)
                return self._seq
            self._waiters += 1
            try:
                self._cond.wait_for(lambda: self._seq != seen, timeout)
            finally:
                self._waiters -= 1
                self._used = time.monotonic()
            return self._seq

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, timeout=5, check_same_thread=False)
            last = int(conn.execute("PRAGMA data_version").fetchone()[0])
            with self._cond:
                self._state = "running"
                self._cond.notify_all()
            while True:
                time.sleep(self.interval)
                version = int(conn.execute("PRAGMA data_version").fetchone()[0])
                with self._cond:
                    if version != last:
                        last = version
                        self._seq += 1
                        self._cond.notify_all()
                    if not self._waiters and time.monotonic() - self._used >= self.linger:
                        self._state = "stopped"
                        return
        except sqlite3.Error:
            pass
        finally:
            with self._cond:
                self._state = "stopped"
                self._cond.notify_all()
            if conn is not None:
                conn.close()
