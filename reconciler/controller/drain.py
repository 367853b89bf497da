"""Draining: instances the edge no longer routes to are stopped in the background.

A deploy or rollback is done (and answered) as soon as the edge serves the new version; the
instance it replaced is marked ``draining``, left ``drain`` seconds to finish the requests it
is serving, then stopped gracefully (``grace`` seconds before it is killed), outside any
deployment. A draining instance is planned around; a new instance that needs its port or its
version waits for its stop (``finish``). After a daemon restart, instances still marked
draining are drained again.

An instance kept for the rollback window is held the same way (marked ``standby``), for the
window instead of the drain period, but it may be taken back (``reclaim``): a rollback to its
version switches the edge to it, with no start. A restart ends its window.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

from reconciler.controller.recorder import instance_row
from reconciler.core.kinds import OUT_OF_SERVICE, InstanceRole, JobState, JobType
from reconciler.core.queue import WorkQueue
from reconciler.runtimes.base import Instance, Runtime
from reconciler.stores.state import StateDB

logger = logging.getLogger(__name__)


Key = tuple[str, str]  # (project, instance key)


@dataclass(frozen=True)
class _Item:
    key: Key
    instance: Instance
    runtime: Runtime
    grace: float | None = None  # None: the drainer's own
    standby: bool = False  # kept for the rollback window: it may be reclaimed


class Drainer:
    name = "drainer"

    def __init__(
        self,
        db: StateDB,
        *,
        drain: float,
        grace: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.drain_seconds = drain
        self.grace = grace
        self.clock = clock
        self._due: WorkQueue[Key] = WorkQueue(clock)  # each draining instance, until its stop
        self._pending: dict[Key, _Item] = {}
        self._stopping_now: dict[Key, Future[None]] = {}
        self._stopping: dict[Key, _Item] = {}
        self._cond = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="drain")
        self._thread = threading.Thread(target=self._run, name="drainer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.close()

    def drain(
        self,
        instance: Instance,
        runtime: Runtime,
        *,
        after: float | None = None,
        standby: float | None = None,
    ) -> None:
        """Take ``instance`` out of service: mark it, stop it after the drain period (or,
        ``standby``, keep it that long for a rollback, then stop it)."""
        keep = standby is not None and standby > 0
        role = InstanceRole.STANDBY if keep else InstanceRole.DRAINING
        self.db.put_instance(instance_row(instance, role))
        delay = standby if keep and standby is not None else (
            self.drain_seconds if after is None else after
        )  # fmt: skip
        item = _Item((instance.project_id, instance.key), instance, runtime, standby=keep)
        with self._cond:
            if item.key in self._pending or item.key in self._stopping_now:
                return
            self._pending[item.key] = item
        self._due.add(item.key, delay)
        what = "keeping" if keep else "draining"
        logger.info("%s: %s %s (port %s) for %.1f s", instance.project_id, what,
                    instance.hash, instance.port, delay)  # fmt: skip

    def pending(self, project_id: str) -> dict[str, Instance]:
        """The project's instances being drained or stopped, by key: none of them may be
        routed to again."""
        with self._cond:
            items = [*self._pending.values(), *self._stopping.values()]
            return {
                i.key[1]: i.instance
                for i in items
                if i.key[0] == project_id and not (i.standby and i.key in self._pending)
            }

    def held(self, project_id: str) -> dict[str, Instance]:
        """The project's instances kept for the rollback window, by key (each may be
        reclaimed)."""
        with self._cond:
            return {
                k[1]: i.instance
                for k, i in self._pending.items()
                if k[0] == project_id and i.standby
            }

    def out_of_service(self, project_id: str) -> dict[str, Instance]:
        """Every instance of the project this drainer will stop: draining or held."""
        return {**self.held(project_id), **self.pending(project_id)}

    def reclaim(self, project_id: str, key: str) -> bool:
        """Take a held instance back into service: its stop is called off."""
        with self._cond:
            item = self._pending.get((project_id, key))
            if item is None or not item.standby:
                return False
            del self._pending[(project_id, key)]
        self._due.discard((project_id, key))
        logger.info("%s: %s taken back from its rollback window", project_id, key)
        return True

    def finish(self, project_id: str, key: str) -> None:
        """Stop a draining instance now, without its grace period (its port or version is
        needed; its drain period is over or it is given up), and wait until it is gone."""
        item_key = (project_id, key)
        future: Future[None] | None
        stopping: _Item | None = None
        with self._cond:
            item = self._pending.get(item_key)
            if item is not None:
                self._due.discard(item_key)
                future = self._begin(replace(item, grace=0.0))
            else:
                future = self._stopping_now.get(item_key)
                stopping = self._stopping.get(item_key)
        if stopping is not None:
            stopping.runtime.stop(stopping.instance, timeout=0)  # cut its grace short
        if future is not None:
            future.result()

    def close(self, timeout: float = 15.0) -> None:
        """Finish the stops under way; leave the rest (still marked draining: a restarted
        daemon drains them again). Nothing is left half-stopped."""
        with self._cond:
            self._pending.clear()
        self._due.close()
        self._pool.shutdown(wait=True)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _begin(self, item: _Item) -> Future[None]:
        """Hand one item to the pool (under the lock)."""
        self._pending.pop(item.key, None)
        future = self._pool.submit(self._stop, item)
        self._stopping_now[item.key] = future
        self._stopping[item.key] = item
        return future

    def _run(self) -> None:
        while True:
            key = self._due.get()
            if key is None:  # closed
                return
            with self._cond:
                item = self._pending.get(key)  # None: finished early
                if item is not None:
                    self._begin(item)
            self._due.done(key)

    def _stop(self, item: _Item) -> None:
        instance, runtime = item.instance, item.runtime
        job = self.db.create_job(
            instance.project_id, JobType.STOP, generation=None, hash=instance.hash
        )
        try:
            runtime.stop(instance, timeout=self.grace if item.grace is None else item.grace)
        except Exception as exc:
            logger.warning("%s: stopping %s failed: %s", instance.project_id, instance.hash, exc)
            self.db.finish_job(job, JobState.FAILED, error=str(exc))
        else:
            self.db.finish_job(job, JobState.SUCCEEDED)
            rows = [r for r in self.db.instances(instance.project_id) if r.key == instance.key]
            if rows and rows[0].role in OUT_OF_SERVICE:
                self.db.remove_instance(instance.project_id, instance.key)
            logger.info("%s: stopped %s after draining", instance.project_id, instance.hash)
        finally:
            with self._cond:
                self._stopping_now.pop(item.key, None)
                self._stopping.pop(item.key, None)
                self._cond.notify_all()
