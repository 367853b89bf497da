"""The daemon's timers (APScheduler 3.x): each job coalesces and never runs twice at once; a
job that comes late still runs within its grace time. A job that fails is logged once per
cause (a full disk fails every run of every job that writes: one line each, not a traceback
every 2 s), and again when it works again."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from apscheduler.schedulers.background import BackgroundScheduler

from reconciler.stores.state import StateWriteFailed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[[], object]
    every: float  # seconds
    grace: int  # seconds a late run is still worth it
    close: Callable[[], object] | None = None  # at the stop: what it holds open


class Schedule:
    name = "schedule"

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self.scheduler: BackgroundScheduler | None = None

    def start(self) -> None:
        self.scheduler = BackgroundScheduler(timezone="UTC")
        for job in self.jobs:
            self.scheduler.add_job(
                _Said(job).run,
                "interval",
                seconds=job.every,
                id=job.name,
                name=job.name,
                misfire_grace_time=job.grace,
                coalesce=True,
                max_instances=1,
            )
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        for job in self.jobs:
            if job.close is not None:
                job.close()


class _Said:
    """Runs a job; says a failure once per cause, and its end."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.said: str | None = None
        self.lock = threading.Lock()

    def run(self) -> None:
        try:
            self.job.run()
        except Exception as exc:
            cause = f"{type(exc).__name__}: {exc}"
            with self.lock:
                if cause == self.said:
                    return
                self.said = cause
            if isinstance(exc, StateWriteFailed):
                logger.error("%s: the state database cannot be written: %s; tried again "
                             "each run", self.job.name, exc)  # fmt: skip
            else:
                logger.exception("%s failed (said once until it works or fails otherwise)",
                                 self.job.name)  # fmt: skip
            return
        with self.lock:
            said, self.said = self.said, None
        if said is not None:
            logger.info("%s works again (it failed with %s)", self.job.name, said)
