"""The daemon's timers (APScheduler 3.x): each job coalesces and never runs twice at once; a
job that comes late still runs within its grace time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from apscheduler.schedulers.background import BackgroundScheduler


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
                job.run,
                "interval",
                seconds=job.every,
                id=job.name,
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
