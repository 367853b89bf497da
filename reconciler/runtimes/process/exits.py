"""Instances' leaders watched for their exit by the kernel (a pidfd each, one epoll), not by
polling: asking whether a watched instance is alive reads a set, and an instance that dies is
reported the moment it does (``ProcessRuntime.watch``), so the health tick costs nothing per
process site.

A pidfd is taken for any process, ours or adopted after a restart (no permission needed); it
is opened first and the process's start time checked after, so a pid reused by another
process is never watched in its place. Where pidfds are missing (an old kernel), or the
daemon is out of descriptors, nothing is watched and the callers read ``/proc`` as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable

from reconciler.core.spec import ProjectId

logger = logging.getLogger(__name__)

Key = tuple[int, int]  # (pid, start time): one process, never a reused pid


class ExitWatch:
    def __init__(self, start_time: Callable[[int], int | None]) -> None:
        self._start_time = start_time
        self._lock = threading.Lock()
        self._fds: dict[int, tuple[Key, ProjectId]] = {}  # pidfd -> its process, project
        self._keys: dict[Key, int] = {}  # -> its pidfd
        self._epoll: select.epoll | None = None
        self._usable = hasattr(os, "pidfd_open")
        self._changed: Callable[[ProjectId | None], None] | None = None

    def alive(self, pid: int, start: int) -> bool:
        """True while the process is watched (the watch ends as it exits); False also when
        it is not watched, or no watcher runs: then ask ``/proc``."""
        with self._lock:
            return self._changed is not None and (pid, start) in self._keys

    def watch(self, pid: int, start: int, project: ProjectId) -> bool:
        """Watch the process (pid, start) from now; False when it is not (or no longer) that
        process, or it cannot be watched."""
        key = (pid, start)
        with self._lock:
            if key in self._keys or not self._usable:
                return key in self._keys
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return False  # gone already, out of descriptors, or no pidfds here
        if self._start_time(pid) != start:  # the pid is someone else's now
            os.close(fd)
            return False
        with self._lock:
            if key in self._keys:  # watched meanwhile by another thread
                os.close(fd)
                return True
            self._fds[fd] = (key, project)
            self._keys[key] = fd
            self._poller().register(fd, select.EPOLLIN)
        return True

    def forget(self, pid: int, start: int) -> None:
        """Stop watching (a stop of our own is no news); its exit is reported no more."""
        with self._lock:
            fd = self._keys.pop((pid, start), None)
            if fd is not None:
                self._close(fd)

    def run(self, changed: Callable[[ProjectId | None], None], stop: threading.Event) -> None:
        """Report each watched process that exits (``changed(project)``) until ``stop``."""
        with self._lock:
            self._changed = changed
            poller = self._poller()
        while not stop.is_set():
            try:
                ready = poller.poll(1.0)
            except InterruptedError:
                continue
            except (OSError, ValueError):
                break  # closed
            for fd, _mask in ready:
                self._exited(fd)
        with self._lock:
            self._changed = None  # no one hears of exits now: alive() asks /proc

    def close(self) -> None:
        with self._lock:
            for fd in list(self._fds):
                self._close(fd)
            self._keys.clear()
            if self._epoll is not None:
                self._epoll.close()

    def _exited(self, fd: int) -> None:
        with self._lock:
            found = self._fds.get(fd)
            if found is None:
                return
            key, project = found
            self._keys.pop(key, None)
            self._close(fd)
            changed = self._changed
        logger.debug("%s: pid %d exited", project, key[0])
        if changed is not None:
            changed(project)

    def _close(self, fd: int) -> None:
        """Under the lock."""
        self._fds.pop(fd, None)
        if self._epoll is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    def _poller(self) -> select.epoll:
        """Under the lock."""
        if self._epoll is None:
            self._epoll = select.epoll()
        return self._epoll
