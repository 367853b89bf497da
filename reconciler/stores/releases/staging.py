"""Making a release: a staging dir filled by a build, hashed, and committed by rename (or reused
when the same content is kept already); a failed build's log kept beside the releases."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reconciler.core.errors import PermanentError, ReleaseError
from reconciler.core.fileio import atomic_write, fsync_dir
from reconciler.core.spec import ProjectId
from reconciler.core.timeutil import utcnow
from reconciler.stores.releases.release import (
    MANIFEST,
    PREVIEW,
    STAGING_PREFIX,
    TRASH_PREFIX,
    Limits,
    Release,
    Staging,
    StoreParts,
    _fsync_tree,
    _TreeHasher,
    _version,
    logger,
)


class Stager(StoreParts):
    def cleanup(self) -> list[Path]:
        """Remove leftover staging and trash dirs and temp links of every project."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for project in sorted(self.root.iterdir()):
            if not project.is_dir() or project.is_symlink():
                continue
            for entry in sorted(project.iterdir()):
                if entry.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
                elif entry.name.startswith((".current-", ".link-")) or (
                    entry.name == PREVIEW and entry.is_symlink()  # a check that never ended
                ):
                    entry.unlink(missing_ok=True)
                    removed.append(entry)
        return removed

    def begin(self, project_id: ProjectId) -> Staging:
        directory = self.project_dir(project_id)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
        path.mkdir()
        (path / "logs").mkdir()
        return Staging(project_id, path)

    def abort(self, staging: Staging) -> None:
        shutil.rmtree(staging.path, ignore_errors=True)

    def failed_build_log(self, project_id: ProjectId) -> Path:
        """Where the output of the last failed build is kept (a failed build makes no
        release to hold its log)."""
        return self.project_dir(project_id) / "logs" / "build.log"

    def keep_failed_build_log(self, staging: Staging) -> None:
        """Keep a failed build's log (replacing the previous failure's) before the staging
        dir goes."""
        log = staging.logs / "build.log"
        if log.is_file():
            target = self.failed_build_log(staging.project_id)
            target.parent.mkdir(exist_ok=True)
            os.replace(log, target)

    def commit(
        self,
        staging: Staging,
        *,
        dist: Path,
        dist_exclude: Iterable[str] = (),
        generation: int | None = None,
        details: dict[str, Any] | None = None,
        identity: str | None = None,
        max_bytes: int | None = None,
        keep_failed_log: bool = False,
        links_out: bool = False,
        room: int | None = None,
    ) -> Release:
        """Copy ``dist`` (less its top-level ``dist_exclude`` names) into staging, hash, and
        publish it as <hash8>. ``identity``: what runs besides ``dist`` (an image runtime's
        image id): the version names both, so a new image is a new version even when the
        files it serves are the same (the manifest's ``digest`` stays the dist's).

        The same content again reuses the existing release (its logs get the new build log).
        A refused output leaves nothing behind; with ``keep_failed_log`` the build's log is kept
        where a failed build's is read (``failed_build_log``). ``links_out``: the release runs
        as an app (never served as files), so symlinks that leave it are kept as links; the
        manifest says so (``linksOut``), and such a release is never served as files.
        """
        try:
            base = self._link_base(staging.project_id)
            started = time.monotonic()
            limits = self.limits
            if max_bytes is not None and max_bytes < limits.max_bytes:
                limits = Limits(limits.max_files, max(0, max_bytes))
            hasher = _TreeHasher(Path(dist), limits, frozenset(dist_exclude), base, links_out, room)
            digest = hasher.run_into(staging.path / "dist")
            copied = time.monotonic()
            version = _version(digest, identity)
            created = utcnow()
            manifest = {
                "hash": version,
                "digest": digest,
                **({"identity": identity} if identity else {}),
                "createdAt": created,
                "generation": generation,
                **(details or {}),
                **({"linksOut": hasher.left} if hasher.left else {}),
            }
            atomic_write(staging.path / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
            _fsync_tree(staging.path)
            logger.info(
                "%s: staged %s: %d files, %.1f MB, %d linked from %s; copy+hash %.3f s, "
                "sync %.3f s",
                staging.project_id, version, hasher.files, hasher.bytes / 1e6, hasher.linked,
                base.parent.name if base else "no earlier release", copied - started,
                time.monotonic() - copied,
            )  # fmt: skip
            final = self.project_dir(staging.project_id) / version
            try:
                os.rename(staging.path, final)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                return self._reuse(staging, final, digest, identity)
            fsync_dir(final.parent)
            return Release(staging.project_id, version, digest, final, created)
        except BaseException as exc:
            if keep_failed_log and isinstance(exc, PermanentError):  # the log says what it made
                self.keep_failed_build_log(staging)
            self.abort(staging)
            raise

    def _reuse(self, staging: Staging, final: Path, digest: str, identity: str | None) -> Release:
        existing = self._manifest(final)
        if (
            existing is None
            or existing.get("digest") != digest
            or existing.get("identity") != identity
        ):
            raise ReleaseError(
                f"version {final.name} already exists with different content "
                "(hash prefix collision); refusing to reuse it"
            )
        build_log = staging.logs / "build.log"
        if build_log.exists():
            final.joinpath("logs").mkdir(exist_ok=True)
            os.replace(build_log, final / "logs" / build_log.name)
        self.abort(staging)
        return Release(
            staging.project_id, final.name, digest, final, str(existing["createdAt"]), reused=True
        )

    def _manifest(self, release: Path) -> dict[str, Any] | None:
        """A release's manifest; memoized on the file's identity (releases are immutable,
        and a release deleted and built again is a new file)."""
        path = os.path.join(release, MANIFEST)
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        memo = self._manifests.get(path)
        if memo is not None and memo[0] == key:
            return memo[1]
        try:
            with open(path, "rb") as fh:
                data = json.loads(fh.read())
        except (OSError, ValueError):
            return None
        manifest = data if isinstance(data, dict) else None
        self._manifests[path] = (key, manifest)
        return manifest
