"""``reconciler daemon``: compose the stores, runtimes, controller, watcher and scheduler.

Signal handlers only set a flag; ``Daemon.run`` notices it and shuts down in one place:
in-flight pipelines are cancelled, workers joined (within 10 s), and deployed instances are
left running.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from reconciler.config import Config
from reconciler.controller import Controller
from reconciler.desired import DesiredStore
from reconciler.ports import PortAllocator
from reconciler.releases import ReleaseStore
from reconciler.runtimes.base import Runtime
from reconciler.state import StateDB
from reconciler.watch import DesiredWatcher

logger = logging.getLogger(__name__)


def make_runtime_factory(config: Config, releases: ReleaseStore) -> Callable[[str], Runtime]:
    def factory(name: str) -> Runtime:
        if name == "process":
            from reconciler.runtimes.process import ProcessRuntime

            return ProcessRuntime(releases, bind_host=config.bind_host)
        if name == "docker":
            from reconciler.runtimes.docker import DockerRuntime

            return DockerRuntime(image_prefix=config.docker_prefix, bind_host=config.bind_host)
        raise ValueError(f"unknown runtime {name!r}")

    return factory


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = StateDB(config.state_db)
        self.desired = DesiredStore(config.desired_dir, lock_dir=config.lock_dir)
        self.releases = ReleaseStore(config.releases_dir)
        self.ports = PortAllocator(self.db, config.port_range, bind_host=config.bind_host)
        self.controller = Controller(
            config,
            desired=self.desired,
            db=self.db,
            releases=self.releases,
            ports=self.ports,
            runtime_factory=make_runtime_factory(config, self.releases),
        )
        self.watcher: DesiredWatcher | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.stop_requested = threading.Event()
        self.ready = threading.Event()
        self._docker_stop = threading.Event()
        self.resyncs = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        removed = self.releases.cleanup()
        if removed:
            logger.info("removed %d leftover staging dir(s)", len(removed))
        interrupted = self.db.interrupt_jobs("interrupted: the daemon stopped before it finished")
        if interrupted:
            logger.info("closed %d job(s) interrupted by a restart", interrupted)
        self.controller.adopt()
        self.controller.start()
        if self.config.watch:
            self.watcher = DesiredWatcher(
                self.config.desired_dir,
                self.controller.enqueue,
                debounce=self.config.debounce,
                max_wait=self.config.debounce_max_wait,
            )
            self.watcher.start()
        self._watch_docker()
        self.scheduler = BackgroundScheduler(timezone="UTC")
        common: dict[str, Any] = {"coalesce": True, "max_instances": 1}
        self.scheduler.add_job(
            self.resync,
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

    def _watch_docker(self) -> None:
        uses_docker = self.config.default_runtime == "docker" or any(
            loaded.in_force is not None and loaded.in_force.runtime == "docker"
            for loaded in self.desired.scan().projects.values()
        )
        if not uses_docker:
            return
        from reconciler.runtimes.docker import DockerRuntime

        runtime = self.controller.runtime("docker")
        if isinstance(runtime, DockerRuntime):

            def notify(project: str | None) -> None:
                if project is None:
                    self.resync()
                else:
                    self.controller.enqueue(project)

            runtime.watch(notify, self._docker_stop)

    def resync(self) -> None:
        self.resyncs += 1
        self.controller.resync()

    def request_stop(self, *_args: object) -> None:
        self.stop_requested.set()

    def shutdown(self) -> None:
        logger.info("shutting down: cancelling in-flight work; instances keep running")
        self._docker_stop.set()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.watcher is not None:
            self.watcher.stop()
        self.controller.stop(timeout=10)
        self.db.close()
        logger.info("stopped")

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self, *, tick: Callable[[], None] | None = None) -> int:
        """Start, wait for a stop request, shut down. Returns the exit code."""
        self.start()
        try:
            while not self.stop_requested.wait(1.0):
                if tick is not None:
                    tick()
        finally:
            self.shutdown()
        return 0

    def idle(self) -> bool:
        return self.controller.queue.pending() == 0
