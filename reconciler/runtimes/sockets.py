"""Which TCP ports a process listens on, from /proc: what an app that ignores its port does
listen on, so a start that never answers can say so (``PORT`` or ``start.port`` is not the
port the app uses)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable

LISTEN = "0A"  # the TCP state of a listening socket in /proc/net/tcp


def _listening(pid: int) -> dict[int, int]:
    """The listening sockets the network namespace of ``pid`` holds: inode -> port."""
    found: dict[int, int] = {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as fh:
            next(fh, None)  # the header
            for line in fh:
                fields = line.split()
                if len(fields) > 9 and fields[3] == LISTEN:
                    found[int(fields[9])] = int(fields[1].rsplit(":", 1)[1], 16)
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def ports_of(pids: Iterable[int]) -> set[int]:
    """The TCP ports these processes listen on (sockets they hold open)."""
    pids = list(pids)
    if not pids:
        return set()
    table = _listening(pids[0])
    inodes = set().union(*(_socket_inodes(pid) for pid in pids))
    return {port for inode, port in table.items() if inode in inodes}


def ports_in_namespace(pid: int) -> set[int]:
    """Every TCP port listened on in the network namespace of ``pid`` (a container's)."""
    return set(_listening(pid).values())


def listens_on(pids: Iterable[int], port: int) -> bool:
    """Whether one of these processes holds a socket listening on TCP ``port``. Only that
    port's lines of the table are looked at (a regex over the file): an edge's thousands of
    listening ports made a full parse cost milliseconds each time."""
    pids = list(pids)
    if not pids:
        return False
    line = re.compile(
        rb"^\s*\d+: [0-9A-F]+:%04X [0-9A-F]+:[0-9A-F]+ 0A(?:\s+\S+){5}\s+(\d+)" % port, re.M
    )
    inodes: set[int] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pids[0]}/net/{table}", "rb") as fh:
            inodes.update(int(found.group(1)) for found in line.finditer(fh.read()))
    return bool(inodes) and any(_socket_inodes(pid) & inodes for pid in pids)
