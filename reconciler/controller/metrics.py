"""Prometheus metrics (prometheus-client).

The daemon counts what it does (deployments by project, kind and result; deploy, build and
reconcile durations; drift repairs; the work queue's depth) in its own registry and writes
the exposition text into the state database with a pulse (a few seconds) after one of them
moved, so that the API can serve it whether it runs in the daemon's process or beside it
(``reconciler.api.metrics`` adds what is read at scrape time). Nothing moved, nothing is
written: with 10,000 projects the text is a few megabytes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from reconciler.core.kinds import DeploymentKind, DeploymentState, JobState, JobType
from reconciler.core.spec import ProjectId

if TYPE_CHECKING:
    pass

DEPLOY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                     30, 60, 300)  # fmt: skip
ROUTINE_EVERY = 60.0  # seconds: how stale routine figures may get in the exposition
WAKE_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)


@dataclass(frozen=True)
class Finished:
    """A deployment that ended: what metrics and notifications hear of."""

    project: ProjectId
    kind: DeploymentKind
    result: DeploymentState
    seconds: float
    error: str | None
    ready: dict[str, Any] | None  # the production.ready event's data (url, hash, commit)
    pinned: str | None  # the version the desired state pins (a rollback), if any


class DaemonMetrics:
    """The daemon's counters and histograms, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.deploys = Counter(
            "reconciler_deployments",
            "Deployments finished, by project, kind (deploy, activate, repair, stop) and "
            "result (succeeded, failed, cancelled)",
            ["project", "kind", "result"],
            registry=r,
        )
        self.deploy_seconds = Histogram(
            "reconciler_deployment_duration_seconds",
            "How long deployments took, by kind and result",
            ["kind", "result"],
            buckets=DEPLOY_BUCKETS,
            registry=r,
        )
        self.build_seconds = Histogram(
            "reconciler_build_duration_seconds",
            "How long build jobs took (build, hash, stage), by result",
            ["result"],
            buckets=DEPLOY_BUCKETS,
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "reconciler_reconcile_duration_seconds",
            "How long one reconcile of one project took (observe, plan, the steps)",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.repairs = Counter(
            "reconciler_instance_repairs",
            "Instances put back after they died (drift repairs), by project",
            ["project"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "reconciler_queue_depth", "Projects waiting in the work queue", registry=r
        )
        self.source_checks = Counter(
            "reconciler_source_checks",
            "Checks of followed sources, by result (moved, same, failed)",
            ["result"],
            registry=r,
        )
        self.wakes = Counter(
            "reconciler_wakes",
            "Sleeping sites woken by a request, by result (succeeded, failed: the waiting "
            "requests were answered 503)",
            ["result"],
            registry=r,
        )
        self.wake_seconds = Histogram(
            "reconciler_wake_duration_seconds",
            "Cold starts: from a sleeping site's first request to the site serving it",
            buckets=WAKE_BUCKETS,
            registry=r,
        )
        self._lock = threading.Lock()
        self._depth: Callable[[], int] | None = None
        self._moves = 0  # bumped by every change; the exposition is made again only then
        self._routine = 0  # bumped by routine figures (every reconcile, every source check)
        self._made: tuple[tuple[int, int], bytes] | None = None
        self._made_at = -1e9
        self._routine_made = 0

    # -- what the daemon hears (a recorder Listener) ----------------------------------------

    def deployment_finished(self, finished: Finished) -> None:
        kind, result = str(finished.kind), str(finished.result)
        self.deploys.labels(finished.project, kind, result).inc()
        self.deploy_seconds.labels(kind, result).observe(finished.seconds)
        if finished.kind == DeploymentKind.REPAIR and finished.result == "succeeded":
            self.repairs.labels(finished.project).inc()
        self._moved()

    def job_finished(
        self, project: ProjectId, job_type: JobType, result: JobState, seconds: float
    ) -> None:
        if job_type == JobType.BUILD:
            self.build_seconds.labels(str(result)).observe(seconds)
            self._moved()

    def reconciled(self, seconds: float) -> None:
        self.reconcile_seconds.observe(seconds)
        self._moved(routine=True)

    def woke(self, seconds: float, ok: bool) -> None:
        self.wakes.labels("succeeded" if ok else "failed").inc()
        if ok:
            self.wake_seconds.observe(seconds)
        self._moved()

    def source_checked(self, result: str) -> None:
        self.source_checks.labels(result).inc()
        self._moved(routine=True)

    def queue(self, depth: Callable[[], int]) -> None:
        self._depth = depth

    def _moved(self, *, routine: bool = False) -> None:
        with self._lock:
            if routine:
                self._routine += 1
            else:
                self._moves += 1

    def exposition(self, now: float | None = None) -> bytes:
        """The text; the same bytes object as last time when no figure moved. Routine
        figures alone (the safety net's reconciles, source checks: they move all the time on
        an idle host) make it again at most every ``ROUTINE_EVERY`` seconds."""
        depth = self._depth() if self._depth is not None else 0
        now = time.monotonic() if now is None else now
        with self._lock:
            key = (self._moves, depth)
            routine = self._routine != self._routine_made and now - self._made_at >= ROUTINE_EVERY
            if self._made is None or self._made[0] != key or routine:
                self.queue_depth.set(depth)
                self._made = (key, generate_latest(self.registry))
                self._made_at, self._routine_made = now, self._routine
            return self._made[1]
