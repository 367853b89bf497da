"""Branch previews: each branch of a git source that its project's ``previews`` asks for (a
pattern match, or the branch of an open pull or merge request a webhook told of) is built and
served as a project of its own, ``<id>--<branch>``, from a desired file the daemon writes in
``data/previews/desired/`` (the project's spec with that branch as its ref, following it, no
domains, sleeping after ``sleep.after`` or 15 minutes). It is updated by every push to the
branch (it follows it), and removed with its releases and records when the branch is gone or
its request closed.

The branches are read with one ``git ls-remote --heads`` per project every ``poll`` seconds,
and at once when a webhook nudges the project. A preview beyond ``previews.max`` awake ones is
put to sleep (``family``, which the sleeper asks).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from reconciler.core.fileio import atomic_write
from reconciler.core.kinds import Status
from reconciler.core.spec import (
    GitSource,
    InvalidProjectId,
    Production,
    ProjectId,
    ProjectSpec,
    Sleep,
    check_project_id,
)
from reconciler.sources.hooks import open_requests
from reconciler.stores.desired import DesiredStore
from reconciler.stores.gitcache import GitError, ls_heads
from reconciler.stores.state import StateDB

logger = logging.getLogger(__name__)

PREVIEW_SLEEP = 900.0  # a preview sleeps after 15 minutes without a request, unless told
HEADER = "# a branch preview, written by reconciler: {parent} at {branch} (edits are replaced)\n"
MAX_ID = 63


@dataclass(frozen=True)
class Preview:
    parent: ProjectId
    branch: str
    project: ProjectId


def preview_id(parent: ProjectId, branch: str) -> ProjectId:
    """``<parent>--<branch>`` in the characters a project id may hold; a long or lossy one
    ends in 6 hex characters of the branch's name so that two branches never share one."""
    slug = re.sub(r"[^a-z0-9]+", "-", branch.lower()).strip("-")
    room = MAX_ID - len(parent) - 2
    if slug and len(slug) <= room and slug == branch:
        return check_project_id(f"{parent}--{slug}")
    tag = hashlib.sha256(branch.encode()).hexdigest()[:6]
    cut = slug[: max(0, room - 7)].strip("-")
    return check_project_id(f"{parent}--{cut}-{tag}" if cut else f"{parent}--{tag}")


def preview_spec(spec: ProjectSpec, branch: str, location: str | None = None) -> ProjectSpec:
    """The parent's spec, for ``branch``: following it, no domains, no previews of its own,
    asleep when idle. ``location``: the repository as resolved beside the parent's file (a
    relative path would mean another dir beside the preview's)."""
    git = spec.git
    assert git is not None
    after = spec.sleep.after if spec.sleep.after is not None else PREVIEW_SLEEP
    source = {**git.model_dump(), "ref": branch, "git": location or git.git}
    return spec.model_copy(
        update={
            "source": GitSource.model_validate(source),
            "production": Production(state="running", generation=1, follow=True),
            "domains": [],
            "previews": type(spec.previews)(),
            "sleep": Sleep(after=after),
        }
    )


def preview_text(
    parent: ProjectId, branch: str, spec: ProjectSpec, location: str | None = None
) -> str:
    data = preview_spec(spec, branch, location).model_dump(mode="json", exclude_defaults=True)
    data["production"] = {"state": "running", "generation": 1, "follow": True}
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    return HEADER.format(parent=parent, branch=branch) + body


