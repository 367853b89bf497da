"""Port allocation: the lowest port in the range that nothing holds and that binds.

A reservation is a row in the ``ports`` table written inside the same ``BEGIN IMMEDIATE``
transaction that chose it, so two threads or processes never get the same port. A port an
instance row names is held too, and so is any port a foreign process listens on (the bind
test fails for it).
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from reconciler.errors import TransientError
from reconciler.state import StateDB
from reconciler.timeutil import utcnow


@dataclass(frozen=True)
class PortRange:
    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> PortRange:
        try:
            first_text, last_text = text.split("-", 1)
            first, last = int(first_text), int(last_text)
        except ValueError:
            raise ValueError(f"port range {text!r} must look like 3001-3999") from None
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"port range {text!r} must satisfy 1 <= first <= last <= 65535")
        return cls(first, last)

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


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
