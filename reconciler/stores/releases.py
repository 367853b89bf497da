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

The version id is the first 8 hex characters of the dist hash (for an image runtime, of the
dist hash and the image id together: what runs is the image): SHA-256 over a canonical walk
of ``dist/`` in byte-sorted relative paths, each entry tagged by type with its path; files add
the executable bit, size and contents; in-tree symlinks add their target text. Symlinks that
leave ``dist/``, devices, fifos and sockets are refused and never opened.

A release holds what was built and nothing else: what runs is ``dist/``. (The source is not
snapshotted: many sources build the same dist, so a snapshot beside it could only be stale.)
When the build output is the source dir itself (``build.output: .``), its top-level
``.git`` is left out of the hash and the copy, so a commit alone does not make a new version.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from reconciler.core.errors import DistTooLarge, ReleaseError
from reconciler.core.fileio import atomic_write, fsync_dir, sync_filesystem
from reconciler.core.spec import ProjectId, is_hash8
from reconciler.core.timeutil import utcnow

MANIFEST = "manifest.json"
CURRENT = "current"
PREVIEW = "preview"
SLOT = "slot"
SLOTS = "slots"
SLOT_NAMES = ("a", "b")
TASKS = "tasks"
ACTIVATIONS = "activations.json"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
CHUNK = 1 << 20

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_files: int = 200_000
    max_bytes: int = 4 * 1024**3


@dataclass(frozen=True)
class Release:
    project_id: ProjectId
    hash: str
    digest: str
    path: Path
    created_at: str
    reused: bool = False

    @property
    def dist(self) -> Path:
        return self.path / "dist"

    @property
    def logs(self) -> Path:
        return self.path / "logs"


@dataclass(frozen=True)
class Version:
    hash: str
    is_active: bool
    created_at: str
    activated_at: str | None


@dataclass(frozen=True)
class Staging:
    project_id: ProjectId
    path: Path

    @property
    def logs(self) -> Path:
        return self.path / "logs"


# ---------------------------------------------------------------------------------------------
# Hashing and copying a dist tree


def _is_inside(root_real: str, path: str) -> bool:
    return path == root_real or path.startswith(root_real.rstrip("/") + "/")


def _walk(
    root: Path, skip_top: frozenset[str] = frozenset()
) -> Iterator[tuple[str, os.stat_result]]:
    """Yield (relative posix path, lstat) for every entry below root, in byte-sorted order,
    leaving out the top-level names in ``skip_top`` and everything under them."""
    stack: list[str] = [""]
    entries: list[tuple[bytes, str, os.stat_result]] = []
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            for entry in it:
                child = f"{rel}/{entry.name}" if rel else entry.name
                if not rel and entry.name in skip_top:
                    continue
                st = entry.stat(follow_symlinks=False)
                entries.append((os.fsencode(child), child, st))
                if stat.S_ISDIR(st.st_mode):
                    stack.append(child)
    entries.sort(key=lambda e: e[0])
    for _, child, st in entries:
        yield child, st


