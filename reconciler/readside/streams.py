"""The event stream of a project's deployment (the API's SSE and the CLI's follow): replay, follow,
heartbeats, and an end that always comes."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

from reconciler.core.kinds import (
    TERMINAL_EVENTS,
    EventType,
    JobState,
)
from reconciler.core.spec import (
    ProjectId,
)
from reconciler.readside.terms import STREAM_END, WAITING, Event
from reconciler.readside.views import (
    Reader,
    Snapshot,
    state_event,
)
from reconciler.stores.state import StateDB


class Streams:
    if TYPE_CHECKING:  # what the operations it is part of provide
        db: StateDB
        reader: Reader
        poll_interval: float
        heartbeat: float
        down_limit: float
        follow_grace: float

        def daemon(self) -> tuple[bool, str]: ...

    def follow(self, project_id: ProjectId, last_id: int | None = None) -> Iterator[Event | None]:
        """The events of the deployment that serves the current desired state, until it ends.

        Without ``last_id``: replay that deployment if it is open, or wait for it if the
        daemon has yet to start it; with nothing to do, send one event with the current state.
        Events of other deployments (an older one finishing its cleanup) are left out; when
        ours is cancelled by a newer edit, follow the newer one. With ``last_id``: every later
        event (resume after a disconnect). Yields None (a heartbeat) after ``heartbeat``
        seconds without events.

        Every follow ends, with ``stream.end``: after the outcome; ``down_limit`` seconds
        after it finds the daemon not running (told at once by a ``production.waiting``
        event; the edit is saved and acted on when the daemon starts); or when the build and
        health timeouts and ``follow_grace`` have passed. An end without an outcome carries
        ``{reason, message}``.
        """
        resume = last_id is not None
        if last_id is None:
            last_id = self.db.last_event_id(
                project_id
            )  # before the snapshot: nothing can fall between
        snap = self.reader.snapshot(project_id)
        spec = snap.spec
        budget = (spec.build.timeout + spec.health.timeout if spec else 900) + self.follow_grace
        target: str | None = None
        if not resume:
            target = snap.desired.digest if snap.desired else None
            opened = yield from self._opening(snap, target, last_id)
            if opened is None:
                return
            last_id = opened
        yield from self._tail(project_id, target, last_id, budget)

    def _opening(
        self, snap: Snapshot, target: str | None, last_id: int
    ) -> Generator[Event | None, None, int | None]:
        """A new follower's first events: the replay of our deployment when it is open, or
        the current state when nothing is to come. The last id sent, or None: it ended."""
        status = snap.status()
        ours = snap.deployment is not None and snap.deployment.digest == target
        if snap.deployment is not None and ours:
            replay = self.db.deployment_events(snap.deployment.id)
            for row in replay:
                yield Event(row.id, row.type, row.payload())
                if row.type in TERMINAL_EVENTS:
                    yield Event(row.id, STREAM_END, {})
                    return None
            return max([last_id, *(row.id for row in replay)])
        if status.activeJob is None or status.activeJob.state != JobState.QUEUED:
            kind, data = state_event(status)
            yield Event(last_id, kind, data)
            yield Event(last_id, STREAM_END, {})
            return None
        return last_id

    def _tail(
        self, project_id: ProjectId, target: str | None, last_id: int, budget: float
    ) -> Iterator[Event | None]:
        """Every later event of our deployment (a newer one's after a cancel), until it ends."""
        db = self.db
        digests: dict[int, str | None] = {}
        started = quiet_since = time.monotonic()
        checked = -1.0
        down_since: float | None = None
        bell = db.bell
        while True:
            rung = bell.seq()
            batch = db.events_after(project_id, last_id, limit=500)
            for row in batch:
                last_id = row.id
                if target is not None and self._digest_of(row.deployment, digests) != target:
                    continue
                yield Event(row.id, row.type, row.payload())
                if row.type in TERMINAL_EVENTS:
                    yield Event(row.id, STREAM_END, {})
                    return
                if row.type == EventType.CANCELLED and target is not None:
                    snap = self.reader.snapshot(project_id)  # a newer edit: follow what it starts
                    target = snap.desired.digest if snap.desired else None
            now = time.monotonic()
            if batch:
                quiet_since = now
                continue
            if now - checked >= 1.0:  # the daemon's liveness, once a second
                checked = now
                alive, how = self.daemon()
                why = f"the daemon is {how}"
                if alive:
                    down_since = None
                elif down_since is None:
                    down_since = now
                    yield Event(last_id, WAITING, {"message": why, "daemon": False})
                elif now - down_since >= self.down_limit:
                    message = f"{why}; the change is saved and is acted on when it starts"
                    yield Event(last_id, STREAM_END, {"reason": "daemon-down", "message": message})
                    return
            if now - started >= budget:
                message = (
                    f"no outcome within {int(budget)} s (the build and health timeouts and "
                    f"{int(self.follow_grace)} s); `reconciler status {project_id}` shows where "
                    "it is"
                )
                yield Event(last_id, STREAM_END, {"reason": "timeout", "message": message})
                return
            if now - quiet_since >= self.heartbeat:
                yield None  # a heartbeat
                quiet_since = now
            bell.wait(rung, self.poll_interval)  # woken by the next commit

    def _digest_of(self, deployment: int | None, cache: dict[int, str | None]) -> str | None:
        if deployment is None:
            return None
        if deployment not in cache:
            row = self.db.deployment(deployment)
            cache[deployment] = row.digest if row else None
        return cache[deployment]
