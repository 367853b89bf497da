"""What an operator can do to a project, over the desired files and the state database.

One implementation for both the HTTP API and the local CLI: status, deploy, stop, history,
rollback, the event stream and logs. Changes go through ``DesiredStore.edit`` only; nothing
here touches processes, containers or runtimes, so it all works while the daemon is down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.api.models import (
    History,
    ProductionStatus,
    ProjectList,
    ProjectSummary,
    RollbackResult,
    Version,
)
from reconciler.api.status import in_progress, production_status
from reconciler.desired import DesiredFileError, DesiredStore, EditError, ProjectNotFound
from reconciler.releases import ReleaseStore
from reconciler.spec import InvalidProjectId, ProjectId, ProjectSpec, check_project_id, is_hash8
from reconciler.state import StateDB

TERMINAL = ("production.ready", "production.error", "production.stopped")
LOG_NAMES = ("build", "app")
MAX_LOG_CHUNK = 256 * 1024


class OperationError(Exception):
    """A request that cannot be served; ``status`` is the HTTP status it maps to."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
    heartbeat: float = 15.0
    rollback_grace: float = 30.0

    # -- lookups ---------------------------------------------------------------------------

    def project(self, raw: str) -> ProjectId:
        """A project id that passes the allowlist and has a desired file."""
        try:
            pid = check_project_id(raw)
        except InvalidProjectId as exc:
            raise OperationError(400, str(exc)) from None
        if self.desired.path_for(pid) is None:
            raise OperationError(404, f"project {pid!r} not found: there is no desired file for it")
        return pid

    def spec(self, pid: ProjectId) -> ProjectSpec | None:
        loaded = self.desired.load(pid)
        return loaded.in_force if loaded else None

    def relative(self, message: str) -> str:
        """Name desired files relative to the desired dir: never leak absolute paths."""
        return message.replace(f"{self.desired.directory}/", "")

    # -- reads -----------------------------------------------------------------------------

    def status(self, pid: ProjectId) -> ProductionStatus:
        status = production_status(self.spec(pid), self.db.project(pid), self.db.active_job(pid))
        if status.error:
            status = status.model_copy(update={"error": self.relative(status.error)})
        return status

    def projects(self) -> ProjectList:
        scan = self.desired.scan()
        items = []
        for pid, loaded in sorted(scan.projects.items()):
            items.append(
                ProjectSummary(
                    id=pid,
                    file=loaded.path.name,
                    valid=loaded.valid,
                    production=self.status(pid),
                    error=loaded.error and self.relative(loaded.error),
                )
            )
        for problem in scan.orphans:
            items.append(
                ProjectSummary(
                    id=None,
                    file=problem.path.name,
                    valid=False,
                    production=None,
                    error=f"{problem.path.name}:{problem.line}:{problem.column}: {problem.message}",
                )
            )
        return ProjectList(projects=items)

    def history(self, pid: ProjectId) -> History:
        row = self.db.project(pid)
        active = row.productionHash if row and row.productionStatus != "stopped" else ""
        return History(
            versions=[
                Version(hash=v.hash, isActive=v.is_active, createdAt=v.created_at)
                for v in self.releases.history(pid, active=active or "")
            ]
        )

    # -- writes ----------------------------------------------------------------------------

    def _edit(self, pid: ProjectId, mutate: Callable[[ProjectSpec], dict[str, object]]) -> None:
        try:
            self.desired.edit(pid, mutate)
        except ProjectNotFound:
            raise OperationError(
                404, f"project {pid!r} not found: there is no desired file for it"
            ) from None
        except DesiredFileError as exc:
            raise OperationError(
                409, f"the desired file is invalid; fix it first: {exc.problems[0].message}"
            ) from None
        except EditError as exc:
            raise OperationError(409, self.relative(str(exc))) from None

    def deploy(self, pid: ProjectId) -> ProductionStatus:
        """Bump the generation unless a deploy is already in progress."""

        def mutate(spec: ProjectSpec) -> dict[str, object]:
            status = production_status(spec, self.db.project(pid), self.db.active_job(pid))
            if in_progress(status):
                return {}
            return {
                "production.state": "running",
                "production.version": "latest",
                "production.generation": spec.production.generation + 1,
            }

        self._edit(pid, mutate)
        return self.status(pid)

    def stop(self, pid: ProjectId) -> ProductionStatus:
        self._edit(pid, lambda spec: {"production.state": "stopped"})
        return self.status(pid)

    def rollback(self, pid: ProjectId, target: str, *, wait: bool = True) -> RollbackResult:
        """Pin a kept version; wait until it serves (or fails, or the wait runs out)."""
        if not is_hash8(target):
            raise OperationError(400, "toHash must be 8 lowercase hex characters")
        if self.releases.get(pid, target) is None:
            raise OperationError(404, f"version {target} not found (not kept)")
        row = self.db.project(pid)
        if row is not None and row.productionHash == target and row.productionStatus == "running":
            raise OperationError(400, f"version {target} is already active")
        self._edit(pid, lambda spec: {"production.state": "running", "production.version": target})
        if not wait:
            return RollbackResult(success=True, hash=target, message=f"Pinned version {target}")
        spec = self.spec(pid)
        assert spec is not None
        digest = spec.digest()
        budget = spec.health.timeout + self.rollback_grace
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            row = self.db.project(pid)
            if row is not None:
                converged = row.productionHash == target and row.productionStatus == "running"
                if converged and self.db.active_job(pid) is None:
                    return RollbackResult(
                        success=True, hash=target, message=f"Rolled back to version {target}"
                    )
                if row.productionStatus == "failed" and row.failedDigest == digest:
                    error = self.relative(row.productionError or "rollback failed")
                    return RollbackResult(success=False, error=error)
            time.sleep(self.poll_interval / 2)
        return RollbackResult(
            success=False,
            error=f"version {target} is pinned, but the daemon did not converge within "
            f"{int(budget)} s; is `reconciler daemon` running?",
        )

    # -- events and logs -------------------------------------------------------------------

    def follow(self, pid: ProjectId, last_id: int | None = None) -> Iterator[Event | None]:
        """The current deployment's events, then new ones until it ends.

        Without ``last_id``: replay the deployment in progress; or follow the one desired
        state asks for; or, with nothing in progress, one event with the current state. With
        ``last_id``: every later event (resume after a disconnect). Ends with ``stream.end``.
        Yields None (a heartbeat) after ``heartbeat`` seconds without events.
        """
        db = self.db
        if last_id is None:
            deployment = db.latest_deployment(pid)
            status = self.status(pid)
            if deployment is not None and deployment.finishedAt is None:
                replay = db.deployment_events(deployment.id)
                for row in replay:
                    yield Event(row.id, row.type, row.payload())
                    if row.type in TERMINAL:
                        yield Event(row.id, "stream.end", {})
                        return
                last_id = replay[-1].id if replay else db.last_event_id(pid)
            elif status.activeJob is not None and status.activeJob.state == "queued":
                last_id = db.last_event_id(pid)
            else:
                marker = db.last_event_id(pid)
                kind, data = state_event(status)
                yield Event(marker, kind, data)
                yield Event(marker, "stream.end", {})
                return
        quiet_since = time.monotonic()
        while True:
            batch = db.events_after(pid, last_id, limit=500)
            for row in batch:
                last_id = row.id
                yield Event(row.id, row.type, row.payload())
                if row.type in TERMINAL:
                    yield Event(row.id, "stream.end", {})
                    return
            if batch:
                quiet_since = time.monotonic()
                continue
            if time.monotonic() - quiet_since >= self.heartbeat:
                yield None  # a heartbeat
                quiet_since = time.monotonic()
            time.sleep(self.poll_interval)

    def log_path(self, pid: ProjectId, name: str) -> tuple[str | None, Path | None]:
        if name not in LOG_NAMES:
            raise OperationError(400, f"log must be one of: {', '.join(LOG_NAMES)}")
        version = self.releases.current(pid)
        if version is None:
            return None, None
        return version, self.releases.project_dir(pid) / version / "logs" / f"{name}.log"

    def read_log(
        self, pid: ProjectId, name: str, *, offset: int | None, tail: int
    ) -> dict[str, Any]:
        """A chunk of the current release's build or app log, from ``offset`` or the tail."""
        version, path = self.log_path(pid, name)
        if path is None or not path.is_file():
            return {"log": name, "hash": version, "offset": 0, "text": ""}
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            if offset is None or offset > size:
                start = max(0, size - MAX_LOG_CHUNK)
                fh.seek(start)
                data = fh.read()
                lines = data.decode("utf-8", "replace").splitlines(keepends=True)
                text = "".join(lines[-tail:]) if tail > 0 else ""
                return {"log": name, "hash": version, "offset": size, "text": text}
            fh.seek(offset)
            data = fh.read(MAX_LOG_CHUNK)
        return {
            "log": name,
            "hash": version,
            "offset": offset + len(data),
            "text": data.decode("utf-8", "replace"),
        }


def state_event(status: ProductionStatus) -> tuple[str, dict[str, Any]]:
    if status.status == "running":
        return "production.ready", {
            "status": "running", "url": status.url, "port": status.port, "hash": status.hash,
        }  # fmt: skip
    if status.status == "failed":
        return "production.error", {"error": status.error, "status": "failed"}
    if status.status == "stopped":
        return "production.stopped", {"status": "stopped"}
    return "production.status", status.model_dump()
