"""The daemon log tells the operator about desired files it refuses: once per change of what
is wrong (``path:line:col: message`` per problem), and once when a file is accepted again.
A file still settling (no final newline yet) is not a refusal."""

from __future__ import annotations

import logging
import threading

from reconciler.core.spec import ProjectId
from reconciler.stores.desired import DesiredFile, Problem

logger = logging.getLogger(__name__)


class Refusals:
    def __init__(self) -> None:
        self._projects: dict[ProjectId, str] = {}  # what was logged as wrong, per project
        self._orphans: dict[str, str] = {}  # per file that names no valid project id
        self._lock = threading.Lock()

    def project(self, project_id: ProjectId, desired: DesiredFile | None) -> None:
        """Log what is wrong with a project's file when it changes, and its recovery."""
        if desired is not None and desired.settles_at is not None:
            return  # being written, or saved without a final newline: read when it settles
        wrong = None
        if desired is not None and desired.spec is None:
            wrong = "; ".join(str(p) for p in desired.problems)
        with self._lock:
            before = self._projects.get(project_id)
            if wrong is None:
                self._projects.pop(project_id, None)
            else:
                self._projects[project_id] = wrong
        if wrong is not None and wrong != before:
            logger.warning(
                "refused desired file: %s (the last good desired state stays in force)", wrong
            )
        elif wrong is None and before is not None and desired is not None:
            logger.info("%s: accepted %s again", project_id, desired.path)

    def orphans(self, problems: list[Problem]) -> None:
        """Files that cannot be tied to a project (a bad id in the name), once each."""
        current = {str(p.path): str(p) for p in problems}
        with self._lock:
            new = [text for path, text in current.items() if self._orphans.get(path) != text]
            self._orphans = current
        for text in new:
            logger.warning("ignored desired file: %s", text)
