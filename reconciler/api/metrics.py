"""What ``GET /metrics`` adds to the daemon's exposition: what the stores say at scrape time
(projects by status, the daemon's liveness) and, when the edge runs, the edge's own per-site
request counts and latencies (Caddy's metrics by host, relabelled ``server="site-<project>"``
by the port or the domain the request came to)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reconciler.core.kinds import Status
from reconciler.stores.facts import spec_from_row
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
        for status in Status:
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


def edge_lines(text: str, site_of: Callable[[str], str | None] = lambda _host: None) -> str:
    """Of the edge's own exposition, the HTTP families (with their HELP and TYPE), each
    sample's ``host`` (``127.0.0.1:3001``, ``www.example.com``) turned into the site it
    reached (``server="site-<id>"``, ``site_of``; hosts of no site are left out), samples
    that end up alike summed."""
    kept: list[str] = []
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) > 2 and _ours(parts[2]):
                _flush(kept, sums)
                kept.append(line)
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if not _ours(name):
            continue
        found = SAMPLE.match(line)
        if found is None:
            continue
        labels = dict(LABEL.findall(found.group(2) or ""))
        host = labels.pop("host", None)
        if host is not None:
            site = site_of(host)
            if site is None:
                continue
            labels["server"] = f"site-{site}"
        shown = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        key = f"{found.group(1)}{{{shown}}}"
        sums[key] = sums.get(key, 0.0) + float(found.group(3))
    _flush(kept, sums)
    return "\n".join(kept) + ("\n" if kept else "")


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([^ ]+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _ours(name: str) -> bool:
    return any(name == family or name.startswith(family + "_") for family in EDGE_FAMILIES)


def _flush(kept: list[str], sums: dict[str, float]) -> None:
    kept.extend(f"{key} {value:g}" for key, value in sums.items())
    sums.clear()


def host_sites(db: StateDB) -> Callable[[str], str | None]:
    """``site_of`` for ``edge_lines``: a host with a port is the site whose public port it
    is; a bare host name, the site whose last applied spec names it as a domain."""
    ports = {site.publicPort: site.project for site in db.sites()}
    domains: dict[str, str] | None = None  # read on the first host name (every spec parsed)

    def site_of(host: str) -> str | None:
        nonlocal domains
        _name, colon, port = host.rpartition(":")
        if colon and port.isdigit() and "]" not in port:
            return ports.get(int(port))
        if domains is None:
            domains = {}
            for row in db.projects():
                spec = spec_from_row(row)
                for domain in spec.domains if spec is not None else ():
                    domains[domain] = row.id
        return domains.get(host.lower())

    return site_of
