"""Samples of each site a minute apart, for the dashboard's charts of the last hour: the
edge's counters of the site (answers, 5xx answers, seconds spent answering: Caddy's request
duration histogram by host, mapped to sites as ``/metrics`` maps them) and what its serving
instance used (as the usage job last sampled it)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from reconciler.api.metrics import LABEL, SAMPLE, host_sites
from reconciler.core.config import Config
from reconciler.core.kinds import EdgeMode, InstanceRole
from reconciler.stores.state import SampleRow, StateDB

logger = logging.getLogger(__name__)

INTERVAL = 60.0  # seconds between two rounds
DURATION = "caddy_http_request_duration_seconds"

Counters = dict[str, list[float]]  # project -> [answers, 5xx answers, seconds]


def site_counters(text: str, site_of: Callable[[str], str | None]) -> Counters:
    """Per site, from the edge's exposition text."""
    found: Counters = {}
    for line in text.splitlines():
        if not line.startswith(DURATION):
            continue
        match = SAMPLE.match(line)
        if match is None or match.group(1) not in (f"{DURATION}_count", f"{DURATION}_sum"):
            continue
        labels = dict(LABEL.findall(match.group(2) or ""))
        site = site_of(labels.get("host", ""))
        if site is None:
            continue
        value = float(match.group(3))
        totals = found.setdefault(site, [0.0, 0.0, 0.0])
        if match.group(1).endswith("_sum"):
            totals[2] += value
        else:
            totals[0] += value
            if labels.get("code", "").startswith("5"):
                totals[1] += value
    return found


def edge_socket(config: Config) -> Path | None:
    """Where the edge's admin API listens, when the daemon runs one (or one runs beside)."""
    return None if config.edge == EdgeMode.OFF else config.edge_dir / "admin.sock"


class Sampler:
    def __init__(
        self, db: StateDB, edge_socket: Path | None, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.edge_socket = edge_socket
        self.clock = clock

    def _edge(self) -> Counters:
        if self.edge_socket is None or not self.edge_socket.exists():
            return {}
        transport = httpx.HTTPTransport(uds=str(self.edge_socket))
        try:
            with httpx.Client(transport=transport, timeout=5) as edge:
                response = edge.get("http://edge/metrics")
        except httpx.HTTPError as exc:
            logger.debug("samples: the edge's metrics: %s", exc)
            return {}
        if response.status_code != 200:
            return {}
        return site_counters(response.text, host_sites(self.db))

    def tick(self) -> int:
        """One round: returns how many sites were sampled."""
        counters = self._edge()
        usage = {
            row.project: (row.memory, row.cpu)
            for row in self.db.instances()
            if row.role == InstanceRole.ACTIVE and row.usageAt is not None
        }
        now = self.clock()
        rows = []
        for project in sorted(set(counters) | set(usage)):
            answers, failed, seconds = counters.get(project) or (None, None, None)
            memory, cpu = usage.get(project, (None, None))
            rows.append(SampleRow(project, now, answers, failed, seconds, memory, cpu))
        return self.db.add_samples(rows)
