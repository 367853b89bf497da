"""An edge on another node of a swarm (``reconciler edge-node``): a Caddy of its own that
serves every service the daemon runs on the swarm, at the public port (and domains) the
daemon gave it, routing round robin to its tasks on every node, exactly as the daemon's own
edge does (the same route files and configuration). It reads the swarm through the node's
own engine (a manager) and never changes a service: deploys, rollbacks and placement stay
the daemon's. So requests through any node's edge are answered, and a node that is lost
loses only the requests in flight to it.

What it serves comes from the services' labels (``reconciler.port``, ``reconciler.domains``,
written by the daemon); where, from the swarm's tasks (the engine's events, and every
service's tasks compared every 2 s); its own data dir holds its route files and its state.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from reconciler.core.config import Config
from reconciler.core.errors import TransientError
from reconciler.core.kinds import RuntimeName, ServeMode
from reconciler.core.spec import InvalidProjectId, ProjectId, check_hostname, check_project_id
from reconciler.daemon.parts import make_edge, make_runtime_factory
from reconciler.edge.config import FANOUT, Site
from reconciler.runtimes.docker.labels import LABEL_PORT, LABEL_PROJECT, MANAGED_BY, MANAGER
from reconciler.runtimes.docker.services import LABEL_DOMAINS
from reconciler.runtimes.docker.swarm import SwarmRuntime
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB

logger = logging.getLogger(__name__)
POLL = 2.0  # seconds between two full looks when no event came


class EdgeNode:
    def __init__(self, config: Config) -> None:
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.config = config
        self.db = StateDB(config.state_db)
        self.releases = ReleaseStore(config.releases_dir)
        self.edge = make_edge(config, self.db)
        swarm = make_runtime_factory(config, self.releases)(RuntimeName.SWARM)
        assert isinstance(swarm, SwarmRuntime)
        self.swarm = swarm
        self.changed = threading.Event()
        self.served: set[ProjectId] = set()

    def sites(self) -> list[Site]:
        """Every service of the daemon's with a public port in this edge's range."""
        services = self.swarm.api.services(filters={"label": f"{MANAGED_BY}={MANAGER}"})
        return [site for service in services if (site := self._site(service)) is not None]

    def _site(self, service: dict[str, Any]) -> Site | None:
        labels = (service.get("Spec") or {}).get("Labels") or {}
        span = self.config.port_range
        try:
            project_id = check_project_id(str(labels.get(LABEL_PROJECT, "")))
            port = int(labels.get(LABEL_PORT, ""))
            domains = tuple(
                check_hostname(d) for d in str(labels.get(LABEL_DOMAINS, "")).split(",") if d
            )
        except (InvalidProjectId, ValueError):
            return None
        if not span.first <= port <= span.last:
            return None
        return Site(project_id, port, ServeMode.SERVICE, domains=domains, fanout=FANOUT)

    def sync(self) -> int:
        """Route every service's port to its tasks that serve; stop serving the ones gone.
        Returns how many it serves."""
        wanted: set[ProjectId] = set()
        for site in self.sites():
            tasks = self.swarm.tasks(site.project_id)
            upstreams = tasks.upstreams if tasks is not None else ()
            if self.releases.route_tasks(site.project_id, upstreams, site.fanout):
                logger.info("%s: port %s to %s", site.project_id, site.port,
                            ", ".join(upstreams) or "no task")  # fmt: skip
            self.edge.put(site)
            wanted.add(site.project_id)
        for gone in self.served - wanted:
            logger.info("%s: no service any more; not served", gone)
            self.edge.drop(gone)
        self.served = wanted
        return len(wanted)

    def run(self, stop: threading.Event) -> int:
        self.edge.start()
        self.swarm.watch(lambda _project: self.changed.set(), stop)
        span = self.config.port_range
        logger.info("edge node: serving the swarm's services (ports %s-%s)", span.first, span.last)
        try:
            while not stop.is_set():
                try:
                    self.sync()
                except (TransientError, OSError) as exc:
                    logger.warning("edge node: %s (tried again)", exc)
                except Exception:
                    logger.exception("edge node: sync failed (tried again)")
                self.changed.wait(POLL)
                self.changed.clear()
        finally:
            self.edge.stop()
            self.swarm.close()
            self.db.close()
        return 0
