"""Crash-safe file helpers shared by every store: atomic replace, directory fsync, bounded reads."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data``: temp file in the same dir, fsync, rename, fsync dir.

    Readers see the old content or the new, never a mix; the file keeps its mode.
    ``durable=False`` leaves out the fsyncs (for what is worked out again after a crash).
    """
    tmp, _ours = _temp_beside(path, data, durable=durable)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def _temp_beside(path: Path, data: bytes, *, durable: bool) -> tuple[str, Identity]:
    """``data`` in a new temp file beside ``path``, with its mode (0644 for a new file):
    the temp file's name and identity."""
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if durable:
                os.fsync(handle.fileno())
            return tmp, identity(os.fstat(handle.fileno()))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


Identity = tuple[int, int, int, int]


def identity(st: os.stat_result) -> Identity:
    """What tells one version of a file from another: its inode, size and mtime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _load_renameat2() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None


_RENAMEAT2 = _load_renameat2()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(first: str, second: str) -> bool:
    """Swap two names atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False when the
    system or the filesystem cannot."""
    if _RENAMEAT2 is None:
        return False
    done = _RENAMEAT2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second),
                      ctypes.c_uint(_RENAME_EXCHANGE))  # fmt: skip
    if done == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(error, os.strerror(error), second)


def replace_if_unchanged(path: Path, data: bytes, seen: Identity) -> bool:
    """Replace ``path`` with ``data`` only if it is still the version ``seen``: a
    compare-and-swap, so a write made meanwhile (an editor's save, a ``git pull``) is never
    overwritten. False when the file changed: nothing was written, the caller reads again.

    The new file is swapped in atomically and what it replaced is checked after; a version
    that came in between is swapped back (where exchanges are not available, the check
    comes just before the rename)."""
    directory = path.parent
    tmp, ours = _temp_beside(path, data, durable=True)
    try:
        if not _exchange(tmp, str(path)):
            if identity(os.stat(path, follow_symlinks=False)) != seen:
                return False
            os.replace(tmp, path)
            fsync_dir(directory)
            return True
        if identity(os.stat(tmp, follow_symlinks=False)) == seen:
            fsync_dir(directory)
            return True
        _exchange(tmp, str(path))  # theirs back
        if identity(os.stat(tmp, follow_symlinks=False)) != ours:
            _exchange(tmp, str(path))  # a later write replaced ours meanwhile: it stands
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


_SYNCFS = _load_syncfs()


def sync_filesystem(path: Path) -> bool:
    """Flush every dirty file and directory of the filesystem that holds ``path`` (Linux
    ``syncfs``): one call instead of an fsync per file. False when it is not available or
    failed (the caller then syncs file by file)."""
    if _SYNCFS is None:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return bool(_SYNCFS(fd) == 0)
    finally:
        os.close(fd)


class NotRegularFile(OSError):
    """The path names a FIFO, device, socket or directory: never read it."""


def read_bounded(path: Path, limit: int) -> bytes:
    """Read at most ``limit`` bytes of a regular file without blocking on a FIFO or device."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(f"{path} is not a regular file")
        chunks = []
        remaining = limit
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
