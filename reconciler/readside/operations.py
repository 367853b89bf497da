"""What an operator can do to a project, over the desired files and the state database.

One implementation for both the HTTP API and the local CLI: status, deploy, stop, history,
rollback, the event stream and logs. Changes go through ``DesiredStore.edit`` only; nothing
here touches processes, containers or runtimes, so it all works while the daemon is down.
Errors carry a kind (not found, invalid, conflict, unavailable, denied) that the API maps to
an HTTP status and the CLI to an exit code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from reconciler.core.config import Config
from reconciler.core.kinds import (
    TERMINAL_EVENTS,
    EdgeMode,
    EventType,
    JobState,
    JobType,
    RuntimeName,
    Status,
)
from reconciler.core.spec import (
    InvalidProjectId,
    ProjectId,
    ProjectSpec,
    check_project_id,
    is_hash8,
)
from reconciler.readside.readcache import Listing, ReadCache
from reconciler.readside.views import (
    ActiveJob,
    History,
    ProductionStatus,
    ProjectList,
    ProjectSummary,
    Reader,
    RollbackResult,
    Version,
    in_progress,
    queued,
    state_event,
    stopping,
)
from reconciler.stores.desired import DesiredFileError, DesiredStore, EditError, ProjectNotFound
from reconciler.stores.facts import running_commit
from reconciler.stores.opened import Stores
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB

STREAM_END = "stream.end"
WAITING = "production.waiting"  # made up by the stream (never stored): why nothing moves
LOG_NAMES = ("build", "app", "access")
MAX_LOG_CHUNK = 256 * 1024


class ErrorKind(StrEnum):
    NOT_FOUND = "not-found"  # no such project or version
    INVALID = "invalid"  # the request itself is wrong (an id, a hash, a body)
    CONFLICT = "conflict"  # the request is fine, the state refuses it (an invalid file)
    REFUSED = "refused"  # well formed, but pointless now (roll back to the active version)
    UNAVAILABLE = "unavailable"  # something needed cannot be reached now
    DENIED = "denied"  # not allowed (no or a wrong token)


class OperationError(Exception):
    """A request that cannot be served, and which kind of failure that is."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _not_found(pid: ProjectId) -> OperationError:
    return OperationError(
        ErrorKind.NOT_FOUND, f"project {pid!r} not found: there is no desired file for it"
    )


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]


