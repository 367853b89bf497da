"""The release store: immutable, content-addressed releases under ``data/production/<id>/``.

::

    <id>/<hash8>/           dist/ logs/ manifest.json   (complete; never changed but logs/)
    <id>/current -> <hash8> relative symlink, switched atomically, never partial
    <id>/.staging-*         work in progress; removed at startup
    <id>/.trash-*           a release being deleted; removed at startup
    <id>/activations.json   when each version was last switched to (for retention)
    <id>/preview -> <hash8> the release being checked through the edge before it goes live
    <id>/slot -> slots/a|b  which blue-green slot the edge routes to (slots/a/a, slots/b/b
                            are the marker files its ``file`` matcher looks for)
    <id>/logs/build.log     the output of the last build that failed (no release to hold it)
    <id>/tasks/0..k-1       a swarm service's running tasks, one host:port per file (each
                            task in turn): the edge reads the address to dial from them

How a version is named is in ``release``. A release holds what was built and nothing else:
what runs is ``dist/``. (The source is not snapshotted: many sources build the same dist, so
a snapshot beside it could only be stale.)
When the build output is the source dir itself (``build.output: .``), its top-level
``.git`` is left out of the hash and the copy, so a commit alone does not make a new version.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reconciler.core.errors import ReleaseError
from reconciler.core.fileio import atomic_write, fsync_dir
from reconciler.core.spec import ProjectId, is_hash8
from reconciler.core.timeutil import utcnow
from reconciler.stores.releases.links import SiteLinks
from reconciler.stores.releases.release import (  # noqa: F401
    _ZEROS,
    ACTIVATIONS,
    CHUNK,
    CURRENT,
    MANIFEST,
    PREVIEW,
    SLOT,
    SLOT_NAMES,
    SLOTS,
    STAGING_PREFIX,
    TASKS,
    TRASH_PREFIX,
    Limits,
    Release,
    Staging,
    Version,
    _fsync_tree,
    _is_inside,
    _TreeHasher,
    _version,
    _walk,
    _write_keeping_holes,
    hash_dist,
    logger,
)
from reconciler.stores.releases.staging import Stager


class ReleaseStore(Stager, SiteLinks):
    """Releases of every project under one root (``data/production``)."""

    def __init__(self, root: Path, *, limits: Limits = Limits()) -> None:  # noqa: B008
        self.root = Path(root).absolute()
        self.limits = limits
        self._manifests: dict[str, tuple[tuple[int, int, int], dict[str, Any] | None]] = {}

    def project_dir(self, project_id: ProjectId) -> Path:
        return self.root / project_id

    def release_dir(self, project_id: ProjectId, version: str) -> Path:
        if not is_hash8(version):
            raise ReleaseError(f"invalid version {version!r}")
        return self.project_dir(project_id) / version

    def logs_dir(self, project_id: ProjectId, version: str) -> Path:
        """``<id>/<version>/logs``: the one part of a release that changes after it is made."""
        return self.project_dir(project_id) / version / "logs"

    def log(self, project_id: ProjectId, version: str, name: str) -> Path:
        """A release's log by name (``app``, ``build``)."""
        return self.logs_dir(project_id, version) / f"{name}.log"

    # -- startup ---------------------------------------------------------------------------

    # -- staging ---------------------------------------------------------------------------

    # -- reading ---------------------------------------------------------------------------

    def source_of(self, project_id: ProjectId, version: str | None) -> dict[str, Any] | None:
        """What a release was built from (its manifest's ``source``: a git commit), if known."""
        if version is None or not is_hash8(version):
            return None
        manifest = self._manifest(self.project_dir(project_id) / version)
        source = manifest.get("source") if manifest else None
        return source if isinstance(source, dict) else None

    def app_of(self, project_id: ProjectId, version: str | None) -> dict[str, Any] | None:
        """How a release's build was worked out from its files (its manifest's ``app``: what
        was recognised, and the commands it builds, starts and releases with), if it was."""
        if version is None or not is_hash8(version):
            return None
        manifest = self._manifest(self.project_dir(project_id) / version)
        app = manifest.get("app") if manifest else None
        return app if isinstance(app, dict) else None

    def runs_app(self, project_id: ProjectId, version: str | None) -> bool:
        """Does the release run as an app whatever the spec says: it starts one of its own
        (found at its build), or it keeps links that leave it? Such a release is never
        served as files."""
        if version is None or not is_hash8(version):
            return False
        manifest = self._manifest(self.project_dir(project_id) / version)
        if not manifest:
            return False
        app = manifest.get("app")
        starts = isinstance(app, dict) and isinstance(app.get("start"), str)
        return starts or bool(manifest.get("linksOut"))

    def get(self, project_id: ProjectId, version: str) -> Release | None:
        if not is_hash8(version):
            return None
        path = self.project_dir(project_id) / version
        try:
            mode = os.stat(path, follow_symlinks=False).st_mode
        except OSError:
            return None
        return self._release(project_id, version, path, mode)

    def _release(
        self, project_id: ProjectId, version: str, path: Path, mode: int
    ) -> Release | None:
        """The release at ``path`` (``mode``: its lstat mode) if it is a complete one."""
        if not stat.S_ISDIR(mode):  # a symlink, a file
            return None
        manifest = self._manifest(path)
        if manifest is None or manifest.get("hash") != version:
            return None
        return Release(
            project_id, version, str(manifest["digest"]), path, str(manifest["createdAt"])
        )

    def generation(self, project_id: ProjectId, version: str) -> int | None:
        """The generation a kept release was built for (from its manifest)."""
        if not is_hash8(version):
            return None
        manifest = self._manifest(self.project_dir(project_id) / version)
        value = manifest.get("generation") if manifest else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def versions(self, project_id: ProjectId) -> list[Release]:
        directory = self.project_dir(project_id)
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
        releases = []
        for entry in entries:
            if not is_hash8(entry.name):
                continue
            try:
                mode = entry.stat(follow_symlinks=False).st_mode  # from the dir entry's type
            except OSError:
                continue
            release = self._release(project_id, entry.name, directory / entry.name, mode)
            if release is not None:
                releases.append(release)
        releases.sort(key=lambda r: (r.created_at, r.hash), reverse=True)
        return releases

    def current(self, project_id: ProjectId) -> str | None:
        """The version ``current`` points at, if it points at a complete release."""
        link = self.project_dir(project_id) / CURRENT
        try:
            target = os.readlink(link)
        except OSError:
            return None
        if not is_hash8(target) or self.get(project_id, target) is None:
            return None
        return target

    def points_at(self, project_id: ProjectId, version: str) -> bool:
        """Does ``current`` name ``version``? One readlink: the cheap check a health poll of
        every project can afford (``current()`` also checks the release is complete)."""
        try:
            return os.readlink(self.project_dir(project_id) / CURRENT) == version
        except OSError:
            return False

    def history(self, project_id: ProjectId, *, active: str | None = None) -> list[Version]:
        """Versions newest first; ``active`` defaults to what ``current`` points at."""
        if active is None:
            active = self.current(project_id)
        activations = self._activations(project_id)
        return [
            Version(r.hash, r.hash == active, r.created_at, activations.get(r.hash))
            for r in self.versions(project_id)
        ]

    # -- switching -------------------------------------------------------------------------

    def _point(self, project_id: ProjectId, name: str, target: str) -> None:
        """Point the link ``<id>/<name>`` at ``target``: a temp link renamed over it, so a
        reader sees the old target or the new one, never none."""
        directory = self.project_dir(project_id)
        link = directory / name
        if not link.is_symlink() and link.exists():  # a dir or file put there by hand
            aside = directory / f"{TRASH_PREFIX}{name}-{secrets.token_hex(6)}"
            os.rename(link, aside)
            if aside.is_dir():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                aside.unlink()
        tmp = directory / f".link-{name}-{secrets.token_hex(6)}"
        os.symlink(target, tmp)
        try:
            os.replace(tmp, link)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(directory)

    def switch(self, project_id: ProjectId, version: str) -> None:
        """Point ``current`` at a complete release, atomically, and record the activation."""
        if self.get(project_id, version) is None:
            raise ReleaseError(f"version {version} of {project_id} is not a complete release")
        self._point(project_id, CURRENT, version)
        directory = self.project_dir(project_id)
        activations = self._activations(project_id)
        activations[version] = utcnow()
        try:  # after the switch, history only: a full disk must not make it look undone
            atomic_write(
                directory / ACTIVATIONS, json.dumps(activations, indent=2).encode() + b"\n"
            )
        except OSError as exc:
            logger.warning("%s: the activation of %s is not recorded: %s", project_id, version, exc)

    def usage(self, project_id: ProjectId) -> int:
        """Bytes the project's dir holds on disk (a file hard-linked between releases counts
        once; blocks, so a sparse file counts what it really takes)."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for top, dirs, files in os.walk(self.project_dir(project_id)):
            for name in files + dirs:
                try:
                    st = os.lstat(os.path.join(top, name))
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
                total += st.st_blocks * 512
        return total

    def _activations(self, project_id: ProjectId) -> dict[str, str]:
        try:
            data = json.loads((self.project_dir(project_id) / ACTIVATIONS).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): str(v) for k, v in data.items() if is_hash8(k)}

    # -- retention -------------------------------------------------------------------------

    def prune(self, project_id: ProjectId, *, keep: int, protect: Iterable[str] = ()) -> list[str]:
        """Delete all but the ``keep`` most recently active versions.

        Never deletes the current version or anything in ``protect`` (a version being
        deployed, a pinned version, one a running instance uses). Versions never activated
        rank below every activated one, newest built first.
        """
        protected = {v for v in protect if v} | {self.current(project_id) or ""}
        activations = self._activations(project_id)
        ranked = sorted(
            self.versions(project_id),
            key=lambda r: (r.hash in activations, activations.get(r.hash, ""), r.created_at),
            reverse=True,
        )
        kept = {r.hash for r in ranked[: max(keep, 1)]} | protected
        removed = []
        for release in ranked:
            if release.hash in kept:
                continue
            self.remove(project_id, release.hash)
            removed.append(release.hash)
        if removed:
            remaining = {k: v for k, v in activations.items() if k not in removed}
            atomic_write(
                self.project_dir(project_id) / ACTIVATIONS,
                json.dumps(remaining, indent=2).encode() + b"\n",
            )
        return removed

    def remove(self, project_id: ProjectId, version: str) -> None:
        """Delete one release: rename it away first so no partial <hash8> is ever seen."""
        path = self.release_dir(project_id, version)
        trash = path.parent / f"{TRASH_PREFIX}{version}-{secrets.token_hex(4)}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        fsync_dir(path.parent)
        with contextlib.suppress(OSError):
            shutil.rmtree(trash)
