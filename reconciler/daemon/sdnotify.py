"""systemd's notify protocol without extra dependencies: datagrams to ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping

PRIVATE = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Reads the protocol's variables once. Made from the process's own environment, it takes
    them out of it (as ``sd_notify(unset_environment=1)`` does), so no child process (a build,
    ``systemd-run``, git) inherits them and writes to the unit's socket."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = dict(os.environ) if environ is None else environ
        if environ is None:
            for name in PRIVATE:
                os.environ.pop(name, None)
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or (pid.isdigit() and int(pid) == os.getpid())
        self.watchdog_interval = (
            int(usec) / 1_000_000 / 2 if usec.isdigit() and int(usec) > 0 and mine else None
        )

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        if self.address is None:
            return False
        message = "\n".join(lines).encode()
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
        ):
            sock.connect(self.address)
            sock.sendall(message)
            return True
        return False