@dataclass
class Operations:
    db: StateDB
    desired: DesiredStore
    releases: ReleaseStore
    poll_interval: float = 0.2
    heartbeat: float = 3.0  # a closed stream's slot is freed at the next one; < idle timeout
    rollback_grace: float = 30.0
    down_limit: float = 10.0  # a follow ends this long after it finds the daemon not running
    follow_grace: float = 120.0  # beyond the build and health timeouts, before a follow ends
    edge: EdgeMode = EdgeMode.OFF
    default_runtime: RuntimeName = RuntimeName.PROCESS
    reader: Reader = field(init=False)
    cache: ReadCache[tuple[ProductionStatus, ProjectSummary | None]] = field(init=False)
    _listing: tuple[object, bytes] | None = field(init=False, default=None)

    @classmethod
    def of(cls, stores: Stores, config: Config) -> Operations:
        return cls(
            db=stores.db,
            desired=stores.desired,
            releases=stores.releases,
            edge=config.edge,
            default_runtime=config.default_runtime,
        )

    def __post_init__(self) -> None:
        self.reader = Reader(self.db, self.desired, self.releases, self.edge, self.default_runtime)
        self.cache = ReadCache(
            self.db,
            self.desired.directory,
            self._read,
            shared=lambda: (self.reader.edge_mode(), self.reader.runtime()),
        )

    # -- lookups ---------------------------------------------------------------------------

    def project(self, raw: str) -> ProjectId:
        """A project id that passes the allowlist and has a desired file."""
        try:
            pid = check_project_id(raw)
        except InvalidProjectId as exc:
            raise OperationError(ErrorKind.INVALID, str(exc)) from None
        if self.desired.path_for(pid) is None:
            raise _not_found(pid)
        return pid

    def relative(self, message: str) -> str:
        """Name desired files relative to the desired dir: never leak absolute paths."""
        return message.replace(f"{self.desired.directory}/", "")

    # -- reads -----------------------------------------------------------------------------

    def _read(
        self, pid: ProjectId
    ) -> tuple[tuple[ProductionStatus, ProjectSummary | None], float | None]:
        """A project's status and list entry, read from the stores (see ``readcache``)."""
        snap = self.reader.snapshot(pid)
        desired, status = snap.file, snap.status()
        if status.error:
            status = status.model_copy(update={"error": self.relative(status.error)})
        summary = None
        if desired is not None:
            summary = ProjectSummary(
                id=pid,
                file=desired.path.name,
                valid=desired.valid,
                production=status,
                error=desired.error and self.relative(desired.error),
            )
        return (status, summary), desired.settles_at if desired else None

    def status(self, pid: ProjectId) -> ProductionStatus:
        return self.cache.get(pid)[0]

    def status_of(self, raw: str) -> ProductionStatus:
        """``status(project(raw))`` with the file looked up once: the API's hottest read."""
        try:
            pid = check_project_id(raw)
        except InvalidProjectId as exc:
            raise OperationError(ErrorKind.INVALID, str(exc)) from None
        found = self.cache.get_present(pid)
        if found is None:
            raise _not_found(pid)
        return found[0]

    def projects(self) -> ProjectList:
        return self._project_list(self.cache.all())

    def _project_list(
        self, listing: Listing[tuple[ProductionStatus, ProjectSummary | None]]
    ) -> ProjectList:
        items = [summary for _pid, (_status, summary) in listing.projects if summary is not None]
        items.extend(
            ProjectSummary(id=None, file=name, valid=False, production=None,
                           error=f"{name}:1:1: {message}")
            for name, message in listing.orphans
        )  # fmt: skip
        return ProjectList(projects=items)

    def projects_json(self) -> bytes:
        """``projects()`` as JSON, built again only when something in it changed."""
        listing = self.cache.all()
        cached = self._listing
        if cached is not None and cached[0] is listing:
            return cached[1]
        body = self._project_list(listing).model_dump_json().encode()
        self._listing = (listing, body)
        return body

    def history(self, pid: ProjectId) -> History:
        row = self.db.project(pid)
        active = row.productionHash if row and row.productionStatus != Status.STOPPED else ""
        config = self.status(pid).config if active else None
        return History(
            versions=[
                Version(
                    hash=v.hash,
                    isActive=v.is_active,
                    createdAt=v.created_at,
                    config=config if v.is_active else None,
                    **running_commit(row, v.hash, self.releases.source_of(pid, v.hash)),
                )
                for v in self.releases.history(pid, active=active or "")
            ]
        )

    # -- writes ----------------------------------------------------------------------------

    def _edit(
        self,
        pid: ProjectId,
        mutate: Callable[[ProjectSpec], dict[str, object]],
        reason: str = "edit",
    ) -> bool:
        """Edit the desired file; True when it changed."""
        try:
            return self.desired.edit(pid, mutate, reason=reason).changed
        except ProjectNotFound:
            raise _not_found(pid) from None
        except DesiredFileError as exc:
            raise OperationError(
                ErrorKind.CONFLICT,
                f"the desired file is invalid; fix it first: {exc.problems[0].message}",
            ) from None
        except EditError as exc:
            raise OperationError(ErrorKind.CONFLICT, self.relative(str(exc))) from None
        finally:
            self.cache.forget(pid)

    def deploy(self, pid: ProjectId) -> ProductionStatus:
        """Bump the generation unless a deploy is already in progress."""

        def mutate(spec: ProjectSpec) -> dict[str, object]:
            if in_progress(self.reader.snapshot(pid).status()):
                return {}
            return {
                "production.state": "running",
                "production.version": "latest",
                "production.generation": spec.production.generation + 1,
            }

        changed = self._edit(pid, mutate, "deploy")
        status = self.status(pid)
        if changed:  # answer for this request (the daemon may already have moved on)
            return queued(status, ActiveJob(type=JobType.BUILD, state=JobState.QUEUED))
        return status

    def stop(self, pid: ProjectId) -> ProductionStatus:
        changed = self._edit(pid, lambda spec: {"production.state": "stopped"}, "stop")
        status = self.status(pid)
        if changed:
            return stopping(status, ActiveJob(type=JobType.STOP, state=JobState.QUEUED))
        return status

    def rollback(self, pid: ProjectId, target: str, *, wait: bool = True) -> RollbackResult:
        """Pin a kept version; wait until it serves (or fails, or the wait runs out)."""
        if not is_hash8(target):
            raise OperationError(
                ErrorKind.INVALID, "the version must be 8 lowercase hex characters"
            )
        if self.releases.get(pid, target) is None:
            raise OperationError(ErrorKind.NOT_FOUND, f"version {target} not found (not kept)")
        row = self.db.project(pid)
        if row is not None and row.productionHash == target and row.productionStatus == "running":
            raise OperationError(ErrorKind.REFUSED, f"version {target} is already active")
        self._edit(
            pid,
            lambda spec: {"production.state": "running", "production.version": target},
            "rollback",
        )
        if not wait:
            return RollbackResult(success=True, hash=target, message=f"Pinned version {target}")
        spec = self.reader.snapshot(pid).spec
        assert spec is not None
        digest = spec.digest()
        budget = spec.health.timeout + self.rollback_grace
        deadline = time.monotonic() + budget
        bell = self.db.bell
        while time.monotonic() < deadline:
            rung = bell.seq()
            snap = self.reader.snapshot(pid)
            row = snap.row
            if row is not None:
                if row.productionHash == target and row.productionStatus == Status.RUNNING:
                    if snap.converged():
                        return RollbackResult(
                            success=True, hash=target, message=f"Rolled back to version {target}"
                        )
                elif row.productionStatus == Status.FAILED and row.failedDigest == digest:
                    error = self.relative(row.productionError or "rollback failed")
                    return RollbackResult(success=False, error=error)
            bell.wait(rung, 0.25)  # the daemon's next commit (or a desired file settling)
        return RollbackResult(
            success=False,
            error=f"version {target} is pinned, but the daemon did not converge within "
            f"{int(budget)} s; is `reconciler daemon` running?",
        )

    # -- events and logs -------------------------------------------------------------------

    def daemon(self) -> tuple[bool, str]:
        """Whether the daemon runs (by the pulse it writes), and how an operator is told."""
        row = self.db.daemon()
        if row is None:
            return False, "not running (it has never run with this data dir)"
        if row.stoppedAt is not None:
            return False, f"not running (it stopped at {row.stoppedAt})"
        silence = row.silence(time.time())
        if not row.alive(time.time()):
            return False, f"not running (no sign of it for {int(silence)} s)"
        return True, f"running (pid {row.pid}, since {row.startedAt})"

    def follow(self, pid: ProjectId, last_id: int | None = None) -> Iterator[Event | None]:
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
        db = self.db
        target: str | None = None
        resume = last_id is not None
        if last_id is None:
            last_id = db.last_event_id(pid)  # before the snapshot: nothing can fall between
        snap = self.reader.snapshot(pid)
        spec = snap.spec
        budget = (spec.build.timeout + spec.health.timeout if spec else 900) + self.follow_grace
        if not resume:
            target = snap.desired.digest if snap.desired else None
            status = snap.status()
            ours = snap.deployment is not None and snap.deployment.digest == target
            if snap.deployment is not None and ours:
                replay = db.deployment_events(snap.deployment.id)
                for row in replay:
                    yield Event(row.id, row.type, row.payload())
                    if row.type in TERMINAL_EVENTS:
                        yield Event(row.id, STREAM_END, {})
                        return
                last_id = max([last_id, *(row.id for row in replay)])
            elif status.activeJob is None or status.activeJob.state != JobState.QUEUED:
                kind, data = state_event(status)
                yield Event(last_id, kind, data)
                yield Event(last_id, STREAM_END, {})
                return
        digests: dict[int, str | None] = {}
        started = quiet_since = time.monotonic()
        checked = -1.0
        down_since: float | None = None
        bell = db.bell
        while True:
            rung = bell.seq()
            batch = db.events_after(pid, last_id, limit=500)
            for row in batch:
                last_id = row.id
                if target is not None and self._digest_of(row.deployment, digests) != target:
                    continue
                yield Event(row.id, row.type, row.payload())
                if row.type in TERMINAL_EVENTS:
                    yield Event(row.id, STREAM_END, {})
                    return
                if row.type == EventType.CANCELLED and target is not None:
                    snap = self.reader.snapshot(pid)  # a newer edit: follow what it starts
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
                    f"{int(self.follow_grace)} s); `reconciler status {pid}` shows where it is"
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

    def log_path(self, pid: ProjectId, name: str) -> tuple[str | None, Path | None]:
        """The log an operator wants by ``name``: of the latest attempt (the version the
        project last built or started, which may not be the one serving), else of the
        current release; the build log of a build that failed is kept beside the releases."""
        if name not in LOG_NAMES:
            raise OperationError(ErrorKind.INVALID, f"log must be one of: {', '.join(LOG_NAMES)}")
        if name == "access":  # the edge's, shared by every site, across versions
            return None, self.releases.root.parent / "edge" / "access.log"
        attempt = self.db.latest_attempt(pid)
        failed_build = (
            attempt is not None
            and attempt.type == JobType.BUILD
            and attempt.state == JobState.FAILED
            and attempt.hash is None
        )
        if failed_build and name == "build":
            return None, self.releases.failed_build_log(pid)
        version = attempt.hash if attempt is not None and attempt.hash else None
        if version is None or self.releases.get(pid, version) is None:
            version = self.releases.current(pid)
        if version is None:
            return None, None
        return version, self.releases.project_dir(pid) / version / "logs" / f"{name}.log"

    def read_log(
        self, pid: ProjectId, name: str, *, offset: int | None, tail: int
    ) -> dict[str, Any]:
        """A chunk of the current release's build or app log, or of the site's access log,
        from ``offset`` or the tail."""
        version, path = self.log_path(pid, name)
        if path is None or not path.is_file():
            return {"log": name, "hash": version, "offset": 0, "text": ""}
        keep = _site_lines(pid) if name == "access" else None
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            if offset is None or offset > size:  # the tail (or the file was rotated)
                span = MAX_LOG_CHUNK * (8 if keep else 1)
                fh.seek(max(0, size - span))
                lines = fh.read().decode("utf-8", "replace").splitlines(keepends=True)
                if keep:
                    lines = [line for line in lines if keep(line)]
                text = "".join(lines[-tail:]) if tail > 0 else ""
                return {"log": name, "hash": version, "offset": size, "text": text}
            fh.seek(offset)
            data = fh.read(MAX_LOG_CHUNK)
        if keep:  # whole lines only, and only this site's
            data = data[: data.rfind(b"\n") + 1]
            text = "".join(
                line for line in data.decode("utf-8", "replace").splitlines(True) if keep(line)
            )
        else:
            text = data.decode("utf-8", "replace")
        return {"log": name, "hash": version, "offset": offset + len(data), "text": text}


def _site_lines(pid: ProjectId) -> Callable[[str], bool]:
    """Lines of the shared access log that belong to ``pid`` (its server's logger name)."""
    marker = f'"logger":"http.log.access.site-{pid}"'
    return lambda line: marker in line
