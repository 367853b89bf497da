"""Keeping the edge process up (``--edge on``): started when its socket does not answer,
restarted when it dies or hangs, at most ``RESTART_LIMIT`` times in ``RESTART_WINDOW``
seconds before it waits ``RESTART_PAUSE`` between tries.

A process that is there but does not answer a small question within ``ALIVE_TIMEOUT``
(stopped, deadlocked, swapped out) is reported down at once and restarted when it has not
answered for ``HUNG_AFTER`` seconds: long enough for a pause of a busy edge to pass, short
enough that a deploy waiting on it is not left waiting for its whole health timeout."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

from reconciler.core.kinds import EdgeMode
from reconciler.edge.caddy import ALIVE_TIMEOUT, CaddyAdmin, CaddyProcess, EdgeUnavailable
from reconciler.edge.config import EdgeSettings, bootstrap_config

logger = logging.getLogger(__name__)

RESTART_LIMIT = 5
RESTART_WINDOW = 300.0
RESTART_PAUSE = 60.0
HUNG_AFTER = 10.0


class Keeper:
    def __init__(
        self,
        settings: EdgeSettings,
        mode: EdgeMode,
        admin: CaddyAdmin,
        process: CaddyProcess | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.mode = mode
        self.admin = admin
        self.process = process
        self.clock = clock
        self._restarts: collections.deque[float] = collections.deque()
        self._pause_until = 0.0
        self._silent_since: float | None = None  # a process there that does not answer

    def ensure_running(self) -> bool:
        """Start or restart the edge when it does not answer. True when it was (re)started;
        EdgeUnavailable when it does not answer and is not (yet) restarted."""
        if self.admin.alive():
            self._silent_since = None
            return False
        if self.mode != EdgeMode.ON or self.process is None:
            raise EdgeUnavailable(
                f"the edge does not answer on {self.admin.socket} within {ALIVE_TIMEOUT:g} s; "
                "start it (`systemctl start reconciler-edge` or `reconciler edge`)"
            )
        now = self.clock()
        stale = self.process.pid()
        if stale is not None:
            self._silent_since = self._silent_since if self._silent_since is not None else now
            silent = now - self._silent_since
            if silent < HUNG_AFTER:
                raise EdgeUnavailable(
                    f"the edge (pid {stale}) has not answered for {silent + ALIVE_TIMEOUT:.0f} s "
                    f"(hung or stopped?); restarted if it still does not in "
                    f"{HUNG_AFTER - silent:.0f} s"
                )
        self._limit(now)
        if stale is not None:
            logger.warning("edge: pid %s does not answer; restarting it", stale)
            self.process.kill(stale)
        self._silent_since = None
        self._restarts.append(now)
        self.process.write_bootstrap(bootstrap_config(self.settings))
        pid = self.process.start(self.admin)
        logger.info("edge: started caddy (pid %s)", pid)
        return True

    def _limit(self, now: float) -> None:
        if now < self._pause_until:
            raise EdgeUnavailable("the edge keeps dying; waiting before starting it again")
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW:
            self._restarts.popleft()
        if len(self._restarts) >= RESTART_LIMIT:
            self._pause_until = now + RESTART_PAUSE
            self._restarts.clear()
            where = self.process.paths.stderr if self.process is not None else "its log"
            raise EdgeUnavailable(
                f"the edge died {RESTART_LIMIT} times in {RESTART_WINDOW / 60:.0f} minutes; "
                f"trying again in {RESTART_PAUSE:.0f} s (see {where})"
            )
