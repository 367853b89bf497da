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
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable

from reconciler.controller import Controller
from reconciler.controller.activate import AtEdge
from reconciler.controller.drain import Drainer
from reconciler.controller.metrics import DaemonMetrics
from reconciler.controller.observe import Runtimes
from reconciler.controller.recorder import Listeners
from reconciler.core.config import Config
from reconciler.core.kinds import EdgeMode, RuntimeName
from reconciler.core.redact import redact
from reconciler.core.spec import NotifyTarget, ProjectId
from reconciler.daemon.down import at_exit, down_mark
from reconciler.daemon.lifecycle import Lifecycle, Part, Step
from reconciler.daemon.notifications import SECRET_NAME as NOTIFY_SECRET
from reconciler.daemon.notifications import Notifications
from reconciler.daemon.parts import (
    each,
    make_config_follower,
    make_edge,
    make_previews,
    make_runtime_factory,
    make_sleeper,
    make_wakers,
    make_watcher,
    raise_open_files,
    secrets_changed,
    served_sites,
)
from reconciler.daemon.samples import INTERVAL as SAMPLES
from reconciler.daemon.samples import Sampler, access_log, edge_socket
from reconciler.daemon.schedule import Job, Schedule
from reconciler.daemon.sdnotify import Notifier
from reconciler.edge.routes import PreviewLinks
from reconciler.runtimes.base import Leftovers, Runtime
from reconciler.runtimes.systemd import SiteUnits
from reconciler.sources.follow import Follower
from reconciler.sources.hooks import make_secret
from reconciler.sources.watch import project_for
from reconciler.stores.desired import LastGood
from reconciler.stores.opened import open_stores
from reconciler.stores.ports import PortAllocator, SiteAllocator

logger = logging.getLogger(__name__)

USAGE_INTERVAL = 30.0  # seconds between samples of what each serving instance uses


