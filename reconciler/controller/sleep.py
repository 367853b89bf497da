"""Sleeping sites: an idle dynamic site is stopped, and its next request starts it again.

``Sleeper`` keeps, for each project that may sleep (its ``sleep.after``, else the daemon's
``--sleep-after``; a dynamic or service site at the edge), its address and when it last
became awake; ``Traffic`` says when its address was last asked for. A periodic ``tick``
queues each running site idle past its limit; its reconcile sees ``idle`` and plans ``Sleep``.

A request for a sleeping site reaches ``wake`` (through the daemon's waker socket, see
``edge.config``): the project is marked ``woken`` and queued, and the request waits until a
reconcile leaves it running (answered 204: the edge lets the request through), failed or
timed out (503 with ``Retry-After``). Every request that arrives meanwhile joins the same
wait: one start, however many requests.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from reconciler.core.kinds import ServeMode, Status
from reconciler.core.plan import SLEEPS, mode_of
from reconciler.core.spec import ProjectId, ProjectSpec
from reconciler.edge.traffic import Traffic
from reconciler.stores.observation import Observation
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Observation)
RETRY_AFTER = 5  # seconds a client is told to wait after a wake that failed


@dataclass
class Napper:
    """One project that may sleep."""

    after: float
    port: int | None
    domains: tuple[str, ...]
    status: Status | None = None
    awake_since: float = 0.0  # when it last became running (or the daemon started)


@dataclass
class Waiting:
    """The requests waiting for one project to wake."""

    since: float
    done: threading.Event = field(default_factory=threading.Event)
    answer: tuple[int, str] = (503, "")


@dataclass(frozen=True)
class Answer:
    status: int
    message: str = ""
    retry_after: int | None = None


class Sleeper:
    def __init__(
        self,
        traffic: Traffic | None,
        *,
        default_after: float,
        wake_timeout: float,
        enqueue: Callable[[ProjectId], None],
        on_wake: Callable[[float, bool], None] = lambda _seconds, _ok: None,
        resolve: Callable[[str, str], ProjectId | None] = lambda _what, _key: None,
        family: Callable[[ProjectId], tuple[str, int] | None] = lambda _project: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.traffic = traffic  # None: no access log, so no way to tell idle: nothing sleeps
        self.default_after = default_after
        self.wake_timeout = wake_timeout
        self.enqueue = enqueue
        self.on_wake = on_wake
        self.resolve = resolve  # the site at a port or host, before its first reconcile
        self.family = family  # a branch preview's parent, and how many of them may be awake
        self._forced: set[ProjectId] = set()  # past their family's cap: put to sleep
        self.clock = clock
        self._nappers: dict[ProjectId, Napper] = {}
        self._by_key: dict[str, ProjectId] = {}  # "port:3001", "host:www.example.com"
        self._waiting: dict[ProjectId, Waiting] = {}
        self._lock = threading.Lock()

    def after(self, spec: ProjectSpec | None, mode: ServeMode | None) -> float:
        """Seconds without a request before the project sleeps (0: never)."""
        if spec is None or mode not in SLEEPS or self.traffic is None:
            return 0.0
        return spec.sleep.after if spec.sleep.after is not None else self.default_after

    # -- what reconciles tell and ask --------------------------------------------------------

    def note(
        self,
        project_id: ProjectId,
        spec: ProjectSpec | None,
        mode: ServeMode | None,
        port: int | None,
    ) -> None:
        """A reconcile read the project's spec: remember whether and when it may sleep."""
        after = self.after(spec, mode)
        with self._lock:
            napper = self._nappers.get(project_id)
            if after <= 0 or spec is None:
                # one that sleeps now stays known until it wakes (its requests find it)
                if napper is not None and napper.status != Status.SLEEPING:
                    self._forget(project_id, napper)
                elif napper is not None:
                    napper.after = 0.0
                return
            domains = tuple(spec.domains)
            if napper is None:
                napper = Napper(after, None, (), awake_since=self.clock())
                self._nappers[project_id] = napper
            napper.after = after
            if (napper.port, napper.domains) != (port, domains):
                self._forget_keys(napper)
                napper.port, napper.domains = port, domains
                self._by_key.update(self._keys(project_id, napper))

    def idle(self, project_id: ProjectId) -> bool:
        """No request for its ``after`` (and none waits)."""
        with self._lock:
            napper = self._nappers.get(project_id)
            if napper is None or napper.after <= 0 or project_id in self._waiting:
                return False
            if project_id in self._forced:
                return True
        assert self.traffic is not None
        self.traffic.poll()
        return self.clock() - self._latest(napper) >= napper.after

    def woken(self, project_id: ProjectId) -> bool:
        """A request waits for it, or it may no longer sleep."""
        with self._lock:
            napper = self._nappers.get(project_id)
            return project_id in self._waiting or napper is None or napper.after <= 0

    def reconciled(self, project_id: ProjectId, status: Status | None, error: str | None) -> None:
        """A reconcile left the project in ``status``: answer the requests waiting for it
        when that is an outcome (running, or a failure); a deploy or a sleep that was under
        way when they came is not: the next reconcile wakes it."""
        now = self.clock()
        with self._lock:
            napper = self._nappers.get(project_id)
            if napper is not None:
                if status == Status.RUNNING and napper.status != Status.RUNNING:
                    napper.awake_since = now
                napper.status = status
                if status != Status.RUNNING:
                    self._forced.discard(project_id)
                if napper.after <= 0 and status != Status.SLEEPING:
                    self._forget(project_id, napper)
            waiting = self._waiting.get(project_id)
            if waiting is None or status in (Status.SLEEPING, Status.QUEUED, Status.BUILDING):
                return
            del self._waiting[project_id]
        if status == Status.RUNNING:
            waiting.answer = (204, "")
        else:
            why = error.splitlines()[0] if error else f"it is {status or 'gone'}"
            waiting.answer = (503, f"the site could not be woken: {why}")
        waiting.done.set()
        self.on_wake(now - waiting.since, status == Status.RUNNING)

    # -- the periodic check and the waker ----------------------------------------------------

    def tick(self) -> int:
        """Queue every running site idle past its limit; returns how many."""
        if self.traffic is None:
            return 0
        self.traffic.poll(force=True)
        now = self.clock()
        with self._lock:
            nappers = [
                (p, n) for p, n in self._nappers.items() if n.status == Status.RUNNING and n.after
            ]
            waiting = set(self._waiting)
        due: list[ProjectId] = []
        families: dict[str, tuple[int, list[tuple[float, ProjectId]]]] = {}
        for project_id, napper in nappers:
            if project_id in waiting:
                continue
            latest = self._latest(napper)
            if now - latest >= napper.after:
                due.append(project_id)
            elif (family := self.family(project_id)) is not None:
                families.setdefault(family[0], (family[1], []))[1].append((latest, project_id))
        for cap, awake in families.values():  # past the cap: the least recently asked for
            for _latest, project_id in sorted(awake)[: max(0, len(awake) - cap)]:
                with self._lock:
                    self._forced.add(project_id)
                due.append(project_id)
        for project_id in due:
            self.enqueue(project_id)
        return len(due)

    def wake(self, what: str, key: str) -> Answer:
        """A request for a sleeping site (``what``: port or host): wait until it runs."""
        project_id = self._by_key.get(f"{what}:{key}") or self.resolve(what, key)
        if project_id is None:  # no site here (any more): the routes say what is served
            return Answer(204)
        with self._lock:
            waiting = self._waiting.get(project_id)
            if waiting is None:
                waiting = self._waiting[project_id] = Waiting(self.clock())
                logger.info("%s: a request wakes it", project_id)
        self.enqueue(project_id)
        if not waiting.done.wait(self.wake_timeout):
            with self._lock:
                if self._waiting.get(project_id) is waiting:
                    del self._waiting[project_id]
                    self.on_wake(self.clock() - waiting.since, False)
            return Answer(
                503,
                f"{project_id} is starting and did not answer within "
                f"{self.wake_timeout:g} s; try again shortly",
                RETRY_AFTER,
            )
        status, message = waiting.answer
        return Answer(status, message, RETRY_AFTER if status >= 500 else None)

    def close(self) -> None:
        """The daemon stops: every waiting request is answered (503)."""
        if self.traffic is not None:
            self.traffic.close()
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for entry in waiting.values():
            entry.answer = (503, "the daemon is restarting; try again shortly")
            entry.done.set()

    def _latest(self, napper: Napper) -> float:
        """When the site was last asked for, or became awake, whichever came later."""
        assert self.traffic is not None
        seen = self.traffic.last(napper.port, napper.domains)
        return max(napper.awake_since, seen if seen is not None else 0.0)

    # -- keys --------------------------------------------------------------------------------

    @staticmethod
    def _keys(project_id: ProjectId, napper: Napper) -> dict[str, ProjectId]:
        keys = {f"host:{d}": project_id for d in napper.domains}
        if napper.port is not None:
            keys[f"port:{napper.port}"] = project_id
        return keys

    def _forget_keys(self, napper: Napper) -> None:
        for key in self._keys(ProjectId("-"), napper):
            self._by_key.pop(key, None)

    def _forget(self, project_id: ProjectId, napper: Napper) -> None:
        self._forget_keys(napper)
        del self._nappers[project_id]


