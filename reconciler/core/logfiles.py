"""Logs that do not grow forever: rotation by size with a bounded number of old files.

A site's ``app.log`` is written by its own process (opened for appending), so it is rotated
by copy and truncate: ``app.log.1`` ... ``app.log.<keep>`` hold the older output, newest
first, and the process goes on writing at the start of the emptied file. A build's log is
rotated the same way by the daemon, which writes it. Lines written between the copy and the
truncate may be lost (at most what the app writes in that instant); that is the price of not
signalling the app.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LogLimits:
    max_bytes: int = 10 * 1024 * 1024  # a log is rotated once larger than this
    keep: int = 5  # rotated files kept beside the live one

    def docker(self) -> dict[str, str]:
        """The same bounds for Docker's json-file log driver."""
        return {"max-size": str(max(1, self.max_bytes)), "max-file": str(max(1, self.keep))}


DEFAULT_LIMITS = LogLimits()


def rotate(path: Path, limits: LogLimits) -> bool:
    """Rotate ``path`` when it is larger than ``limits.max_bytes``. Never follows a symlink.
    Returns True when it rotated."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    with os.fdopen(fd, "r+b") as live:
        if not os.path.samestat(os.fstat(live.fileno()), os.lstat(path)):
            return False
        if os.fstat(live.fileno()).st_size <= limits.max_bytes:
            return False
        for index in range(limits.keep, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if index == limits.keep:
                older.unlink(missing_ok=True)
            elif older.exists() and not older.is_symlink():
                os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
        if limits.keep > 0:
            first = path.with_name(f"{path.name}.1")
            tmp = path.with_name(f".{path.name}.1.tmp")
            with open(tmp, "wb") as copy:
                live.seek(0)
                shutil.copyfileobj(live, copy, 1 << 20)
            os.replace(tmp, first)
        live.truncate(0)
    return True


def rotated(path: Path, limits: LogLimits) -> list[Path]:
    """The rotated files of ``path`` that exist, newest first."""
    found = []
    for index in range(1, limits.keep + 1):
        older = path.with_name(f"{path.name}.{index}")
        with contextlib.suppress(OSError):
            if older.is_file() and not older.is_symlink():
                found.append(older)
    return found