class BranchPreviews:
    """A part of the daemon: keeps the previews' desired files as the branches say."""

    name = "previews"

    def __init__(
        self,
        root: Path,
        desired: DesiredStore,
        db: StateDB,
        enqueue: Callable[[ProjectId], None],
        purge: Callable[[ProjectId], None],
        *,
        poll: float = 60.0,
        heads: Callable[[str], dict[str, str]] = ls_heads,
    ) -> None:
        self.files = root / "desired"
        self.requests = root / "requests"
        self.desired = desired
        self.db = db
        self.enqueue = enqueue
        self.purge = purge  # a removed preview's releases and records, once it has stopped
        self.poll = poll
        self.heads = heads
        self._parents: dict[ProjectId, ProjectSpec] = {}  # projects that ask for previews
        self._previews: dict[ProjectId, Preview] = {}  # by the preview's project id
        self._texts: dict[ProjectId, str] = {}  # what each preview's file was written with
        self._leaving: set[ProjectId] = set()  # removed: purged once stopped
        self._nudged: set[ProjectId] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="previews", daemon=True)

    # -- what the daemon tells ---------------------------------------------------------------

    def start(self) -> None:
        self.files.mkdir(parents=True, exist_ok=True)
        for name in sorted(os.listdir(self.files)):  # the previews a previous daemon made
            found = self._read_header(self.files / name)
            if found is not None:
                self._previews[found.project] = found
                self._texts[found.project] = (self.files / name).read_text()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(10)

    def track(self, project_id: ProjectId, spec: ProjectSpec | None, _path: Path | None) -> None:
        """Each project's spec as the controller reads it: parents come, change and go."""
        wanted = spec is not None and spec.previews.wanted and spec.git is not None
        with self._lock:
            if project_id in self._previews:
                return
            before = self._parents.get(project_id)
            if wanted and spec is not None:
                self._parents[project_id] = spec
            else:
                self._parents.pop(project_id, None)
            had = any(p.parent == project_id for p in self._previews.values())
        if (wanted and before != spec) or (not wanted and (before is not None or had)):
            self.nudge(project_id)

    def nudge(self, project_id: ProjectId) -> None:
        """Check this project's branches now (a webhook, a changed spec)."""
        with self._lock:
            self._nudged.add(project_id)
        self._wake.set()

    def family(self, project_id: ProjectId) -> tuple[str, int] | None:
        """A preview's parent, and how many of its previews may be awake at once."""
        with self._lock:
            preview = self._previews.get(project_id)
            spec = self._parents.get(preview.parent) if preview is not None else None
        return (preview.parent, spec.previews.max) if preview and spec else None

    def of(self, parent: ProjectId) -> list[Preview]:
        with self._lock:
            return [p for p in self._previews.values() if p.parent == parent]

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        next_all = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                nudged, self._nudged = self._nudged, set()
                parents = set(self._parents) | {p.parent for p in self._previews.values()}
            todo = nudged
            if now >= next_all:
                todo, next_all = parents | nudged, now + self.poll
            for parent in sorted(todo):
                try:
                    self.check(parent)
                except Exception:
                    logger.exception("%s: checking its previews failed", parent)
            self._purge_stopped()
            self._wake.wait(min(2.0, max(0.0, next_all - time.monotonic())))
            self._wake.clear()

    def check(self, parent: ProjectId) -> None:
        """Make the parent's previews what its branches and requests say (its desired file
        read now: gone, its previews go; invalid, they stay as they are)."""
        desired = self.desired.read(parent)
        if desired is not None and desired.spec is None:
            return
        spec = desired.spec if desired is not None else None
        wanted: dict[str, ProjectId] = {}
        location = None
        if desired is not None and spec is not None and spec.git is not None:
            location = spec.git.location(desired.path)
        if spec is not None and spec.git is not None and spec.previews.wanted and location:
            try:
                heads = self.heads(location)
            except GitError as exc:
                logger.warning("%s: previews: cannot list its branches: %s", parent, exc)
                return
            patterns = spec.previews.branches
            branches = {b for b in heads if any(fnmatch.fnmatchcase(b, p) for p in patterns)}
            if spec.previews.requests:
                branches |= set(open_requests(self.requests, parent).values()) & set(heads)
            branches.discard(spec.git.ref)  # production itself
            for branch in sorted(branches):
                with contextlib.suppress(InvalidProjectId):
                    wanted[branch] = preview_id(parent, branch)
        for branch, project in wanted.items():
            assert spec is not None
            self._write(Preview(parent, branch, project), spec, location)
        for preview in self.of(parent):
            if preview.branch not in wanted:
                self._remove(preview)

    def _write(self, preview: Preview, spec: ProjectSpec, location: str | None) -> None:
        path = self.files / f"{preview.project}.yaml"
        if self.desired.path_for(preview.project) not in (None, path):
            logger.warning("%s: a desired file of that name exists: no preview of %s",
                           preview.project, preview.branch)  # fmt: skip
            return
        text = preview_text(preview.parent, preview.branch, spec, location)
        with self._lock:
            new = preview.project not in self._previews
            self._previews[preview.project] = preview
            self._leaving.discard(preview.project)
            same = self._texts.get(preview.project) == text and path.exists()
            self._texts[preview.project] = text
        if same:
            return  # an edit through the API (a deploy of the preview) is kept
        atomic_write(path, text.encode())
        logger.info("%s: preview of %s's branch %s %s", preview.project, preview.parent,
                    preview.branch, "made" if new else "updated")  # fmt: skip
        self.enqueue(preview.project)

    def _remove(self, preview: Preview) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.files / f"{preview.project}.yaml")
        with self._lock:
            self._leaving.add(preview.project)
            self._texts.pop(preview.project, None)
        logger.info("%s: %s's branch %s is gone (or its request closed): removing its "
                    "preview", preview.project, preview.parent, preview.branch)  # fmt: skip
        self.enqueue(preview.project)

    def _purge_stopped(self) -> None:
        with self._lock:
            leaving = sorted(self._leaving)
        for project in leaving:
            row = self.db.project(project)
            if row is not None and row.productionStatus != Status.STOPPED:
                continue
            if self.db.instances(project) or self.desired.path_for(project) is not None:
                continue
            self.purge(project)
            with self._lock:
                if project in self._leaving:
                    self._leaving.discard(project)
                    self._previews.pop(project, None)

    def _read_header(self, path: Path) -> Preview | None:
        try:
            with open(path) as fh:
                first = fh.readline()
            project = check_project_id(path.name.removesuffix(".yaml"))
        except (OSError, InvalidProjectId):
            return None
        found = re.match(r"^# a branch preview, written by reconciler: (\S+) at (\S+) ", first)
        if found is None:
            return None
        with contextlib.suppress(InvalidProjectId):
            return Preview(check_project_id(found.group(1)), found.group(2), project)
        return None
