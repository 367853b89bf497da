"""Forgetting a project for good: what a removed branch preview leaves (its releases and
their images, its logs, its git and package caches, its rows). Only for projects whose
desired file the daemon itself removed, once they have stopped."""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

from reconciler.controller.observe import Runtimes
from reconciler.core.spec import ProjectId
from reconciler.stores.facts import spec_from_row
from reconciler.stores.gitcache import GitCache
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB

logger = logging.getLogger(__name__)


class Forget:
    def __init__(
        self, db: StateDB, releases: ReleaseStore, runtimes: Runtimes, *, git: Path, caches: Path
    ) -> None:
        self.db = db
        self.releases = releases
        self.runtimes = runtimes
        self.git = GitCache(git)
        self.caches = caches

    def __call__(self, project_id: ProjectId) -> None:
        versions = [r.hash for r in self.releases.versions(project_id)]
        runtime = self.runtimes.for_spec(spec_from_row(self.db.project(project_id)))
        for version in versions:
            with contextlib.suppress(Exception):  # an engine away: the image stays
                runtime.remove_version(project_id, version)
        shutil.rmtree(self.releases.project_dir(project_id), ignore_errors=True)
        shutil.rmtree(self.caches / project_id, ignore_errors=True)
        with contextlib.suppress(Exception):
            self.git.forget(project_id)
        self.db.forget_project(project_id)
        logger.info("%s: forgotten (%d release(s) removed)", project_id, len(versions))
