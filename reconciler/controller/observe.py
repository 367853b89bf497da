"""Observation: what desired state asks for and what really runs, as the planner's two views.

The desired file is read fresh on every reconcile; the spec in force is the file's when it is
valid, else the last good one (kept in a ``LastGood`` the controller writes explicitly, seeded
from the state database after a restart). Instances are what the runtimes report, never what
the database remembers: rows of instances that are gone are returned for the caller to forget.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from reconciler.core.kinds import OUT_OF_SERVICE, EdgeMode, InstanceRole, RuntimeName
from reconciler.core.plan import FLAP_WINDOW, DesiredView, ObservedInstance
from reconciler.core.spec import ProjectId, ProjectSpec
from reconciler.runtimes.base import PREVIEW_CONFIG, Instance, Runtime
from reconciler.stores.desired import DesiredFile, DesiredStore, LastGood
from reconciler.stores.facts import desired_view, spec_from_row
from reconciler.stores.observation import Observation, Observe
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import InstanceRow, ProjectRow, StateDB
from reconciler.stores.vault import Vault, revisions

Live = dict[str, tuple[Instance, Runtime]]  # by Instance.key


# sees each project's spec as it is read, with its desired file (the follower tracks it)
SpecListener = Callable[[ProjectId, "ProjectSpec | None", "Path | None"], None]


class Runtimes:
    """The runtime of each name, made on first use; ``on_new`` sees each one once (the daemon
    starts its engine watch there)."""

    def __init__(
        self,
        factory: Callable[[RuntimeName], Runtime],
        default: RuntimeName,
        *,
        on_new: Callable[[Runtime], None] = lambda _runtime: None,
    ) -> None:
        self._factory = factory
        self.default = default
        self.on_new = on_new
        self._made: dict[RuntimeName, Runtime] = {}
        self._lock = threading.Lock()

    def get(self, name: RuntimeName) -> Runtime:
        with self._lock:
            runtime = self._made.get(name)
            if runtime is None:
                runtime = self._made[name] = self._factory(name)
                new = True
            else:
                new = False
        if new:
            self.on_new(runtime)
        return runtime

    def name_for(self, spec: ProjectSpec | None) -> RuntimeName:
        if spec is not None and spec.runtime is not None:
            return spec.runtime
        return self.default

    def for_spec(self, spec: ProjectSpec | None) -> Runtime:
        return self.get(self.name_for(spec))

    def made(self) -> list[Runtime]:
        with self._lock:
            return list(self._made.values())


class RepairLog:
    """When each project's instance was last put back after dying, for the flap limit."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._times: dict[ProjectId, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def note(self, project_id: ProjectId) -> None:
        with self._lock:
            self._times.setdefault(project_id, collections.deque()).append(self.clock())

    def recent(self, project_id: ProjectId) -> int:
        now = self.clock()
        with self._lock:
            times = self._times.get(project_id)
            if not times:
                return 0
            while times and now - times[0] > FLAP_WINDOW:
                times.popleft()
            return len(times)


Sign = tuple[object, ...]


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class Fingerprints:
    """Cheap signs that a project's inputs moved since it last converged: its desired file's
    identity (a save replaces or rewrites it) and its release dir's listing (releases and
    the ``current`` and ``slot`` links are entries of it, so a hand change shows). The rows
    are the daemon's own writes and not inputs. The periodic resync queues only projects
    whose sign moved, and every project on a full resync; what runs is watched by the
    health poll and the engines' events, not by the resync."""

    def __init__(self, desired: DesiredStore, releases: ReleaseStore) -> None:
        self.desired = desired
        self.releases = releases
        self._converged: dict[ProjectId, Sign] = {}
        self._lock = threading.Lock()

    def sign(self, project_id: ProjectId) -> Sign:
        return (
            tuple(_identity(p) for p in self.desired.paths_for(project_id)),
            _identity(self.releases.project_dir(project_id)),
        )

    def rebased(self, project_id: ProjectId, sign: Sign) -> Sign:
        """``sign`` with the release dir as it is now (a reconcile's own steps changed it)."""
        return (sign[0], _identity(self.releases.project_dir(project_id)))

    def converged(self, project_id: ProjectId, done: bool, sign: Sign | None = None) -> None:
        """After a reconcile: remember the sign it left (converged), or forget it.
        ``sign``: taken already (a reconcile that changed nothing)."""
        sign = (sign or self.sign(project_id)) if done else None
        with self._lock:
            if sign is None:
                self._converged.pop(project_id, None)
            else:
                self._converged[project_id] = sign

    def moved(self, project_id: ProjectId) -> bool:
        sign = self.sign(project_id)
        with self._lock:
            return self._converged.get(project_id) != sign


