"""Samples of each site a minute apart, for the dashboard's charts of the last hour: the
edge's counters of the site (answers, 5xx answers, seconds spent answering) and what its
serving instance used (as the usage job last sampled it).

The counters come from the edge's access log, tallied as it grows (``edge.traffic``): a cost
that follows the requests, not the number of sites. With access logs off they come from the
edge's own metrics (Caddy's request duration histogram by host, mapped to sites as
``/metrics`` maps them): about 8 KB of text a site, so that is asked for only then.

A site whose figures did not move since its last row gets no new row; when they move again
its last figures are written once more at the round before, so that the charts' rates stay
exact (zero over the quiet stretch) while a host of idle sites writes nothing.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from reconciler.api.metrics import LABEL, host_sites
from reconciler.core.config import Config
from reconciler.core.kinds import EdgeMode, InstanceRole
from reconciler.edge.traffic import Traffic
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
    return None if config.edge == EdgeMode.OFF else config.layout.edge_socket


def access_log(config: Config) -> Path | None:
    """The edge's access log, when requests are logged (None: the edge's metrics are asked)."""
    return config.layout.access_log if config.access_logs else None


Figures = tuple[float | None, float | None, float | None, int | None, float | None]


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
        self.traffic = Traffic(access_log, tally=True) if access_log is not None else None
        self._last: dict[str, tuple[float, Figures]] = {}  # project -> its last row
        self._previous: float | None = None  # when the last round ran

    def close(self) -> None:
        if self.traffic is not None:
            self.traffic.close()

    def tally(self) -> None:
        """Read what the access log gained (a job of its own, every few seconds, so that a
        busy minute is read in pieces)."""
        if self.traffic is not None:
            self.traffic.poll(force=True)

    def _edge(self) -> Counters:
        """The counters per site: from the access log's tallies, or the edge's metrics."""
        if self.traffic is not None:
            self.traffic.poll(force=True)
            site_of = host_sites(self.db)
            found: Counters = {}
            strays = []
            for key, (answers, failed, seconds) in self.traffic.tallies().items():
                name = key[1:].decode()
                site = site_of(f"port:{name}" if key.startswith(b"p") else name)
                if site is None:
                    strays.append(key)  # a host no site names (any Host header a client sent)
                    continue
                totals = found.setdefault(site, [0.0, 0.0, 0.0])
                totals[0] += answers
                totals[1] += failed
                totals[2] += seconds
            self.traffic.drop(strays)  # the tallies stay as many as the sites
            return found
        if self.edge_socket is None or not self.edge_socket.exists():
            return {}
        return self._ask_edge()

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
            figures: Figures = (answers, failed, seconds, memory, cpu)
            last = self._last.get(project)
            if last is not None and last[1] == figures:
                continue  # nothing moved: no row
            if last is not None and self._previous is not None and last[0] < self._previous:
                rows.append(SampleRow(project, self._previous, *last[1]))  # quiet until then
            rows.append(SampleRow(project, now, *figures))
            self._last[project] = (now, figures)
        self._previous = now
        return self.db.add_samples(rows)
