"""The safety nets under the events, at a cost that stays flat as projects grow.

Events do the work: the desired dir and the sources are watched, engines report what dies,
the edge's routes are written when a site changes. What is left for timers is to catch
what an event could miss, and that walks the projects a slice at a time (``Rotation``):

- every resync tick (``--resync-interval``), the fingerprints (desired file, release dir)
  of ``SIGN_SLICE`` projects are compared with the ones they converged with (all of them
  when the desired dir is not watched: then this is how edits are found); a moved one is
  reconciled;
- every tick also reconciles in full a share of the projects, so that each is reconciled
  at least once per ``FULL_EVERY`` ticks, unless that costs more than ``FULL_BUDGET`` of
  a core (measured: the CPU a reconcile takes); then the cycle is longer;
- every health tick reads ``current`` of ``CURRENT_SLICE`` running projects.

With up to a few hundred projects every check covers every project on every tick, as
before; with 10,000 the daemon's idle cost stays near what 1,000 cost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from reconciler.controller.observe import Fingerprints
from reconciler.core.rotation import Credit, Rotation
from reconciler.core.spec import ProjectId
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB

logger = logging.getLogger(__name__)


class Enqueue(Protocol):
    def __call__(self, project_id: ProjectId, *, routine: bool = False) -> None: ...


SIGN_SLICE = 200
CURRENT_SLICE = 200
FULL_EVERY = 10
FULL_BUDGET = 0.001  # of one core, averaged over the ticks


class SafetyNet:
    def __init__(
        self,
        *,
        ids: Callable[[], Iterable[ProjectId]],
        fingerprints: Fingerprints,
        db: StateDB,
        releases: ReleaseStore,
        enqueue: Enqueue,
        watched: bool,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ids = ids
        self.fingerprints = fingerprints
        self.db = db
        self.releases = releases
        self.enqueue = enqueue
        self.watched = watched
        self.interval = interval
        self._signs = Rotation()
        self._full = Rotation()
        self._credit = Credit()
        self._current_after = ""
        self._cost: float | None = None  # CPU seconds of one reconcile, averaged
        self._lock = threading.Lock()
        self.clock = clock
        # the full resync under way: (started, projects not reconciled yet, how many, skipped)
        self._sweep: tuple[float, set[ProjectId], int, int] | None = None

    def reconciled(self, cpu_seconds: float) -> None:
        """What one reconcile cost (its thread's CPU): the full share's measure."""
        with self._lock:
            before = self._cost
            self._cost = cpu_seconds if before is None else 0.9 * before + 0.1 * cpu_seconds

    def full_share(self, projects: int) -> float:
        """How many projects one tick reconciles in full (a fraction adds up over ticks)."""
        share = projects / FULL_EVERY
        with self._lock:
            cost = self._cost
        if cost:
            share = min(share, FULL_BUDGET * self.interval / cost)
        return share

    def tick(self) -> int:
        """The periodic resync: queue the slice's projects whose fingerprints moved, and
        this tick's share of full reconciles. Returns how many were queued."""
        keys: list[str] = sorted(set(self.ids()))
        count = SIGN_SLICE if self.watched else len(keys)
        queued = {p for p in self._signs.take(keys, count) if self.fingerprints.moved(ProjectId(p))}
        queued |= set(self._full.take(keys, self._credit.add(self.full_share(len(keys)))))
        for project_id in sorted(queued):
            self.enqueue(ProjectId(project_id), routine=True)  # a retry's backoff holds
        return len(queued)

    def check_current(self) -> None:
        """Queue running projects whose ``current`` is not the version they run (the next
        ``CURRENT_SLICE`` of them; from the first again at the end)."""
        rows = self.db.running(after=self._current_after, limit=CURRENT_SLICE)
        self._current_after = rows[-1][0] if len(rows) == CURRENT_SLICE else ""
        for project_id, version in rows:
            if not self.releases.points_at(project_id, version):
                self.enqueue(project_id, routine=True)

    def full(self, projects: set[ProjectId], *, changed_only: bool) -> int:
        """Queue every project, or (``changed_only``) those whose fingerprint moved since
        they converged: a project that did not is skipped (what runs is watched by the
        exit watch, the engines' events and the health tick, not by a resync). Returns how
        many were queued; the length is logged when the last of them is reconciled."""
        started = self.clock()
        queued = sorted(p for p in projects if not changed_only or self.fingerprints.moved(p))
        skipped = len(projects) - len(queued)
        with self._lock:
            self._sweep = (started, set(queued), len(projects), skipped)
        if not queued:
            self._log_sweep(started, len(projects), skipped)
        for project_id in queued:
            self.enqueue(project_id)
        return len(queued)

    def swept(self, project_id: ProjectId) -> None:
        """Tick a project off the full resync under way; log its length when it is done."""
        with self._lock:
            if self._sweep is None:
                return
            started, pending, total, skipped = self._sweep
            pending.discard(project_id)
            if pending:
                return
            self._sweep = None
        self._log_sweep(started, total, skipped)

    def _log_sweep(self, started: float, total: int, skipped: int) -> None:
        logger.info(
            "full resync: %d project%s in %.3f s%s",
            total, "" if total == 1 else "s", self.clock() - started,
            f" ({skipped} unchanged since they converged: not reconciled)" if skipped else "",
        )  # fmt: skip
