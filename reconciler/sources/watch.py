"""Watch the desired dir (watchdog/inotify) and queue the projects whose files changed.

Editors and git save by writing a temp file and renaming it over the target, so created,
modified, deleted and moved events all count, for both ends of a move. A write known to be
complete (a rename into place, a writer closing the file) queues its project at once; other
events are debounced per project: a reconcile fires ``debounce`` seconds after the last event,
but never later than ``max_wait`` after the first one, so a burst of writes gives a bounded
number of reconciles that end on the last content.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from reconciler.core.spec import InvalidProjectId, ProjectId, check_project_id
from reconciler.stores.desired import SUFFIXES

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


def project_for(path: str | bytes) -> ProjectId | None:
    """The project a changed path in the desired dir belongs to (None: not a desired file)."""
    name = os.path.basename(os.fsdecode(path))
    if name.startswith(".") or not name.endswith(SUFFIXES):
        return None
    try:
        return check_project_id(name.rsplit(".", 1)[0])
    except InvalidProjectId:
        return None


class Debouncer(Generic[K]):
    """Fire ``fire(key)`` once per burst of ``touch(key)``: ``delay`` after the last touch,
    never later than ``max_wait`` after the first. ``due(now)`` is the decision alone; the
    thread (``start()``) calls it as time passes."""

    def __init__(
        self,
        fire: Callable[[K], None],
        *,
        delay: float,
        max_wait: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fire = fire
        self.delay = delay
        self.max_wait = max_wait
        self.clock = clock
        self._pending: dict[K, tuple[float, float]] = {}  # key -> (first, last)
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="debouncer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def touch(self, key: K) -> None:
        now = self.clock()
        with self._cond:
            first, _last = self._pending.get(key, (now, now))
            self._pending[key] = (first, now)
            self._cond.notify()

    def now(self, key: K) -> None:
        """Fire for ``key`` at once (a write known to be complete), folding pending touches."""
        now = self.clock()
        with self._cond:
            self._pending[key] = (now - self.max_wait, now - self.delay)
            self._cond.notify()

    def due(self, now: float) -> tuple[list[K], float | None]:
        """Take the keys due at ``now``; also how long until the next one is (at most 0.5 s;
        None when nothing waits: then the thread sleeps until a touch, costing nothing)."""
        ready: list[K] = []
        wait: float | None = None
        with self._cond:
            for key, (first, last) in list(self._pending.items()):
                due = min(last + self.delay, first + self.max_wait)
                if due <= now:
                    ready.append(key)
                    del self._pending[key]
                else:
                    wait = min(wait if wait is not None else 0.5, due - now)
        return ready, wait

    def _run(self) -> None:
        while True:
            ready, wait = self.due(self.clock())
            with self._cond:
                if self._closed:
                    return
                if not ready and (wait is not None or not self._pending):
                    self._cond.wait(wait)
            for key in ready:
                try:
                    self.fire(key)
                except Exception:
                    logger.exception("debounced handler failed for %s", key)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(2)


# What a watch asks the kernel for: changes only. Opens and reads are left out, so the
# daemon's own reads (every desired file on a full resync, a build reading its source) wake
# nothing and cost nothing.
CHANGES = [
    FileCreatedEvent, FileModifiedEvent, FileDeletedEvent, FileMovedEvent, FileClosedEvent,
    DirCreatedEvent, DirModifiedEvent, DirDeletedEvent, DirMovedEvent,
]  # fmt: skip

COMPLETE = ("moved", "closed")  # a rename into place, or a writer closing the file


class _Handler(FileSystemEventHandler):
    """A rename into place (editors, git) or a closed write is a complete file: react at
    once. Anything else (a create, a write still going on, a delete) waits out the burst."""

    def __init__(self, debouncer: Debouncer[ProjectId]) -> None:
        self.debouncer = debouncer

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed_no_write"):
            return
        complete = event.event_type in COMPLETE
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path:
                project = project_for(path)
                if project is None:
                    continue
                moved_away = event.event_type == "moved" and path == event.src_path
                if complete and not moved_away:
                    self.debouncer.now(project)
                else:
                    self.debouncer.touch(project)


class DesiredWatcher:
    """watchdog on the desired dir feeding a debouncer."""

    def __init__(
        self,
        directory: Path,
        notify: Callable[[ProjectId], None],
        *,
        debounce: float = 0.1,
        max_wait: float = 1.0,
    ) -> None:
        self.directory = Path(directory)
        self.debouncer: Debouncer[ProjectId] = Debouncer(notify, delay=debounce, max_wait=max_wait)
        self.observer = Observer()
        self.observer.schedule(
            _Handler(self.debouncer), str(self.directory), recursive=False, event_filter=CHANGES
        )

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.debouncer.start()
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(5)
        self.debouncer.close()
