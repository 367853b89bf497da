"""Adoption at startup: what outlived the previous daemon is recorded as it really is (its
role from the project's row; a draining instance handed to the drainer), records of what is
gone are forgotten, a lost project row is rebuilt, and port reservations nothing holds are
freed."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from reconciler.controller.rebuild import rebuild_record
from reconciler.controller.recorder import Recorder
from reconciler.core.errors import TransientError
from reconciler.core.kinds import InstanceRole

if TYPE_CHECKING:
    from reconciler.controller.loop import Controller

logger = logging.getLogger(__name__)


def adopt(controller: Controller) -> None:
    """At startup: record what really runs and free port reservations nothing holds."""
    keep_ports: set[int] = set()
    for project_id in sorted(controller.known_projects()):
        desired = controller.desired.read(project_id)
        spec = controller.last_good.in_force(desired) if desired else None
        row = controller.db.project(project_id)
        try:
            alive, gone = controller.facts.live(project_id, spec)
        except TransientError as exc:
            logger.warning("%s: cannot observe instances yet: %s", project_id, exc)
            keep_ports |= {
                r.port for r in controller.db.instances(project_id) if r.port is not None
            }
            continue
        if row is None and rebuild_record(
            controller.config, controller.db, controller.releases, project_id, spec, alive
        ):
            row = controller.db.project(project_id)
        recorder = Recorder(controller.db, project_id, digest=None)
        for stale in gone:
            recorder.forget_instance(stale.key)
        draining = {
            r.key for r in controller.db.instances(project_id) if r.role == InstanceRole.DRAINING
        }
        for key, (instance, runtime) in alive.items():
            if key in draining and controller.at_edge is not None:
                controller.at_edge.drainer.drain(instance, runtime, after=0)
                continue
            active = row is not None and row.productionHash == instance.hash
            recorder.put_instance(
                instance, InstanceRole.ACTIVE if active else InstanceRole.CANDIDATE
            )
            if instance.port is not None:
                keep_ports.add(instance.port)
            logger.info("%s: adopted %s on port %s", project_id, key, instance.port)
    freed = controller.ports.release_unused(keep_ports)
    if freed:
        logger.info("released %d port reservation(s) nothing holds", len(freed))
