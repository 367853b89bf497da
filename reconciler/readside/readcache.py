"""What the API reads, remembered per project until something it is read from changes.

A project's status is read from its desired file, the state database and its releases, and
deriving it (a plan included) costs about a millisecond. With a thousand projects, reading
them all on every ``GET /api/projects`` would take a second. So an entry per project is kept
and dropped when one of its inputs moves:

- the database: every change to a project's rows bumps its revision (``revisions``, kept by
  triggers); when anything was committed since a thread last looked (``data_version``, asked
  at most every ``db_check_every`` seconds however many requests come), one indexed query
  finds the projects changed since the last revision seen;
- its desired file: a single project's read stats its file (one or two stats); a listing
  stats the desired dir (a file added, removed or renamed into place changes it), and a
  background thread stats every file each ``sweep_every`` seconds and as soon as the dir
  changed (an edit in place leaves the dir as it was; a rename over a file keeps its name),
  so an edit made outside the API shows in a listing within that; an edit made through the
  API is dropped at once (:meth:`ReadCache.forget`), and the daemon's reaction to any edit
  (a deployment, an error shown) changes rows, which drops the value too;
- what every status depends on (the edge mode, the default runtime): everything is dropped;
- a file saved without a final newline is read again when it settles.

Nothing is read from the release dirs per request: the daemon changes them only together
with a project's rows.
"""

from __future__ import annotations

import math
import os
import stat
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from reconciler.core.spec import ProjectId
from reconciler.stores.desired import SUFFIXES, classify
from reconciler.stores.state import StateDB

V = TypeVar("V")
SWEEP_WHILE_USED = 60.0  # the sweeper stats files only while a listing was asked this recently
Stat = tuple[int, int, int, int] | None  # (device, inode, size, mtime ns); None: no file
Key = tuple[Stat, ...]