def observed_for_sleep(sleeper: Sleeper | None, facts: F) -> F:
    """``facts`` with what the sleeper knows: whether the site is idle past its limit (asked
    only of a running one) and whether a request waits for it."""
    if sleeper is None:
        return facts
    observed, view = facts.observed, facts.view
    version = observed.active_hash or observed.latest_hash
    mode = mode_of(view.mode, version, observed.apps) if view is not None else None
    sleeper.note(facts.project_id, facts.spec, mode, observed.public_port)
    idle = observed.status == Status.RUNNING and sleeper.idle(facts.project_id)
    woken = observed.status == Status.SLEEPING and sleeper.woken(facts.project_id)
    if not idle and not woken:
        return facts
    changed = dataclasses.replace(observed, idle=idle, woken=woken)
    return dataclasses.replace(facts, observed=changed)


def tell_sleeper(
    sleeper: Sleeper | None, db: StateDB, releases: ReleaseStore, facts: Observation, ran: bool
) -> None:
    """After a reconcile: the status it left (read again when steps ran), and what may sleep
    now (a first build tells whether its release runs as an app)."""
    if sleeper is None:
        return
    row = db.project(facts.project_id) if ran else facts.row
    if ran and facts.view is not None and row is not None and row.productionHash:
        version = row.productionHash
        apps = frozenset({version}) if releases.runs_app(facts.project_id, version) else None
        mode = mode_of(facts.view.mode, version, apps or frozenset())
        sleeper.note(facts.project_id, facts.spec, mode, row.productionPort)
    status = Status(row.productionStatus) if row is not None else None
    sleeper.reconciled(facts.project_id, status, row.productionError if row else None)
