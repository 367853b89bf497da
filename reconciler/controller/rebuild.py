"""A project's record rebuilt from what is on disk and what runs, when the state database
has none (it was lost, or restored from an older backup): the version ``current`` names or
the one instance that runs, the newest release, the generation last built and a failure
(both kept beside the releases, ``record.json``), the address it is served at. With that
record the planner sees a converged (or failed) project, so nothing is stopped as a stray,
nothing is rebuilt and no failed start is tried again; without it, every site would be torn
down and built again.
"""

from __future__ import annotations

import json
import logging

from reconciler.controller.observe import Live
from reconciler.core.config import Config
from reconciler.core.kinds import ServeMode, Status
from reconciler.core.spec import ProjectId, ProjectSpec
from reconciler.core.timeutil import utcnow
from reconciler.stores.facts import serve_mode
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB

logger = logging.getLogger(__name__)


def rebuild_record(
    config: Config,
    db: StateDB,
    releases: ReleaseStore,
    project_id: ProjectId,
    spec: ProjectSpec | None,
    alive: Live,
) -> bool:
    """Write the project's row from the disk and the live instances; True when it did."""
    if spec is None:
        return False
    versions = releases.versions(project_id)
    kept = releases.kept_record(project_id)  # the last build's generation, a failure
    failed = kept.get("failedDigest")
    error = kept.get("productionError")
    failed = failed if isinstance(failed, str) else None
    error = error if isinstance(error, str) and failed else None
    built = kept.get("observedGeneration")
    current = releases.current(project_id)
    running = sorted({instance.hash for instance, _runtime in alive.values()})
    serving = current if current is not None else (running[0] if len(running) == 1 else None)
    if serving is None or not versions:
        if failed is None:
            return False
        db.update_project(project_id, productionStatus=Status.FAILED,  # a first deploy failed
                          observedGeneration=built if isinstance(built, int) else None,
                          lastGoodSpec=spec.model_dump_json(), failedDigest=failed,
                          productionError=error)  # fmt: skip
        logger.info("%s: no record in the state database; rebuilt its failure from disk",
                    project_id)  # fmt: skip
        return True
    latest = versions[0].hash
    mode = serve_mode(
        config.edge, spec, config.default_runtime,
        runs_app=releases.runs_app(project_id, serving),
    )  # fmt: skip
    port = None
    if mode == ServeMode.PORT:
        ports = [i.port for i, _r in alive.values() if i.hash == serving and i.port is not None]
        port = ports[0] if ports else None
    else:
        site = db.site(project_id)
        port = site.publicPort if site is not None else None
    live = port is not None and spec.production.state == "running"
    source = releases.source_of(project_id, latest)  # a git build: its commit is its revision
    if source is not None and not isinstance(source.get("commit"), str):
        source = None
    status = Status.RUNNING if live else Status.STOPPED
    db.update_project(
        project_id,
        productionStatus=Status.FAILED if failed else status,
        productionHash=serving,
        productionPort=port if live else None,
        productionUrl=config.site_url(port, spec.domains) if live else None,
        productionStartedAt=utcnow() if live else None,
        latestHash=latest,
        observedGeneration=built
        if isinstance(built, int)
        else releases.generation(project_id, latest),
        lastGoodSpec=spec.model_dump_json(),
        latestSource=json.dumps({"rev": source["commit"], **source}) if source else None,
        failedDigest=failed,
        productionError=error,
    )
    logger.info(
        "%s: no record in the state database; rebuilt it from disk (serving %s%s)",
        project_id,
        serving,
        f" on port {port}" if live else ", not running",
    )
    return True
