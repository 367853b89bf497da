"""What an operator changes: deploy, start, stop, pin, unpin and roll back, each an edit of the
project's desired file (``DesiredStore.edit``: the file written, or a commit in desired-git mode).

Nothing here touches a process, a container or the edge; the daemon converges to the edited
file. A rollback waits until the version serves (or fails); one that fails puts the file back
as it was, so a broken version is never left pinned.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from reconciler.core.kinds import JobState, JobType, Status
from reconciler.core.spec import GENERATION_MAX, ProjectId, ProjectSpec, is_hash8
from reconciler.readside.terms import ErrorKind, OperationError, _not_found
from reconciler.readside.views import (
    ActiveJob,
    ProductionStatus,
    Reader,
    RollbackResult,
    in_progress,
    queued,
    stopping,
)
from reconciler.stores.desired import DesiredFileError, DesiredStore, EditError, ProjectNotFound
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB

if TYPE_CHECKING:
    from reconciler.readside.readcache import ReadCache


def _check_version(version: str) -> None:
    if not is_hash8(version):
        raise OperationError(ErrorKind.INVALID, "the version must be 8 lowercase hex characters")


class Writes:
    if TYPE_CHECKING:  # what the operations it is part of provide
        db: StateDB
        desired: DesiredStore
        releases: ReleaseStore
        reader: Reader
        cache: ReadCache[Any]
        rollback_grace: float
        actor: str  # who asks, for the deployment's trigger: "api", "cli"

        def status(self, project_id: ProjectId) -> ProductionStatus: ...
        def relative(self, message: str) -> str: ...

    def _edit(
        self,
        project_id: ProjectId,
        mutate: Callable[[ProjectSpec], dict[str, object]],
        reason: str = "edit",
    ) -> bool:
        """Edit the desired file; True when it changed."""
        try:
            changed = self.desired.edit(project_id, mutate, reason=reason).changed
            if changed:
                self.db.note_trigger(project_id, f"{self.actor}: {reason}")
            return changed
        except ProjectNotFound:
            raise _not_found(project_id) from None
        except DesiredFileError as exc:
            raise OperationError(
                ErrorKind.CONFLICT,
                f"the desired file is invalid; fix it first: {exc.problems[0].message}",
            ) from None
        except EditError as exc:
            raise OperationError(ErrorKind.CONFLICT, self.relative(str(exc))) from None
        finally:
            self.cache.forget(project_id)

    def deploy(self, project_id: ProjectId) -> ProductionStatus:
        """A fresh build of the latest source (the generation bumped) unless one is under
        way; a pin is lifted (``deploy`` means: the newest)."""

        def mutate(spec: ProjectSpec) -> dict[str, object]:
            if in_progress(self.reader.snapshot(project_id).status()):
                return {}
            return {
                "production.state": "running",
                "production.version": "latest",
                # a change is what asks for a build: past the largest it goes round to 0
                "production.generation": (spec.production.generation + 1) % (GENERATION_MAX + 1),
            }

        changed = self._edit(project_id, mutate, "deploy")
        status = self.status(project_id)
        if changed:  # answer for this request (the daemon may already have moved on)
            return queued(status, ActiveJob(type=JobType.BUILD, state=JobState.QUEUED))
        return status

    def start(self, project_id: ProjectId) -> ProductionStatus:
        """Run what the file names (its pinned version, else the latest kept one) without a
        new build; a project that has no version yet is built."""
        changed = self._edit(project_id, lambda spec: {"production.state": "running"}, "start")
        status = self.status(project_id)
        if changed and status.activeJob is None and status.status != Status.RUNNING:
            return queued(status, ActiveJob(type=JobType.START, state=JobState.QUEUED))
        return status

    def stop(self, project_id: ProjectId) -> ProductionStatus:
        changed = self._edit(project_id, lambda spec: {"production.state": "stopped"}, "stop")
        status = self.status(project_id)
        if changed:
            return stopping(status, ActiveJob(type=JobType.STOP, state=JobState.QUEUED))
        return status

    def pin(self, project_id: ProjectId, version: str, *, force: bool = False) -> ProductionStatus:
        """Hold the project at a kept version (following stops until ``unpin``); a running
        project switches to it. Without ``force`` a version that never served is refused."""
        _check_version(version)
        self._check_kept(project_id, version, force=force)
        self._edit(project_id, lambda spec: {"production.version": version}, "pin")
        return self.status(project_id)

    def unpin(self, project_id: ProjectId) -> ProductionStatus:
        """Back to the latest version (and to following, for a project that follows)."""
        self._edit(project_id, lambda spec: {"production.version": "latest"}, "unpin")
        return self.status(project_id)

    def _check_kept(self, project_id: ProjectId, version: str, *, force: bool) -> None:
        if self.releases.get(project_id, version) is None:
            raise OperationError(ErrorKind.NOT_FOUND, f"version {version} not found (not kept)")
        if force:
            return
        outcome = self.db.versions(project_id).get(version)
        if outcome is None or outcome.servedAt is None:
            why = (
                f" (its last start: {outcome.error.splitlines()[0]})"
                if outcome and outcome.error
                else ""
            )
            raise OperationError(
                ErrorKind.REFUSED,
                f"version {version} never served{why}; pass force to run it anyway",
            )

    def rollback(
        self, project_id: ProjectId, target: str, *, wait: bool = True, force: bool = False
    ) -> RollbackResult:
        """Pin a kept version; wait until it serves (or fails, or the wait runs out). A
        rollback that fails restores the file's version as it was before."""
        _check_version(target)
        row = self.db.project(project_id)
        if row is not None and row.productionHash == target and row.productionStatus == "running":
            raise OperationError(ErrorKind.REFUSED, f"version {target} is already active")
        self._check_kept(project_id, target, force=force)
        before: list[str] = []

        def mutate(spec: ProjectSpec) -> dict[str, object]:
            before[:] = [spec.production.version]
            return {"production.state": "running", "production.version": target}

        self._edit(project_id, mutate, "rollback")
        if not wait:
            return RollbackResult(success=True, hash=target, message=f"Pinned version {target}")
        result = self._wait_for(project_id, target)
        if not result.success and result.hash is None and before and before[0] != target:
            self._put_back(project_id, target, before[0])
        return result

    def _put_back(self, project_id: ProjectId, target: str, previous: str) -> None:
        """The rolled-back-to version failed: the file names what it named before (unless
        it was edited since)."""

        def mutate(spec: ProjectSpec) -> dict[str, object]:
            if spec.production.version != target:
                return {}
            return {"production.version": previous}

        with contextlib.suppress(OperationError):
            self._edit(project_id, mutate, "rollback failed: put back")

    def _wait_for(self, project_id: ProjectId, target: str) -> RollbackResult:
        """A failed rollback has no ``hash``; one still pending (the daemon down) has it."""
        spec = self.reader.snapshot(project_id).spec
        assert spec is not None
        digest = spec.digest()
        budget = spec.health.timeout + self.rollback_grace
        deadline = time.monotonic() + budget
        bell = self.db.bell
        while time.monotonic() < deadline:
            rung = bell.seq()
            snap = self.reader.snapshot(project_id)
            row = snap.row
            if row is not None:
                if row.productionHash == target and row.productionStatus == Status.RUNNING:
                    if snap.converged():
                        return RollbackResult(
                            success=True, hash=target, message=f"Rolled back to version {target}"
                        )
                elif row.productionStatus == Status.FAILED and row.failedDigest == digest:
                    error = self.relative(row.productionError or "rollback failed")
                    return RollbackResult(
                        success=False,
                        error=f"{error}\n(the desired file names the version it named before)",
                    )
            bell.wait(rung, 0.25)  # the daemon's next commit (or a desired file settling)
        return RollbackResult(
            success=False,
            hash=target,
            error=f"version {target} is pinned, but the daemon did not converge within "
            f"{int(budget)} s; is `reconciler daemon` running?",
        )