def instance_from_row(row: InstanceRow) -> Instance:
    return Instance(
        ProjectId(row.project),
        row.hash,
        row.runtime,
        row.port,
        row.startedAt,
        pid=row.pid,
        pid_start=row.pidStart,
        container_id=row.containerId,
        config=row.config,
    )


@dataclass(frozen=True)
class Facts(Observation):
    """Everything one reconcile of one project knows before it plans: the observation, with
    the instances its runtimes really run."""

    live: Live = field(default_factory=dict)  # instances that run, draining ones included
    gone: tuple[InstanceRow, ...] = ()  # database rows of instances that no longer run
    vault: Vault | None = None  # the values of the secrets the spec refers to

    @property
    def digest(self) -> str | None:
        return self.view.digest if self.view else None


class FactFinder:
    def __init__(
        self,
        *,
        desired: DesiredStore,
        db: StateDB,
        releases: ReleaseStore,
        runtimes: Runtimes,
        last_good: LastGood,
        repairs: RepairLog,
        edge: EdgeMode = EdgeMode.OFF,
        on_spec: SpecListener | None = None,
        vault: Vault | None = None,
    ) -> None:
        self.on_spec = on_spec  # sees each project's spec as read (the follower tracks it)
        self.desired = desired
        self.db = db
        self.releases = releases
        self.runtimes = runtimes
        self.last_good = last_good
        self.repairs = repairs
        self.edge = edge
        self.vault = vault
        self._observe = Observe(db, desired, releases, vault)

    def view(self, desired: DesiredFile | None, spec: ProjectSpec | None) -> DesiredView | None:
        source = None
        if desired is not None and spec is not None and spec.production.follow:
            source = self.db.source(desired.project_id)
        return desired_view(
            desired, spec, edge=self.edge, default_runtime=self.runtimes.default, source=source,
            secrets=revisions(spec, self.vault),
        )  # fmt: skip

    def desired_now(self, project_id: ProjectId) -> DesiredView | None:
        """What the desired file asks for now (a read; remembers nothing)."""
        desired = self.desired.read(project_id)
        return self.view(desired, self.last_good.in_force(desired) if desired else None)

    def live(
        self,
        project_id: ProjectId,
        spec: ProjectSpec | None,
        rows: list[InstanceRow] | None = None,
    ) -> tuple[Live, list[InstanceRow]]:
        """Instances that really run (asking every runtime that may hold one), and the database
        rows of instances that do not (``rows``: the project's instance rows, if read)."""
        if rows is None:
            rows = self.db.instances(project_id)
        names = {self.runtimes.name_for(spec)} | {r.runtime for r in rows}
        alive: Live = {}
        for name in sorted(names):
            runtime = self.runtimes.get(name)
            for instance in runtime.observe(project_id):
                if instance.config != PREVIEW_CONFIG:  # a preview's: not production's to plan
                    alive[instance.key] = (instance, runtime)
        return alive, [r for r in rows if r.key not in alive]

    def observe(self, project_id: ProjectId) -> Facts | None:
        """None when nothing is known of the project: no file, no row, no instance."""
        found: dict[str, tuple[Live, list[InstanceRow]]] = {}

        def instances(spec: ProjectSpec | None, rows: list[InstanceRow]) -> list[ObservedInstance]:
            found["live"] = self.live(project_id, spec, rows)
            live = found["live"][0]
            out = {r.key: r.role for r in rows if r.role in OUT_OF_SERVICE}  # planned around
            return [
                ObservedInstance(
                    i.hash,
                    i.port,
                    key in out,
                    i.config,
                    i.asleep,
                    standby=out.get(key) == InstanceRole.STANDBY,
                )
                for key, (i, _runtime) in live.items()
            ]

        seen = self._observe(
            project_id,
            edge=self.edge,
            default_runtime=self.runtimes.default,
            instances=instances,
            last_good=self._last_good,
            recent_repairs=self.repairs.recent(project_id),
        )
        if not seen.known:
            return None
        if self.on_spec is not None:
            path = seen.desired.path if seen.desired is not None else None
            self.on_spec(project_id, seen.spec, path)
        live, gone = found["live"]
        taken = {f.name: getattr(seen, f.name) for f in fields(Observation)}
        return Facts(**taken, live=live, gone=tuple(gone), vault=self.vault)

    def _last_good(self, project_id: ProjectId, row: ProjectRow | None) -> ProjectSpec | None:
        """The last good spec in memory; after a restart, before a valid read, the row's."""
        if self.last_good.get(project_id) is None and (from_row := spec_from_row(row)):
            self.last_good.seed(project_id, from_row)
        return self.last_good.get(project_id)
