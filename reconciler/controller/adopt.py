"""Adoption at startup: what outlived the previous daemon is recorded as it really is (its
role from the project's row; a draining instance handed to the drainer), records of what is
gone are forgotten, a lost project row is rebuilt, and port reservations nothing holds are
freed."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.controller.drain import Drainer
from reconciler.controller.observe import FactFinder
from reconciler.controller.rebuild import rebuild_record
from reconciler.controller.recorder import Recorder
from reconciler.core.config import Config
from reconciler.core.errors import TransientError
from reconciler.core.kinds import OUT_OF_SERVICE, InstanceRole
from reconciler.core.spec import ProjectId
from reconciler.stores.desired import DesiredStore, LastGood
from reconciler.stores.ports import PortAllocator
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Adoption:
    config: Config
    desired: DesiredStore
    db: StateDB
    releases: ReleaseStore
    ports: PortAllocator
    facts: FactFinder
    last_good: LastGood
    drainer: Drainer | None  # None: without the edge nothing drains

    def run(self, projects: Iterable[ProjectId]) -> None:
        """Record what really runs and free port reservations nothing holds."""
        keep_ports: set[int] = set()
        for project_id in sorted(projects):
            keep_ports |= self._adopt(project_id)
        freed = self.ports.release_unused(keep_ports)
        if freed:
            logger.info("released %d port reservation(s) nothing holds", len(freed))

    def _adopt(self, project_id: ProjectId) -> set[int]:
        """One project's instances recorded; the ports they hold."""
        desired = self.desired.read(project_id)
        spec = self.last_good.in_force(desired) if desired else None
        row = self.db.project(project_id)
        try:
            alive, gone = self.facts.live(project_id, spec)
        except TransientError as exc:
            logger.warning("%s: cannot observe instances yet: %s", project_id, exc)
            return {r.port for r in self.db.instances(project_id) if r.port is not None}
        if row is None and rebuild_record(
            self.config, self.db, self.releases, project_id, spec, alive
        ):
            row = self.db.project(project_id)
        recorder = Recorder(self.db, project_id, digest=None)
        for stale in gone:
            recorder.forget_instance(stale.key)
        rows = self.db.instances(project_id)
        draining = {r.key for r in rows if r.role in OUT_OF_SERVICE}  # a restart ends a window
        held: set[int] = set()
        for key, (instance, runtime) in alive.items():
            if key in draining and self.drainer is not None:
                self.drainer.drain(instance, runtime, after=0)
                continue
            active = row is not None and row.productionHash == instance.hash
            recorder.put_instance(
                instance, InstanceRole.ACTIVE if active else InstanceRole.CANDIDATE
            )
            if instance.port is not None:
                held.add(instance.port)
            logger.info("%s: adopted %s on port %s", project_id, key, instance.port)
        return held