class _TreeHasher:
    """Walk a dist tree once: validate, hash and (optionally) copy it."""

    def __init__(
        self,
        root: Path,
        limits: Limits,
        skip_top: frozenset[str] = frozenset(),
        base: Path | None = None,
    ) -> None:
        self.root = root
        self.base = base  # a kept release's dist: files with the same bytes are linked from it
        self.linked = 0
        self.written = 0
        self.skip_top = skip_top
        self.root_real = os.path.realpath(root)
        self.limits = limits
        self.sha = hashlib.sha256()
        self.files = 0
        self.bytes = 0

    def run_into(self, dest: Path) -> str:
        dest.mkdir()
        return self.run(dest)

    def run(self, dest: Path | None) -> str:
        if not self.root.is_dir() or self.root.is_symlink():
            raise ReleaseError(f"build output {self.root} is not a directory")
        for rel, st in _walk(self.root, self.skip_top):
            self._entry(rel, st, dest)
        return self.sha.hexdigest()

    def _count(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        if self.files > self.limits.max_files:
            raise ReleaseError(
                f"dist has more than {self.limits.max_files} entries; raise the release limit "
                "or build less"
            )
        if self.bytes > self.limits.max_bytes:
            raise DistTooLarge(f"dist is larger than {self.limits.max_bytes} bytes")

    def _entry(self, rel: str, st: os.stat_result, dest: Path | None) -> None:
        path = self.root / rel
        name = os.fsencode(rel)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            self._count(0)
            self.sha.update(b"d\0" + name + b"\0")
            if dest is not None:
                (dest / rel).mkdir(mode=0o755)
        elif stat.S_ISLNK(mode):
            self._count(0)
            target = os.readlink(path)
            resolved = os.path.realpath(path)
            if os.path.isabs(target) or not _is_inside(self.root_real, resolved):
                raise ReleaseError(
                    f"symlink dist/{rel} -> {target} leaves dist/; refusing to follow it"
                )
            self.sha.update(b"l\0" + name + b"\0" + os.fsencode(target) + b"\0")
            if dest is not None:
                os.symlink(target, dest / rel)
        elif stat.S_ISREG(mode):
            self._count(st.st_size)
            executable = bool(mode & stat.S_IXUSR)
            self._file(path, rel, name, executable, dest)
        else:
            kind = (
                "fifo"
                if stat.S_ISFIFO(mode)
                else "socket"
                if stat.S_ISSOCK(mode)
                else "device"
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "special file"
            )
            raise ReleaseError(f"dist/{rel} is a {kind}; only files, dirs and symlinks are allowed")

    def _file(self, path: Path, rel: str, name: bytes, executable: bool, dest: Path | None) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise ReleaseError(f"cannot read dist/{rel}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as src:
            st = os.fstat(src.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ReleaseError(f"dist/{rel} changed while it was read")
            self.sha.update(b"f\0" + name + b"\0" + (b"x" if executable else b"-"))
            self.sha.update(str(st.st_size).encode() + b"\0")
            if dest is None:
                copied = 0
                while chunk := src.read(CHUNK):
                    copied += len(chunk)
                    self.sha.update(chunk)
            else:
                copied = self._copy(src, st.st_size, rel, executable, dest / rel)
            if copied != st.st_size:
                raise ReleaseError(f"dist/{rel} changed size while it was read")

    def _copy(self, src: BinaryIO, size: int, rel: str, executable: bool, target: Path) -> int:
        """Hash ``src`` into ``target``: a hard link to the base release's file when that one
        has the same bytes and mode (releases are immutable, so sharing is safe), else a copy
        that keeps holes. Returns the bytes read."""
        base = self._base_file(rel, size, executable)
        out: BinaryIO | None = None
        copied = 0
        try:
            while chunk := src.read(CHUNK):
                self.sha.update(chunk)
                if base is not None:
                    if base.read(len(chunk)) == chunk:
                        copied += len(chunk)
                        continue
                    base.close()
                    base = None
                    out = open(target, "xb")  # noqa: SIM115 - closed below
                    self._copy_prefix(src.fileno(), out, copied)
                if out is None:
                    out = open(target, "xb")  # noqa: SIM115 - closed below
                _write_keeping_holes(out, chunk)
                copied += len(chunk)
            if base is not None:  # every byte read so far matched the base's
                if copied == size and not base.read(1) and self._link(rel, target):
                    return copied
                out = open(target, "xb")  # noqa: SIM115 - closed below
                self._copy_prefix(src.fileno(), out, copied)
            if out is None:
                out = open(target, "xb")  # noqa: SIM115 - closed below (an empty file)
            out.truncate(copied)  # a file that ends in a hole keeps its size
            out.flush()
            os.fchmod(out.fileno(), 0o755 if executable else 0o644)
            self.written += 1
            return copied
        finally:
            if base is not None:
                base.close()
            if out is not None:
                out.close()

    def _base_file(self, rel: str, size: int, executable: bool) -> BinaryIO | None:
        """The base release's file at ``rel`` when it could hold the same bytes: a regular
        file (never a link), the same size and the same executable bit."""
        if self.base is None:
            return None
        try:
            fd = os.open(
                self.base / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            )
        except OSError:
            return None
        st = os.fstat(fd)
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_size != size
            or bool(st.st_mode & stat.S_IXUSR) != executable
            or size == 0
        ):
            os.close(fd)
            return None
        return open(fd, "rb", closefd=True)

    def _link(self, rel: str, target: Path) -> bool:
        """Link the base release's file at ``rel`` (just compared; releases never change)
        as ``target``."""
        assert self.base is not None
        try:
            os.link(self.base / rel, target, follow_symlinks=False)
        except OSError:  # too many links, another filesystem, not allowed: copy instead
            return False
        self.linked += 1
        return True

    @staticmethod
    def _copy_prefix(src_fd: int, out: BinaryIO, length: int) -> None:
        """Copy the first ``length`` bytes of ``src_fd`` (read already, so from the cache)."""
        offset = 0
        while offset < length:
            chunk = os.pread(src_fd, min(CHUNK, length - offset), offset)
            if not chunk:
                raise ReleaseError("a dist file shrank while it was read")
            _write_keeping_holes(out, chunk)
            offset += len(chunk)


_ZEROS = bytes(CHUNK)


def _write_keeping_holes(out: BinaryIO, chunk: bytes) -> None:
    if chunk == _ZEROS[: len(chunk)]:
        out.seek(len(chunk), os.SEEK_CUR)  # a hole stays a hole
    else:
        out.write(chunk)


def _version(digest: str, identity: str | None) -> str:
    if identity is None:
        return digest[:8]
    return hashlib.sha256(f"{digest}\n{identity}".encode()).hexdigest()[:8]


def hash_dist(dist: Path, limits: Limits = Limits(), skip_top: Iterable[str] = ()) -> str:
    """The full hex digest of a dist tree (see the module docstring)."""
    return _TreeHasher(Path(dist), limits, frozenset(skip_top)).run(None)


def _fsync_tree(root: Path) -> None:
    """Make everything written below ``root`` durable before it is renamed into place: one
    ``syncfs`` of its filesystem, or (where that is not available) an fsync of every file
    and directory."""
    if sync_filesystem(root):
        return
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue  # a link's entry is made durable with its directory
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


# ---------------------------------------------------------------------------------------------
# The store


class ReleaseStore:
    """Releases of every project under one root (``data/production``)."""

    def __init__(self, root: Path, *, limits: Limits = Limits()) -> None:
        self.root = Path(root).absolute()
        self.limits = limits
        self._manifests: dict[str, tuple[tuple[int, int, int], dict[str, Any] | None]] = {}

    def project_dir(self, project_id: ProjectId) -> Path:
        return self.root / project_id

    def release_dir(self, project_id: ProjectId, version: str) -> Path:
        if not is_hash8(version):
            raise ReleaseError(f"invalid version {version!r}")
        return self.project_dir(project_id) / version

    # -- startup ---------------------------------------------------------------------------

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
                elif entry.name.startswith((".current-", ".link-")):
                    entry.unlink(missing_ok=True)
                    removed.append(entry)
        return removed

    # -- staging ---------------------------------------------------------------------------

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
    ) -> Release:
        """Copy ``dist`` (less its top-level ``dist_exclude`` names) into staging, hash, and
        publish it as <hash8>. ``identity``: what runs besides ``dist`` (an image runtime's
        image id): the version names both, so a new image is a new version even when the
        files it serves are the same (the manifest's ``digest`` stays the dist's).

        The same content again reuses the existing release (its logs get the new build log).
        """
        try:
            base = self._link_base(staging.project_id)
            started = time.monotonic()
            limits = self.limits
            if max_bytes is not None and max_bytes < limits.max_bytes:
                limits = Limits(limits.max_files, max(0, max_bytes))
            hasher = _TreeHasher(Path(dist), limits, frozenset(dist_exclude), base)
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
        except BaseException:
            self.abort(staging)
            raise

    def _link_base(self, project_id: ProjectId) -> Path | None:
        """The dist a new release shares unchanged files with: the one ``current`` points
        at, else the newest kept release."""
        version = self.current(project_id)
        if version is None:
            kept = self.versions(project_id)
            version = kept[0].hash if kept else None
        return self.project_dir(project_id) / version / "dist" if version else None

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
            os.replace(build_log, final / "logs" / "build.log")
        self.abort(staging)
        return Release(
            staging.project_id, final.name, digest, final, str(existing["createdAt"]), reused=True
        )

    # -- reading ---------------------------------------------------------------------------

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

    def source_of(self, project_id: ProjectId, version: str | None) -> dict[str, Any] | None:
        """What a release was built from (its manifest's ``source``: a git commit), if known."""
        if version is None or not is_hash8(version):
            return None
        manifest = self._manifest(self.project_dir(project_id) / version)
        source = manifest.get("source") if manifest else None
        return source if isinstance(source, dict) else None

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
        atomic_write(directory / ACTIVATIONS, json.dumps(activations, indent=2).encode() + b"\n")

    def preview(self, project_id: ProjectId, version: str) -> None:
        """Point ``preview`` at a complete release (the edge serves it on its check route)."""
        if self.get(project_id, version) is None:
            raise ReleaseError(f"version {version} of {project_id} is not a complete release")
        self._point(project_id, PREVIEW, version)

    def slot(self, project_id: ProjectId) -> str | None:
        """The slot the edge routes to (``a`` or ``b``), None when there is none yet."""
        try:
            target = os.readlink(self.project_dir(project_id) / SLOT)
        except OSError:
            return None
        name = target.removeprefix(f"{SLOTS}/")
        return name if name in SLOT_NAMES else None

    def set_slot(self, project_id: ProjectId, slot: str) -> None:
        """Route the project's edge traffic to ``slot`` (one atomic link flip)."""
        if slot not in SLOT_NAMES:
            raise ValueError(f"slot must be one of {SLOT_NAMES}")
        slots = self.project_dir(project_id) / SLOTS
        for name in SLOT_NAMES:
            marker = slots / name / name
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
        self._point(project_id, SLOT, f"{SLOTS}/{slot}")

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

    def route_tasks(self, project_id: ProjectId, upstreams: tuple[str, ...], fanout: int) -> bool:
        """Point the edge's ``fanout`` upstream entries of a service at ``upstreams`` (file i
        names task i mod n; each file replaced atomically, so a request reads an address that
        ran a moment ago or runs now, never a partial one); no task: no files, and the edge
        answers 503. True when something changed."""
        tasks = self.project_dir(project_id) / TASKS
        wanted = {str(i): upstreams[i % len(upstreams)] for i in range(fanout)} if upstreams else {}
        changed = False
        for name, address in wanted.items():
            path = tasks / name
            try:
                if path.read_text() == address:
                    continue
            except OSError:
                tasks.mkdir(parents=True, exist_ok=True)
            atomic_write(path, address.encode(), durable=False)
            changed = True
        if tasks.is_dir():
            # the first file goes last: the edge's route takes the tasks while it exists
            for entry in sorted(os.scandir(tasks), key=lambda e: e.name == "0"):
                if entry.name.isdigit() and entry.name not in wanted:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                    changed = True
        return changed

    def routed_tasks(self, project_id: ProjectId) -> tuple[str, ...]:
        """The distinct addresses the edge routes a service to now."""
        tasks = self.project_dir(project_id) / TASKS
        found: list[str] = []
        try:
            entries = sorted(os.scandir(tasks), key=lambda e: e.name)
        except OSError:
            return ()
        for entry in entries:
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                address = Path(entry.path).read_text()
                if address not in found:
                    found.append(address)
        return tuple(sorted(found))

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
