"""What ``GET /metrics`` adds to the daemon's exposition: what the stores say at scrape time
(projects by status, the daemon's liveness) and, when the edge runs, the edge's own per-site
request counts and latencies (Caddy's metrics; ``server`` is ``site-<project>``)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reconciler.stores.state import StateDB

EDGE_FAMILIES = (
    "caddy_http_requests_total",
    "caddy_http_request_duration_seconds",
    "caddy_http_requests_in_flight",
    "caddy_http_request_errors_total",
    "caddy_http_response_size_bytes",
)


class StoreCollector(Collector):
    """What the state database says at scrape time."""

    def __init__(self, db: StateDB) -> None:
        self.db = db

    def collect(self) -> Iterable[Metric]:
        statuses = GaugeMetricFamily(
            "reconciler_projects", "Projects by production status", labels=["status"]
        )
        counts: dict[str, int] = {}
        for row in self.db.projects():
            counts[row.productionStatus] = counts.get(row.productionStatus, 0) + 1
        for status in ("running", "failed", "error", "queued", "building", "stopped"):
            statuses.add_metric([status], counts.get(status, 0))
        yield statuses
        up = GaugeMetricFamily(
            "reconciler_daemon_up", "1 while the daemon's pulse is fresh, else 0"
        )
        up.add_metric([], 1.0 if self.db.daemon_alive() else 0.0)
        yield up


def api_registry(db: StateDB) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(db))
    return registry


def edge_lines(text: str) -> str:
    """Of the edge's own exposition, the per-site HTTP families (with their HELP and TYPE)."""
    kept = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(" ", 3)
            name = parts[2] if len(parts) > 2 else ""
        else:
            name = line.split("{", 1)[0].split(" ", 1)[0]
        if any(name == family or name.startswith(family + "_") for family in EDGE_FAMILIES):
            kept.append(line)
    return "\n".join(kept) + ("\n" if kept else "")
