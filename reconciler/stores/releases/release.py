"""A release and how its content is named: the canonical walk of dist/ and its SHA-256, the
manifest, and the names of the store's files (the layout is drawn in ``store``).

The version id is the first 8 hex characters of the dist hash (for an image runtime, of the
dist hash and the image id together: what runs is the image): SHA-256 over a canonical walk
of ``dist/`` in byte-sorted relative paths, each entry tagged by type with its path; files add
the executable bit, size and contents; in-tree symlinks add their target text. Symlinks that
leave ``dist/``, devices, fifos and sockets are refused and never opened.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from reconciler.core.errors import DistTooLarge, NoRoom, ReleaseError
from reconciler.core.fileio import fsync_dir, sync_filesystem
from reconciler.core.spec import ProjectId

MANIFEST = "manifest.json"


CURRENT = "current"


PREVIEW = "preview"


SLOT = "slot"


SLOTS = "slots"


SLOT_NAMES = ("a", "b")


TASKS = "tasks"


ACTIVATIONS = "activations.json"


RECORD = "record.json"  # what a lost state database cannot be rebuilt without (``links``)


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

    def log(self, name: str) -> Path:
        """``app`` or ``build``: the release's log of that name."""
        return self.logs / f"{name}.log"


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
        links_out: bool = False,
        room: int | None = None,
    ) -> None:
        self.root = root
        self.room = room  # bytes the copies may write (None: unbounded); links take none
        # an app's release may keep links that leave it (a virtualenv's interpreter): they
        # are copied as links, never followed; a release the edge serves as files refuses them
        self.links_out = links_out
        self.left = 0  # links kept that leave the output
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

    def _leaving(self, rel: str, target: str) -> str:
        """Why a symlink is refused: the link of its chain that leaves the output (not the
        relative one that leads to it), where it points, and what to do about it."""
        first = rel
        for _ in range(40):  # a chain of links inside the output, to the one that leaves it
            if os.path.isabs(target):
                break
            following = os.path.normpath(os.path.join(os.path.dirname(rel), target))
            path = os.path.join(self.root_real, following)
            if following.startswith("..") or not os.path.islink(path):
                break
            rel, target = following, os.readlink(path)
        via = f" (dist/{first} leads to it)" if rel != first else ""
        return (
            f"symlink dist/{rel} -> {target} leaves dist/{via}; refusing to follow it: "
            f"{_link_hint(rel)}"
        )

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
                if not self.links_out:
                    raise ReleaseError(self._leaving(rel, target))
                self.left += 1
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
                    self._spend(copied)
                    self._copy_prefix(src.fileno(), out, copied)
                if out is None:
                    out = open(target, "xb")  # noqa: SIM115 - closed below
                self._spend(len(chunk))
                _write_keeping_holes(out, chunk)
                copied += len(chunk)
            if base is not None:  # every byte read so far matched the base's
                if copied == size and not base.read(1) and self._link(rel, target):
                    return copied
                out = open(target, "xb")  # noqa: SIM115 - closed below
                self._spend(copied)
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

    def _spend(self, size: int) -> None:
        """Take ``size`` bytes of the room; NoRoom before the disk runs out of it."""
        if self.room is None:
            return
        self.room -= size
        if self.room < 0:
            raise NoRoom("the release takes more than the free disk space leaves")

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


def _link_hint(rel: str) -> str:
    parts = rel.split("/")
    if any(p in (".venv", "venv", "env") for p in parts) or "site-packages" in parts:
        return (
            "a virtualenv links to the interpreter it was made with; make it with "
            "'python3 -m venv --copies', or outside build.output"
        )
    if "node_modules" in parts:
        return (
            "a linked package (npm link, workspaces); install it without links, or leave "
            "node_modules out of build.output"
        )
    return "copy what it points to into the build output, or link to a file inside it"


class StoreParts:
    """What the release store's parts (staging, the edge's link files) use of the store."""

    if TYPE_CHECKING:
        root: Path
        limits: Limits
        _manifests: dict[str, tuple[tuple[int, int, int], dict[str, Any] | None]]

        def project_dir(self, project_id: ProjectId) -> Path: ...
        def get(self, project_id: ProjectId, version: str) -> Release | None: ...
        def versions(self, project_id: ProjectId) -> list[Release]: ...
        def current(self, project_id: ProjectId) -> str | None: ...
        def _point(self, project_id: ProjectId, name: str, target: str) -> None: ...
        def _link_base(self, project_id: ProjectId) -> Path | None: ...
