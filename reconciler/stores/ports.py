"""Port allocation: the lowest port in the range that nothing holds and that binds.

A reservation is a row written inside the same ``BEGIN IMMEDIATE`` transaction that chose
it, so two threads or processes never get the same port. A port an instance row names is held
too, and so is any port a foreign process listens on (the bind test fails for it).

``PortAllocator`` gives each instance its own public port (``--edge off``); ``SiteAllocator``
gives each project one stable public port for the edge and two internal slot ports.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

from reconciler.core.config import PortRange
from reconciler.core.errors import TransientError
from reconciler.core.fileio import atomic_write
from reconciler.core.spec import InvalidProjectId, ProjectId, check_project_id
from reconciler.core.timeutil import utcnow
from reconciler.stores.state import SiteRow, StateDB


def port_is_free(host: str, port: int) -> bool:
    """True when a listener could bind ``host:port`` now (SO_REUSEADDR, as servers use)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def holder(port: int) -> str | None:
    """Who listens on TCP ``port``, as far as /proc shows it: ``pid 123 (nginx)``, or None
    (no listener seen, or one of another user's that this process may not look into)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{inode}]")
        except (OSError, ValueError, IndexError):
            continue
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds):
                with open(f"/proc/{pid}/comm") as fh:
                    return f"pid {pid} ({fh.read().strip()})"
        except OSError:
            continue
    return "another process"


class PortAllocator:
    def __init__(self, db: StateDB, ports: PortRange, *, bind_host: str = "127.0.0.1") -> None:
        self.db = db
        self.range = ports
        self.bind_host = bind_host

    def allocate(self, project_id: str, *, hash: str | None = None) -> int:
        with self.db.write() as conn:
            held = {
                int(r[0])
                for r in conn.execute(
                    "SELECT port FROM ports UNION SELECT port FROM instances WHERE port IS NOT NULL"
                )
            }
            for port in range(self.range.first, self.range.last + 1):
                if port in held or not port_is_free(self.bind_host, port):
                    continue
                conn.execute(
                    "INSERT INTO ports (port, project, hash, reservedAt) VALUES (?, ?, ?, ?)",
                    (port, project_id, hash, utcnow()),
                )
                return port
        raise TransientError(
            f"no free port in {self.range} on {self.bind_host}: every port is reserved or "
            "in use by another process; widen --port-range or stop something",
            delay=10,
        )

    def release(self, port: int | None) -> None:
        if port is None:
            return
        with self.db.write() as conn:
            conn.execute("DELETE FROM ports WHERE port = ?", (port,))

    def reserved(self, project_id: str | None = None) -> dict[int, str]:
        if project_id is None:
            rows = self.db.read("SELECT port, project FROM ports ORDER BY port")
        else:
            rows = self.db.read(
                "SELECT port, project FROM ports WHERE project = ? ORDER BY port", (project_id,)
            )
        return {int(r["port"]): str(r["project"]) for r in rows}

    def release_unused(self, keep: set[int]) -> list[int]:
        """Release reservations no instance holds (after a crash); returns the freed ports."""
        freed = [port for port in self.reserved() if port not in keep]
        for port in freed:
            self.release(port)
        return freed


SITE_RECORD = "site.json"


class SiteAllocator:
    """Each project's stable address at the edge: a public port from ``--port-range``,
    reserved from its first start until its desired file is deleted, and two internal slot
    ports (127.0.0.1) for blue-green instances, reserved on first need.

    A reservation lives in the ``sites`` table and in ``<releases>/<id>/site.json``, so that it
    survives a lost or restored ``state.db``: ``restore()`` reads the files back at startup.
    No port is ever reserved twice, nor one that another process listens on.
    """

    def __init__(
        self,
        db: StateDB,
        public: PortRange,
        internal: PortRange,
        *,
        records: Path,
        bind_host: str = "127.0.0.1",
        public_held: Callable[[], frozenset[int]] | None = None,
    ) -> None:
        self.db = db
        self.public = public
        self.internal = internal
        self.records = records
        self.bind_host = bind_host
        # with the edge: it listens on every public port, so a port is not probed; the ones
        # other processes hold (as the edge found them) are left out
        self.public_held = public_held
        self._floors: dict[tuple[int, int], int] = {}  # per span: the ports under it are taken

    def _taken(self, conn: sqlite3.Connection, port: int) -> bool:
        """Whether a site, a reservation or an instance has ``port`` (indexed lookups: the
        set of every held port cost a millisecond a pick at 1,200 sites, under the lock)."""
        row = conn.execute(
            "SELECT 1 FROM sites WHERE publicPort = ?1 UNION ALL "
            "SELECT 1 FROM sites WHERE slotA = ?1 UNION ALL "
            "SELECT 1 FROM sites WHERE slotB = ?1 UNION ALL "
            "SELECT 1 FROM ports WHERE port = ?1 UNION ALL "
            "SELECT 1 FROM instances WHERE port = ?1 LIMIT 1",
            (port,),
        ).fetchone()
        return row is not None

    def _pick(
        self,
        conn: sqlite3.Connection,
        span: PortRange,
        host: str,
        count: int,
        skip: frozenset[int] = frozenset(),
    ) -> list[int]:
        """The ``count`` lowest free ports of ``span``. The scan starts at the span's floor:
        every port under it was taken when last looked (a release through this allocator
        lowers it; a port freed otherwise is found when the scan wraps around)."""
        key = (span.first, span.last)
        floor = min(max(self._floors.get(key, span.first), span.first), span.last)
        edge = self.public_held is not None and span == self.public
        if edge and self.public_held is not None:
            skip = skip | self.public_held()
        found: list[int] = []
        unsure: int | None = None  # the first port passed over for a while (held elsewhere)
        order = [*range(floor, span.last + 1), *range(span.first, floor)]
        for port in order:
            if port in skip or self._taken(conn, port):
                if port in skip and unsure is None:
                    unsure = port
                continue
            if not edge and not port_is_free(host, port):
                unsure = port if unsure is None else unsure
                continue
            found.append(port)
            if len(found) == count:
                # everything scanned before this port was taken (or ``unsure``)
                self._floors[key] = port + 1 if unsure is None else min(port + 1, unsure)
                return found
        raise TransientError(
            f"no free port in {span} on {host}: every port is reserved or in use by another "
            "process; widen the range or delete unused desired files",
            delay=10,
        )

    def reserve(self, project_id: ProjectId) -> SiteRow:
        """The project's site, reserving its public port on first use."""
        existing = self.db.site(project_id)
        if existing is not None:
            return existing
        with self.db.write() as conn:
            row = conn.execute("SELECT * FROM sites WHERE project = ?", (project_id,)).fetchone()
            if row is None:
                (port,) = self._pick(conn, self.public, self.bind_host, 1)
                conn.execute(
                    "INSERT INTO sites (project, publicPort, reservedAt) VALUES (?, ?, ?)",
                    (project_id, port, utcnow()),
                )
        site = self.db.site(project_id)
        assert site is not None
        self._record(site)
        return site

    def reserve_slots(self, project_id: ProjectId, *, adopt: int | None = None) -> tuple[int, int]:
        """The project's two slot ports; ``adopt`` keeps a port an instance already listens
        on as slot a (taking over a site that ran without the edge, with no restart)."""
        site = self.reserve(project_id)
        if site.slots is not None:
            return site.slots
        with self.db.write() as conn:
            if adopt is not None:
                (other,) = self._pick(conn, self.internal, "127.0.0.1", 1, frozenset({adopt}))
                ports = [adopt, other]
            else:
                ports = self._pick(conn, self.internal, "127.0.0.1", 2)
            conn.execute(
                "UPDATE sites SET slotA = ?, slotB = ? WHERE project = ? AND slotA IS NULL",
                (ports[0], ports[1], project_id),
            )
        updated = self.db.site(project_id)
        assert updated is not None and updated.slots is not None
        self._record(updated)
        return updated.slots

    def release(self, project_id: ProjectId) -> None:
        """Give the project's ports back (its desired file was deleted)."""
        site = self.db.site(project_id)
        self.db.remove_site(project_id)
        for port in (site.publicPort, *(site.slots or ())) if site is not None else ():
            for key, floor in list(self._floors.items()):
                if key[0] <= port <= key[1] and port < floor:
                    self._floors[key] = port
        (self.records / project_id / SITE_RECORD).unlink(missing_ok=True)

    def _record(self, site: SiteRow) -> None:
        directory = self.records / site.project
        directory.mkdir(parents=True, exist_ok=True)
        record = {"publicPort": site.publicPort, "slots": list(site.slots or ())}
        atomic_write(directory / SITE_RECORD, json.dumps(record).encode() + b"\n")

    def restore(self) -> list[str]:
        """Put back reservations the database lost, from their ``site.json`` files."""
        restored: list[str] = []
        if not self.records.is_dir():
            return restored
        for entry in sorted(self.records.iterdir()):
            try:
                project_id = check_project_id(entry.name)
                record = json.loads((entry / SITE_RECORD).read_text())
                port = int(record["publicPort"])
                slots = [int(p) for p in record.get("slots") or []]
            except (InvalidProjectId, OSError, ValueError, KeyError, TypeError):
                continue
            if self.db.site(project_id) is not None:
                continue
            slot_a, slot_b = (slots[0], slots[1]) if len(slots) == 2 else (None, None)
            try:
                with self.db.write() as conn:
                    conn.execute(
                        "INSERT INTO sites (project, publicPort, slotA, slotB, reservedAt)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (project_id, port, slot_a, slot_b, utcnow()),
                    )
            except sqlite3.IntegrityError:
                continue  # a port another project holds now: that project keeps it
            restored.append(project_id)
        return restored
