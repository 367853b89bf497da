"""A project's logs as an operator asks for them by name: the build log of the latest attempt, the
app log of the version that serves, the edge's access log."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.core.config import DataLayout
from reconciler.core.kinds import (
    JobState,
    JobType,
)
from reconciler.core.spec import (
    ProjectId,
)
from reconciler.readside.terms import (
    LOG_NAMES,
    MAX_LOG_CHUNK,
    ErrorKind,
    OperationError,
    _site_lines,
)
from reconciler.stores.facts import spec_from_row
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB


class LogReads:
    if TYPE_CHECKING:  # what the operations it is part of provide
        db: StateDB
        releases: ReleaseStore
        layout: DataLayout

    def log_path(self, project_id: ProjectId, name: str) -> tuple[str | None, Path | None]:
        """The log an operator wants by ``name``: of the latest attempt (the version the
        project last built or started, which may not be the one serving), else of the
        current release; the build log of a build that failed is kept beside the releases."""
        if name not in LOG_NAMES:
            raise OperationError(ErrorKind.INVALID, f"log must be one of: {', '.join(LOG_NAMES)}")
        if name == "access":  # the edge's, shared by every site, across versions
            return None, self.layout.access_log
        attempt = self.db.latest_attempt(project_id)
        failed_build = (
            attempt is not None
            and attempt.type == JobType.BUILD
            and attempt.state == JobState.FAILED
            and attempt.hash is None
        )
        if failed_build and name == "build":
            return None, self.releases.failed_build_log(project_id)
        version = attempt.hash if attempt is not None and attempt.hash else None
        if version is None or self.releases.get(project_id, version) is None:
            version = self.releases.current(project_id)
        if version is None:
            return None, None
        return version, self.releases.log(project_id, version, name)

    def _site_lines(self, project_id: ProjectId) -> Callable[[str], bool]:
        site = self.db.site(project_id)
        spec = spec_from_row(self.db.project(project_id))
        return _site_lines(site.publicPort if site else None, spec.domains if spec else ())

    def read_log(
        self, project_id: ProjectId, name: str, *, offset: int | None, tail: int
    ) -> dict[str, Any]:
        """A chunk of the current release's build or app log, or of the site's access log,
        from ``offset`` or the tail."""
        version, path = self.log_path(project_id, name)
        if path is None or not path.is_file():
            return {"log": name, "hash": version, "offset": 0, "text": ""}
        keep = self._site_lines(project_id) if name == "access" else None
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