class Daemon:
    """The composition root: makes every part from a ``Config`` (each gets its collaborators
    when it is made), starts them in order and stops them in reverse (``Lifecycle``)."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.stores = stores = open_stores(config, applies=True)
        self.db, self.desired, self.releases = stores.db, stores.desired, stores.releases
        self.config_repo = stores.config_repo
        # --site-users: process-runtime instances as reconciler-site@ units (one per daemon)
        self.site_units = SiteUnits(config.data_dir) if config.site_users else None
        self.ports = PortAllocator(self.db, config.port_range, bind_host=config.bind_host)
        self.edge = make_edge(config, self.db) if config.edge != EdgeMode.OFF else None
        self.sites = SiteAllocator(
            self.db,
            config.port_range,
            config.internal_port_range,
            records=self.releases.root,
            bind_host=config.bind_host,
            public_held=self.edge.held_ports if self.edge is not None else None,
        )
        self.metrics = DaemonMetrics()
        self.last_good = LastGood(config.default_runtime)
        self._secret_lock = threading.Lock()
        self.notifications = Notifications(
            self.db,
            self.last_good.get,
            self._notify_secret,
            defaults=[NotifyTarget(url=url) for url in config.notify_urls],
            attempts=config.notify_attempts,
            timeout=config.notify_timeout,
            backoff=config.notify_backoff,
        )
        self.config_follower = make_config_follower(config, self.config_repo, self._desired_changed)
        self.previews = make_previews(config, stores, self._enqueue, lambda: self.engines.runtimes)
        self.follower = Follower(
            self.db,
            self._enqueue,
            nudge_dir=config.nudge_dir,
            poll=config.git_poll,
            default_runtime=config.default_runtime,
            watch=config.watch,
            on_check=self.metrics.source_checked,
            on_desired_nudge=self.config_follower.nudge if self.config_follower else None,
            on_nudge=self.previews.nudge,
            on_secrets=secrets_changed(self.last_good, self._enqueue),
        )
        self.engines = Engines(
            make_runtime_factory(config, self.releases, self.site_units),
            config.default_runtime,
            self._engine_event,
        )
        self.controller = self._controller()
        self.metrics.queue(self.controller.queue.depth)
        self.watcher = make_watcher(config, self.config_follower, self._enqueue)
        self.stop_requested = threading.Event()
        self.ready = threading.Event()
        self.pulse_interval = 2.0
        self.pulse_stale = max(10.0, 3 * self.pulse_interval)
        self.last_pulse = clock()
        self._metrics_put: bytes | None = None
        self._initial: set[ProjectId] = set()
        self.notifier = Notifier()
        self.lifecycle = Lifecycle(self._parts())

    def _controller(self) -> Controller:
        at_edge = None
        if self.edge is not None:
            c, edge = self.config, self.edge.settings
            drainer = Drainer(self.db, drain=c.drain, grace=c.stop_grace, clock=self.clock)
            previews = PreviewLinks.of(edge)
            sleeper = make_sleeper(c, self.edge, self._enqueue, self.metrics.woke,
                                   self.previews.family)  # fmt: skip
            at_edge = AtEdge(self.edge, self.sites, drainer, edge.control_port, previews, sleeper)
        return Controller(
            self.config,
            listener=Listeners([self.metrics, self.notifications]),
            on_reconciled=self.metrics.reconciled,
            on_spec=each(self.follower.track, self.previews.track),
            last_good=self.last_good,
            desired=self.desired,
            db=self.db,
            releases=self.releases,
            ports=self.ports,
            runtimes=self.engines.runtimes,
            at_edge=at_edge,
            clock=self.clock,
        )

    def _parts(self) -> list[Part]:
        """In the order they start (they stop in reverse)."""
        parts: list[Part] = [self.engines]
        if self.edge is not None:
            parts.append(self.edge)
        if self.controller.at_edge is not None:
            parts.append(self.controller.at_edge.drainer)
        parts.append(Step("adoption", self._adopt))
        parts += [self.controller, self.follower, self.previews, self.notifications]
        parts += self._waker()
        parts += [part for part in (self.config_follower, self.watcher) if part is not None]
        parts.append(Schedule(self._jobs()))
        return parts

    def _jobs(self) -> list[Job]:
        c = self.config
        return [
            Job("resync", self.periodic_resync, c.resync_interval, max(1, int(c.resync_interval))),
            Job("health", self.controller.check_health, c.health_interval,
                max(1, int(c.health_interval))),
            Job("pulse", self.pulse, self.pulse_interval, 1),
            Job("logs", self.controller.rotate_logs, 60, 60),
            Job("usage", self.controller.sample_usage, USAGE_INTERVAL, int(USAGE_INTERVAL)),
            Job("retention", self.db.prune, 600, 600),
            Job("samples", (sampler := Sampler(self.db, edge_socket(c), access_log=access_log(c)))
                .tick, SAMPLES, 60, close=sampler.close),
            Job("tally", sampler.tally, 5.0, 5),
            *([Job("sleep", wakers.tick, 2.0, 2)] if (wakers := self.wakers) else []),
        ]  # fmt: skip

    def _waker(self) -> list[Part]:
        """Sleeping sites and previews of app versions, woken through the waker's socket."""
        at_edge = self.controller.at_edge
        self.wakers = make_wakers(self.config, at_edge, self.controller.runtimes, self.releases,
                                  self.db, self.last_good.get) if at_edge else None  # fmt: skip
        return [self.wakers] if self.wakers is not None else []

    def start(self) -> None:
        if self.config_repo is not None and self.config_follower is not None:
            self.config_repo.save_settings()
            logger.info(
                "desired state from %s (%s)", redact(self.config_repo.url), self.config_repo.ref
            )
            self.config_follower.first_sync(self.stop_requested)
        raise_open_files()
        self._recover()
        self.lifecycle.start()
        self.resync()
        self.ready.set()
        logger.info(
            "reconciler daemon started: desired=%s data=%s ports=%s runtime=%s",
            self.config.desired_dir,
            self.config.data_dir,
            self.config.port_range,
            self.config.default_runtime,
        )

    def _recover(self) -> None:
        """What a previous daemon left: its builds, staging dirs, open jobs, reservations."""
        down_mark(self.config).unlink(missing_ok=True)  # `reconciler run` after a down
        leftovers = self._leftovers()
        orphans = leftovers.stop_leftover_builds() if leftovers is not None else []
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
        else:
            self.db.set_edge(EdgeMode.OFF, "off", pid=None, version=None, sites=0, error=None)

    def _adopt(self) -> None:
        """Record what really runs (the edge serves already), then stop what no record names."""
        self.controller.adopt()
        leftovers = self._leftovers()
        strays = leftovers.stop_strays() if leftovers is not None else []
        if strays:
            logger.warning("stopped instance processes no record names: %s", ", ".join(strays))
        self._initial = self.controller.known_projects()

    def _leftovers(self) -> Leftovers | None:
        """The runtime whose processes outlive a killed daemon (the process runtime)."""
        runtime = self.controller.runtimes.get(RuntimeName.PROCESS)
        return runtime if isinstance(runtime, Leftovers) else None

    def _enqueue(self, project: ProjectId, delay: float = 0.0) -> None:
        self.controller.enqueue(project, delay)

    def _engine_event(self, project: ProjectId | None) -> None:
        if project is None:
            self.resync()
        else:
            self.controller.enqueue(project)

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
            text = self.metrics.exposition()
            if text is not self._metrics_put:
                self.db.put_metrics(text)
                self._metrics_put = text
        self.last_pulse = self.clock()

    def healthy(self) -> bool:
        fresh = self.clock() - self.last_pulse < self.pulse_stale
        return fresh and not self.controller.hung()

    def first_pass_done(self) -> bool:
        return all(self.controller.workers.handled(key) > 0 for key in self._initial)

    def status_line(self) -> str:
        counts = self.db.status_counts()
        busy = counts.get("queued", 0) + counts.get("building", 0)
        line = (
            f"{counts.get('running', 0)} running, {counts.get('failed', 0)} failed, "
            f"{busy} deploying, {counts.get('error', 0)} repairing"
        )
        return line if self.healthy() else line + "; reconcile loop not making progress"

    def resync(self) -> None:
        """Every project (at startup, after an engine reconnects, on SIGHUP)."""
        self.controller.resync(full=True)

    def periodic_resync(self) -> None:
        """The safety net for missed file events (``controller.sweeps``)."""
        queued = self.controller.resync(full=False)
        if queued:
            logger.debug("resync queued %d project(s)", queued)

    def request_stop(self, *_args: object) -> None:
        self.stop_requested.set()

    def shutdown(self) -> None:
        down = down_mark(self.config).exists()
        logger.info(
            "shutting down; %s", "every site and the edge stop" if down else "sites keep running"
        )
        self.lifecycle.stop()
        at_exit(self.config, self.db, self.releases, down=down)
        with contextlib.suppress(Exception):
            self.db.daemon_stopped()
        self.stores.close()
        logger.info("stopped")

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_resync)

    def request_resync(self, *_args: object) -> None:
        """SIGHUP (``systemctl reload``): every project whose inputs moved since it converged."""
        logger.info("SIGHUP: a full resync")
        threading.Thread(
            target=lambda: self.controller.resync(full=True, changed_only=True),
            name="sighup-resync",
            daemon=True,
        ).start()

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
                    settle_heap()
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


def settle_heap() -> None:
    """Once every project was reconciled: what the start made stays, so the collector
    stops walking it (with 10,000 projects a full collection took ~0.3 s of an idle
    daemon's CPU each time its turn came)."""
    gc.collect()
    gc.freeze()


class Engines:
    """The runtimes, as a part: each one made is watched from the moment a project first needs
    it (``runtimes``, handed to the controller); at the end the watches stop and every runtime
    made is closed."""

    name = "engines"

    def __init__(
        self,
        factory: Callable[[RuntimeName], Runtime],
        default: RuntimeName,
        changed: Callable[[ProjectId | None], None],
    ) -> None:
        self._changed = changed  # a project whose instances changed; None: maybe every project
        self._stop = threading.Event()
        self.runtimes = Runtimes(factory, default, on_new=self._watch)

    def _watch(self, runtime: Runtime) -> None:
        runtime.watch(self._changed, self._stop)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self._stop.set()
        for runtime in self.runtimes.made():
            runtime.close()
