"""Which sites were asked for lately, from the edge's own access log (never from probes: the
daemon's health checks go to an instance's internal port, not through the edge).

Every access log line names the port its request came to (``"port":3001``) or, for a
domain, its host (``"host":"www.example.com"``). ``Traffic.poll`` reads the log on from where
it stopped (following it across Caddy's rolls) and notes, for each port and host it finds, the
time of the poll; lines are matched as bytes, never parsed, so a busy edge costs a regex scan.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

# a key of the line's own objects (a header's value holding the same text is escaped: \")
PORT_RE = re.compile(rb'[,{]"port":"?(\d{1,5})[",}]')
HOST_RE = re.compile(rb'[,{]"host":"([a-z0-9._-]{1,253})(?::\d+)?"')
STATUS_RE = re.compile(rb'[,{]"status":(\d{3})[,}]')
DURATION_RE = re.compile(rb'[,{]"duration":([0-9.eE+-]{1,32})[,}]')
MOST = 16 * 1024 * 1024  # bytes one poll reads at most (the rest: skipped, not queued up)
EVERY = 0.5  # seconds: polls closer together than this read nothing


class Traffic:
    """``tally``: also count, per site key, the answers, the 5xx answers and the seconds spent
    (``tallies``): what the dashboard's charts show, at a cost that grows with requests, not
    with sites (a line at a time)."""

    def __init__(
        self, log: Path, *, clock: Callable[[], float] = time.monotonic, tally: bool = False
    ) -> None:
        self.log = log
        self.clock = clock
        self._tally: dict[bytes, list[float]] | None = {} if tally else None
        self._file: BinaryIO | None = None
        self._inode: int | None = None
        self._rest = b""
        self._seen: dict[bytes, float] = {}  # b"p3001" / b"hwww.example.com" -> when
        self._polled = -1e9
        self._opened = False  # the first open starts at the end: earlier lines are not news
        self._closed = False  # a poll after close (a reconcile finishing late) reads nothing
        self._lock = threading.Lock()

    def last(self, port: int | None, domains: Iterable[str] = ()) -> float | None:
        """When a request for this site was last seen (None: not since the daemon started)."""
        keys = [b"p%d" % port] if port is not None else []
        keys += [b"h" + d.encode() for d in domains]
        with self._lock:
            times = [t for k in keys if (t := self._seen.get(k)) is not None]
        return max(times) if times else None

    def poll(self, *, force: bool = False) -> int:
        """Read what the log gained; returns how many lines named a site."""
        with self._lock:
            now = self.clock()
            if self._closed or (not force and now - self._polled < EVERY):
                return 0
            self._polled = now
            found = 0
            for chunk in self._chunks():
                found += self._note(chunk, now)
            return found

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None

    def _note(self, chunk: bytes, now: float) -> int:
        data = self._rest + chunk
        end = data.rfind(b"\n") + 1
        self._rest = data[end:][-65536:]
        lines = data[:end]
        found = 0
        if self._tally is not None:
            self._count(lines)
        for port in set(PORT_RE.findall(lines)):
            self._seen[b"p" + port] = now
            found += 1
        for host in set(HOST_RE.findall(lines)):
            self._seen[b"h" + host] = now
            found += 1
        return found

    def tallies(self) -> dict[bytes, list[float]]:
        """Since the first poll: key (b"p3001", b"hwww.example.com") -> [answers, 5xx
        answers, seconds spent answering]."""
        with self._lock:
            return {key: list(totals) for key, totals in (self._tally or {}).items()}

    def drop(self, keys: Iterable[bytes]) -> None:
        """Forget the tallies of these keys (hosts no site serves)."""
        with self._lock:
            for key in keys:
                (self._tally or {}).pop(key, None)

    def _count(self, lines: bytes) -> None:
        assert self._tally is not None
        for line in lines.splitlines():
            port = PORT_RE.search(line)
            host = None if port else HOST_RE.search(line)
            if port is None and host is None:
                continue
            key = b"p" + port.group(1) if port else b"h" + host.group(1)  # type: ignore[union-attr]
            totals = self._tally.setdefault(key, [0.0, 0.0, 0.0])
            totals[0] += 1
            status = STATUS_RE.search(line)
            if status is not None and status.group(1).startswith(b"5"):
                totals[1] += 1
            duration = DURATION_RE.search(line)
            if duration is not None:
                with contextlib.suppress(ValueError):
                    totals[2] += float(duration.group(1))

    def _chunks(self) -> Iterable[bytes]:
        """What was written since the last read: the rest of the file read so far, and when
        Caddy rolled it, the new one from its start."""
        try:
            inode = os.stat(self.log).st_ino
        except OSError:
            inode = None
        if self._file is not None:
            yield self._read(self._file)
            if inode == self._inode:
                return
            self._file.close()
            self._file, self._rest = None, b""
        if inode is None:
            return
        with contextlib.suppress(OSError):
            self._file = open(self.log, "rb")  # noqa: SIM115 - kept open between polls
            self._inode = inode
            if not self._opened:
                self._file.seek(0, os.SEEK_END)
                self._opened = True
            yield self._read(self._file)

    def _read(self, file: BinaryIO) -> bytes:
        data = file.read(MOST)
        if len(data) == MOST:  # a flood: what is left is skipped (its sites were just seen)
            file.seek(0, os.SEEK_END)
            self._rest = b""
            return data[: data.rfind(b"\n") + 1]
        return data