def _stat(path: str) -> Stat:
    """What a path names (links followed), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Listing(Generic[V]):
    version: int  # the cache's version it was made at: equal versions, equal listings
    projects: list[tuple[ProjectId, V]]
    orphans: list[tuple[str, str]]  # (file name, why it names no project)


@dataclass
class _Entry(Generic[V]):
    value: V
    key: Key  # the desired file(s) as they were before the value was read


class ReadCache(Generic[V]):
    """Per-project values, recomputed with ``compute`` when their inputs moved."""

    def __init__(
        self,
        db: StateDB,
        desired_dir: Path,
        compute: Callable[[ProjectId], tuple[V, float | None]],
        *,
        shared: Callable[[], Hashable] = lambda: None,
        sweep_every: float = 1.0,
        db_check_every: float = 0.002,
        background: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``compute(project_id)`` returns the value and, if it depends on time, the Unix time it
        goes stale; ``shared()`` is what every value depends on."""
        self.db = db
        self.directory = str(desired_dir)
        self.compute = compute
        self.shared = shared
        self.sweep_every = sweep_every
        self.db_check_every = db_check_every
        self.background = background  # a thread sweeps the files' stats (see sweep_files)
        self._wake = threading.Event()
        self._sweeping = False
        self._used = -math.inf
        self.clock = clock
        self.lock = threading.RLock()
        self._entries: dict[ProjectId, _Entry[V]] = {}
        self._expiring: dict[ProjectId, float] = {}  # Unix time a value goes stale
        self._next_expiry = math.inf
        self._db_checked = -math.inf
        self._listing: Listing[V] | None = None
        self._local = threading.local()
        self._rev = 0
        self._shared: Hashable = object()
        self._dir: Stat = None
        self._ids: list[ProjectId] = []
        self._names: tuple[str, ...] = ()
        self._orphans: list[tuple[str, str]] = []
        self.version = 0  # bumped whenever a value or the set of projects changes

    # -- what changed ----------------------------------------------------------------------

    def _key(self, project_id: ProjectId) -> Key:
        keys: list[Stat] = []
        for suffix in SUFFIXES:
            path = os.path.join(self.directory, f"{project_id}{suffix}")
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                keys.append(None)
                continue
            keys.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
            if stat.S_ISLNK(st.st_mode):  # a linked file's target, edited in place
                keys.append(_stat(path))
        return tuple(keys)

    def _drop(self, project_id: ProjectId) -> None:
        self._expiring.pop(project_id, None)
        if self._entries.pop(project_id, None) is not None:
            self.version += 1

    def _quiet(self) -> bool:
        """Nothing to apply (checked without the lock): no value due to go stale, and
        nothing committed since this thread's last look. Consumes the thread's signal: when
        this says False, the caller must ``_apply``."""
        if self._next_expiry <= time.time():
            return False
        now = self.clock()
        if now - self._db_checked < self.db_check_every:
            return True  # another request looked a moment ago
        self._db_checked = now
        return not self.db.changed() and getattr(self._local, "rev", None) == self._rev

    def _catch_up(self) -> None:
        if not self._quiet():
            with self.lock:
                self._apply()

    def _apply(self) -> None:
        """Drop what went stale, what the shared inputs moved and what the database changed
        (under the lock)."""
        now = time.time()
        for project_id in [p for p, at in self._expiring.items() if at <= now]:
            self._drop(project_id)
        shared = self.shared()
        if shared != self._shared:
            self._shared = shared
            self._clear()
        top = int(self.db.read("SELECT COALESCE(MAX(rev), 0) FROM revisions")[0][0])
        if top < self._rev:  # a new database (rebuilt): nothing known holds
            self._clear()
        elif top > self._rev:
            for row in self.db.read("SELECT project FROM revisions WHERE rev > ?", (self._rev,)):
                self._drop(ProjectId(row[0]))
        self._rev = top
        self._local.rev = top
        self._next_expiry = min(self._expiring.values(), default=math.inf)

    def _clear(self) -> None:
        self._entries.clear()
        self._expiring.clear()
        self.version += 1

    def _look_at_dir(self) -> None:
        """The listing's names, when the dir changed (a file added, removed or renamed over
        another); the files' stats are the sweeper's (woken now). Under the lock."""
        directory = _stat(self.directory)
        if directory == self._dir:
            return
        self._dir = directory
        try:
            names = tuple(sorted(os.listdir(self.directory)))
        except OSError:
            names = ()
        if names != self._names:
            self._names = names
            self._ids, self._orphans = classify(names)
            for project_id in set(self._entries) - set(self._ids):
                self._drop(project_id)
            self.version += 1
        self._wake.set()

    def sweep_files(self) -> None:
        """Drop every value whose desired file moved (an edit in place leaves the dir as it
        was). The stats are taken without the lock: a thousand of them would hold up every
        request (each one hands the GIL to a busy thread and waits to get it back)."""
        keys = {project_id: self._key(project_id) for project_id in list(self._entries)}
        with self.lock:
            for project_id, key in keys.items():
                entry = self._entries.get(project_id)
                if entry is not None and entry.key != key:
                    self._drop(project_id)

    def _sweeper(self) -> None:
        while True:
            self._wake.wait(self.sweep_every)
            self._wake.clear()
            if self.clock() - self._used < SWEEP_WHILE_USED:
                self.sweep_files()

    def _start_sweeper(self) -> None:
        if self._sweeping or not self.background:
            return
        with self.lock:
            if not self._sweeping:
                self._sweeping = True
                threading.Thread(target=self._sweeper, name="readcache-sweep", daemon=True).start()

    # -- reading ---------------------------------------------------------------------------

    def get(self, project_id: ProjectId) -> V:
        """One project's value, its desired file checked now. Takes the lock only when
        something changed."""
        return self._get(project_id, self._key(project_id))

    def get_present(self, project_id: ProjectId) -> V | None:
        """Like ``get``, but None when the project has no desired file (the same stats
        tell both)."""
        key = self._key(project_id)
        if not any(key):
            return None
        return self._get(project_id, key)

    def _get(self, project_id: ProjectId, key: Key) -> V:
        self._catch_up()
        entry = self._entries.get(project_id)
        if entry is not None and entry.key == key:
            return entry.value
        with self.lock:
            entry = self._entries.get(project_id)
            if entry is not None and entry.key == key:
                return entry.value
            return self._fill(project_id, key)

    def all(self) -> Listing[V]:
        """Every project with a desired file, by id; and the desired files whose names are
        no project id, with why. The same object again while nothing changed."""
        self._catch_up()
        self._start_sweeper()
        self._used = self.clock()
        if _stat(self.directory) != self._dir:
            with self.lock:
                self._look_at_dir()
        listing = self._listing
        if listing is not None and listing.version == self.version:
            return listing
        with self.lock:
            listing = self._listing
            if listing is not None and listing.version == self.version:
                return listing
            found = []
            for project_id in self._ids:
                entry = self._entries.get(project_id)
                value = (
                    entry.value
                    if entry is not None
                    else self._fill(project_id, self._key(project_id))
                )
                found.append((project_id, value))
            listing = Listing(self.version, found, list(self._orphans))
            self._listing = listing
            return listing

    def _fill(self, project_id: ProjectId, key: Key) -> V:
        value, stale_at = self.compute(project_id)
        self._entries[project_id] = _Entry(value, key)
        if stale_at is not None:
            self._expiring[project_id] = stale_at
            self._next_expiry = min(self._next_expiry, stale_at)
        self.version += 1
        return value

    def forget(self, project_id: ProjectId) -> None:
        """Drop one project's value (its file was just written through the API)."""
        with self.lock:
            self._drop(project_id)
            self._dir = None  # and list the dir again at the next listing
