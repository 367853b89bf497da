"""The edge, kept level-based like everything else: one thread makes Caddy run the config that
``edge_config`` computes for the sites that should be served, and nothing more.

- ``put(site)`` / ``drop(project)`` change the wanted set and wait until the edge runs it.
  Changes that arrive together are loaded together (one load for many sites), because every
  load briefly costs every site on the host a few queued connections.
- The edge process is started when its socket does not answer (``--edge on``), adopted when
  it does, and restarted when it dies or hangs (``keeper``). With ``--edge external``
  someone else runs it (a systemd unit) and the manager only configures it.
- Every ``verify_interval`` seconds the running configuration is read back and compared, so
  a hand change through the admin API is reverted, and the route files of the next
  ``ROUTE_SLICE`` sites are compared with the disk (all of them when the edge restarts).
- Sites are served through route files (``RouteFiles``), never a load: the configuration
  depends on the edge's settings alone, and on the ports of the range other processes hold
  (a port that cannot be bound would fail the whole load): the edge listens around them,
  names them (with the process, when it can be seen) in its status, and a site given one
  is refused with that error until it is free; freed ports are taken at the next check.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from reconciler.core.errors import TransientError
from reconciler.core.kinds import EdgeMode
from reconciler.core.spec import ProjectId
from reconciler.edge.caddy import (
    CaddyAdmin,
    CaddyProcess,
    EdgeRefused,
    EdgeUnavailable,
    caddy_version,
)
from reconciler.edge.config import (
    SLOT_HEADER,
    EdgeSettings,
    Site,
    edge_config,
)
from reconciler.edge.keeper import Keeper
from reconciler.edge.routes import RouteFiles
from reconciler.stores.ports import holder, port_is_free
from reconciler.stores.state import StateDB

logger = logging.getLogger(__name__)

BATCH = 0.02  # gather changes that arrive together into one load
APPLY_TIMEOUT = 60.0
# the status is written again this often when it did not change: its time says it was checked
RECORD_FRESH = 30.0
ANSWER_TIMEOUT = 5.0  # a check through the edge: seconds for it to answer
ROUTE_SLICE = 250  # sites whose route files one verification compares with the disk


class Edge:
    def __init__(
        self,
        settings: EdgeSettings,
        *,
        mode: EdgeMode,
        admin: CaddyAdmin,
        process: CaddyProcess | None,
        db: StateDB,
        check_interval: float = 2.0,
        verify_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.mode = mode
        self.admin = admin
        self.process = process
        self.db = db
        self.check_interval = check_interval
        self.verify_interval = verify_interval
        self.clock = clock
        self._cond = threading.Condition()
        self._sites: dict[ProjectId, Site] = {}
        self._wanted = 0  # generation of the wanted set
        self._applied = 0  # generation the edge runs
        self._failed: tuple[int, str] | None = None  # (generation, why) of the last failure
        self._refused: dict[ProjectId, str] = {}  # sites left out of the last load, and why
        self._loaded: dict[str, Any] | None = None  # what we last loaded (or verified)
        self._served: set[ProjectId] = set()
        self.keeper = Keeper(settings, mode, admin, process, clock)
        self._last_verify = -1e9
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._version: str | None = None
        self._recorded: tuple[Any, ...] | None = None
        self._recorded_at = 0.0
        self.loads = 0  # loads pushed since start (reported by benchmarks and tests)
        self.routes = RouteFiles(settings.routes, settings.releases)
        self._held: dict[int, str] | None = None  # ports of the range others hold: by whom
        self._dirty: set[ProjectId] = set()  # sites put or dropped since the last sync
        self._domains = False  # serve domains: from the first site that has one, on

    # -- the wanted set --------------------------------------------------------------------

    def seed(self, sites: Iterable[Site]) -> None:
        """The sites served before a restart (from the database), before the first sync."""
        with self._cond:
            for site in sites:
                self._sites[site.project_id] = site
            self._wanted += 1

    def sites(self) -> dict[ProjectId, Site]:
        with self._cond:
            return dict(self._sites)

    def held_ports(self) -> frozenset[int]:
        """The ports of the range that other processes hold, as last checked."""
        with self._cond:
            return frozenset(self._held or ())

    def serves(self, project_id: ProjectId) -> bool:
        with self._cond:
            return project_id in self._served

    def put(self, site: Site) -> None:
        """Serve ``site`` (or its new settings); returns once the edge does."""
        with self._cond:
            if self._sites.get(site.project_id) == site and site.project_id in self._served:
                return
            self._sites[site.project_id] = site
            self._dirty.add(site.project_id)
            self._wait(site.project_id)

    def drop(self, project_id: ProjectId) -> None:
        """Stop serving the project (its port closes); returns once the edge has."""
        with self._cond:
            if project_id not in self._sites and project_id not in self._served:
                return
            self._sites.pop(project_id, None)
            self._dirty.add(project_id)
            self._wait(project_id)

    def _wait(self, project_id: ProjectId) -> None:
        self._wanted += 1
        generation = self._wanted
        self._cond.notify_all()
        deadline = time.monotonic() + APPLY_TIMEOUT
        while self._applied < generation:
            if self._failed is not None and self._failed[0] >= generation:
                raise EdgeUnavailable(self._failed[1])
            left = deadline - time.monotonic()
            if left <= 0:
                raise EdgeUnavailable(
                    f"the edge did not take the new configuration within {APPLY_TIMEOUT:.0f} s"
                )
            self._cond.wait(min(left, 0.5))
        refused = self._refused.get(project_id)
        if refused is not None and project_id in self._sites:
            raise EdgeRefused(refused)

    # -- the loop --------------------------------------------------------------------------

    def start(self) -> None:
        """One sync now (adopt or start the edge, load if needed), then the loop thread."""
        try:
            self.sync(verify=True)
        except TransientError as exc:
            logger.warning("edge: %s", exc)
        self._thread = threading.Thread(target=self._loop, name="edge", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop managing the edge; it keeps running and serving."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)

    def answer(self, url: str) -> tuple[int, str | None] | None:
        """One GET of ``url`` through the edge (plain HTTP on loopback): its status and the
        slot that served it. The standard library's client, a connection each: a fifth of
        the CPU of a 1,200-site start went to httpx's (two checks a site), and threads
        queued on its pool's lock."""
        parts = urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                                timeout=ANSWER_TIMEOUT)  # fmt: skip
        try:
            connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
            response = connection.getresponse()
            response.read()
            return response.status, response.getheader(SLOT_HEADER)
        except (OSError, http.client.HTTPException):
            return None
        finally:
            connection.close()

    def _loop(self) -> None:
        backoff = 0.0  # after a failed sync: wait before the next try, longer each time
        said = ""
        while not self._stopping.is_set():
            with self._cond:
                if self._wanted == self._applied or backoff:
                    self._cond.wait(backoff or self.check_interval)
            if self._stopping.is_set():
                return
            time.sleep(BATCH)
            verify = self.clock() - self._last_verify >= self.verify_interval
            try:
                self.sync(verify=verify)
                backoff, said = 0.0, ""
            except TransientError as exc:
                if str(exc) != said:  # once per cause, not once per try
                    logger.warning("edge: %s", exc)
                    said = str(exc)
                backoff = min(max(backoff * 2, 0.1), 5.0)
            except Exception:
                logger.exception("edge: sync failed")
                backoff = min(max(backoff * 2, 0.1), 5.0)

    def sync(self, *, verify: bool = False) -> None:
        """Make the edge serve the wanted sites (level-based; safe to call any time): the
        route files first, then the configuration, loaded only when it changed."""
        with self._cond:
            generation = self._wanted
            sites = dict(self._sites)
            dirty, self._dirty = self._dirty, set()
        try:
            restarted = self.keeper.ensure_running()
            first = restarted or self._loaded is None
            fresh = verify or first
            if not (fresh or generation != self._applied):
                self._record("up", self._problems({}))
                return  # alive, and nothing changed
            if fresh:
                running = self.admin.config()
                if self._loaded is not None and not restarted and running != self._loaded:
                    logger.warning("edge: its configuration was changed by hand; restoring it")
                self._loaded = running
                self._last_verify = self.clock()
            before = frozenset(self._held or ())
            held = self._held_now(rescan=fresh)
            held_moved = frozenset(held) != before  # a site may be refused or taken again
            refused = {
                project_id: refusal(site.port, self.settings.bind_host, held[site.port])
                for project_id, site in sites.items()
                if site.port in held
            }
            served = {project_id: s for project_id, s in sites.items() if project_id not in refused}
            anew = first or held_moved  # every route file read again
            self.routes.apply(served, full=anew, changed=None if held_moved else dirty)
            if verify and not anew:
                self.routes.check(served, ROUTE_SLICE)
            self._domains = self._domains or any(site.domains for site in served.values())
            wanted = edge_config(self.settings, held=frozenset(held), domains=self._domains)
            if wanted != self._loaded:
                started = time.monotonic()
                self.admin.load(wanted)
                self.loads += 1
                logger.info(
                    "edge: loaded its configuration in %.0f ms (%d site(s), %d port(s) held "
                    "by other processes)",
                    (time.monotonic() - started) * 1000, len(served), len(held),
                )  # fmt: skip
                self._loaded = wanted
        except TransientError as exc:
            with self._cond:
                self._dirty |= dirty  # written at the next try
                self._failed = (generation, str(exc))
                self._cond.notify_all()
            self._record("down", str(exc))
            raise
        except Exception:
            with self._cond:
                self._dirty |= dirty
            raise
        with self._cond:
            self._served = set(served)
            self._refused = refused
            self._applied = max(self._applied, generation)
            self._failed = None
            self._cond.notify_all()
        self._record("up", self._problems(refused))

    def _problems(self, refused: dict[ProjectId, str]) -> str | None:
        """What the status says is wrong: the sites refused, the ports held."""
        with self._cond:
            return problems(refused or dict(self._refused), dict(self._held or {}))

    def _held_now(self, *, rescan: bool) -> dict[int, str]:
        """The ports of the range that other processes hold: all of them checked at a
        verify (the edge's own are not probed), else the ones held before (free yet?)."""
        ours = _listening(self._loaded)
        first, last = self.settings.port_range
        before = self._held or {}
        candidates = range(first, last + 1) if rescan or self._held is None else list(before)
        held: dict[int, str] = {}
        for port in candidates:
            if port in ours or port_is_free(self.settings.bind_host, port):
                continue
            held[port] = before.get(port) or holder(port) or "another process"
        with self._cond:
            self._held = held
        return held

    def _record(self, status: str, error: str | None) -> None:
        if self._version is None and self.process is not None:
            self._version = caddy_version(self.process.binary)
        pid = self.process.pid() if self.process is not None else None
        with self._cond:
            count = len(self._served)
        state = (status, error, pid, count)
        now = self.clock()
        if state == self._recorded and now - self._recorded_at < RECORD_FRESH:
            return
        self._recorded, self._recorded_at = state, now
        try:
            self.db.set_edge(
                self.mode, status, pid=pid, version=self._version, sites=count, error=error
            )
        except Exception:
            logger.debug("edge: could not record its status", exc_info=True)


def problems(refused: dict[ProjectId, str], held: dict[int, str]) -> str | None:
    said = list(refused.values())
    taken = {p for p in held if not any(f"port {p} " in r for r in said)}
    if taken:
        ports = ", ".join(f"{p} ({held[p]})" for p in sorted(taken)[:10])
        more = f" and {len(taken) - 10} more" if len(taken) > 10 else ""
        said.append(f"ports of the range held by other processes: {ports}{more}")
    return "; ".join(said) or None


def refusal(port: int, host: str, who: str) -> str:
    return (
        f"port {port} ({host}) is held by {who}; the edge cannot serve this site until it is free"
    )


def _listening(config: dict[str, Any] | None) -> set[int]:
    """The ports a configuration listens on (``host:3001``, ``host:3001-3999``)."""
    ports: set[int] = set()
    servers = (config or {}).get("apps", {}).get("http", {}).get("servers", {})
    for server in servers.values():
        for entry in server.get("listen", []):
            span = str(entry).rsplit(":", 1)[-1]
            first, _, last = span.partition("-")
            if first.isdigit():
                ports.update(range(int(first), int(last or first) + 1))
    return ports
