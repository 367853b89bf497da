"""Samples of each site a minute apart, for the dashboard's charts of the last hour: the
edge's counters of the site (answers, 5xx answers, seconds spent answering: Caddy's request
duration histogram by host, mapped to sites as ``/metrics`` maps them) and what its serving
instance used (as the usage job last sampled it).

The edge's exposition text holds a histogram per host (about 8 KB a site: 10 MB at 1,200
sites), so it is asked for only when the edge's access log moved since the last round: every
answer is logged there, so a log that did not move means counters that did not either, and an
idle host pays nothing per site. With access logs off, every round asks."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from reconciler.api.metrics import LABEL, host_sites
from reconciler.core.config import ACCESS_LOG, Config
from reconciler.core.kinds import EdgeMode, InstanceRole
from reconciler.stores.state import SampleRow, StateDB

logger = logging.getLogger(__name__)

INTERVAL = 60.0  # seconds between two rounds
DURATION = "caddy_http_request_duration_seconds"

Counters = dict[str, list[float]]  # project -> [answers, 5xx answers, seconds]
# the lines read: a histogram's count and sum (its buckets are most of the text)
# (anchored on a newline, not ``^`` with MULTILINE: ten times faster over megabytes)
TOTALS = re.compile(rf"\n{DURATION}_(count|sum)(?:\{{(.*)\}})? ([^ \n]+)")


def site_counters(text: str, site_of: Callable[[str], str | None]) -> Counters:
    """Per site, from the edge's exposition text."""
    found: Counters = {}
    for match in TOTALS.finditer("\n" + text):
        labels = dict(LABEL.findall(match.group(2) or ""))
        site = site_of(labels.get("host", ""))
        if site is None:
            continue
        value = float(match.group(3))
        totals = found.setdefault(site, [0.0, 0.0, 0.0])
        if match.group(1) == "sum":
            totals[2] += value
        else:
            totals[0] += value
            if labels.get("code", "").startswith("5"):
                totals[1] += value
    return found


def edge_socket(config: Config) -> Path | None:
    """Where the edge's admin API listens, when the daemon runs one (or one runs beside)."""
    return None if config.edge == EdgeMode.OFF else config.edge_dir / "admin.sock"


def access_log(config: Config) -> Path | None:
    """The edge's access log, when requests are logged (None: every round asks the edge)."""
    return config.edge_dir / ACCESS_LOG if config.access_logs else None


class Sampler:
    def __init__(
        self,
        db: StateDB,
        edge_socket: Path | None,
        clock: Callable[[], float] = time.time,
        *,
        access_log: Path | None = None,
    ) -> None:
        self.db = db
        self.edge_socket = edge_socket
        self.clock = clock
        self.access_log = access_log
        self._log_seen: tuple[int, int, int] | None = None  # inode, size, mtime
        self._counters: Counters = {}

    def _log_moved(self) -> bool:
        if self.access_log is None:
            return True
        try:
            st = self.access_log.stat()
        except OSError:
            return True
        seen, self._log_seen = self._log_seen, (st.st_ino, st.st_size, st.st_mtime_ns)
        return seen != self._log_seen

    def _edge(self) -> Counters:
        """The edge's counters per site, asked for again only when requests were logged."""
        if self.edge_socket is None or not self.edge_socket.exists():
            return {}
        if self._log_moved():
            self._counters = self._ask_edge()
        return self._counters

    def _ask_edge(self) -> Counters:
        assert self.edge_socket is not None
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
