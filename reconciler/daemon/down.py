"""Taking the host down cleanly, and the edge with the last site.

``reconciler down`` stops every site and the edge and ends the daemon, without changing a
desired file: with a daemon running, it leaves a mark in the data dir and asks the daemon to
stop (SIGTERM); the daemon, seeing the mark as it shuts down, takes everything down itself.
With no daemon running, the command does the same work. ``reconciler run`` (or the unit)
brings it all back: the statuses say stopped, so each project is started as after a stop.

A daemon that shuts down cleanly while no project is served stops its edge too (``--edge
on``): nothing outlives it that serves nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from reconciler.core.config import Config
from reconciler.core.kinds import EdgeMode, RuntimeName, Status
from reconciler.core.spec import ProjectId
from reconciler.daemon.parts import make_runtime_factory
from reconciler.edge.caddy import CaddyProcess, Paths, default_binary
from reconciler.runtimes.base import Runtime
from reconciler.runtimes.systemd import SiteUnits
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB

logger = logging.getLogger(__name__)

DOWN_MARK = "down"  # in the data dir: ``reconciler down`` asked for everything to stop


def down_mark(config: Config) -> Path:
    return Path(config.data_dir) / DOWN_MARK


def take_down(config: Config, db: StateDB, releases: ReleaseStore) -> list[str]:
    """Stop every instance of every project and the edge; record each project stopped.
    Returns what it stopped, as an operator reads it."""
    units = SiteUnits(config.data_dir) if config.site_users else None
    factory = make_runtime_factory(config, releases, units)
    made: dict[RuntimeName, Runtime] = {}
    stopped: list[str] = []
    for row in db.projects():
        project = ProjectId(row.id)
        names = {RuntimeName(r.runtime) for r in db.instances(project)} | {RuntimeName.PROCESS}
        for name in sorted(names):
            try:
                runtime = made.get(name) or factory(name)
                made[name] = runtime
                for instance in runtime.observe(project):
                    runtime.stop(instance, timeout=config.stop_grace)
                    stopped.append(f"{project} {instance.hash}")
            except Exception as exc:
                logger.warning("down: %s on %s: %s", project, name, exc)
        for record in db.instances(project):
            db.remove_instance(project, record.key)
        if row.productionStatus != Status.STOPPED or row.productionPort is not None:
            db.update_project(
                project,
                productionStatus=Status.STOPPED,
                productionPort=None,
                productionUrl=None,
                productionStartedAt=None,
                productionError=None,
            )
    for runtime in made.values():
        with contextlib.suppress(Exception):
            runtime.close()
    if stop_edge(config):
        stopped.append("the edge")
    return stopped


def at_exit(config: Config, db: StateDB, releases: ReleaseStore, *, down: bool) -> None:
    """What a daemon does as it ends: take everything down when asked to, else stop the
    edge when it serves nothing."""
    if down:
        stopped = take_down(config, db, releases)
        logger.info("down: stopped %s", ", ".join(stopped) or "nothing (nothing ran)")
        down_mark(config).unlink(missing_ok=True)
    elif serves_nothing(db) and stop_edge(config):
        logger.info("no project is served: the edge stopped too")


def stop_edge(config: Config) -> bool:
    """Stop the daemon's own edge (``--edge on``); True when one ran. With ``--edge
    external`` its unit owns it."""
    if config.edge != EdgeMode.ON:
        return False
    binary = config.caddy or default_binary()
    process = CaddyProcess(binary or Path("caddy"), Paths(config.edge_dir))
    pid = process.pid()
    if pid is None:
        return False
    process.kill(pid)
    return True


def serves_nothing(db: StateDB) -> bool:
    """No project has an address: the edge would serve nothing."""
    return all(row.productionPort is None for row in db.projects())


def ask_daemon_down(config: Config, pid: int, timeout: float = 120) -> bool:
    """Mark the data dir and ask the daemon ``pid`` to stop; True once it has exited."""
    if not _is_reconciler(pid):
        return False
    down_mark(config).touch()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_reconciler(pid):
            return True
        time.sleep(0.1)
    return False


def _is_reconciler(pid: int) -> bool:
    """``pid`` is a live reconciler process (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            words = fh.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and any(b"reconciler" in word for word in words)
