"""The desired-state directory: find, read and edit ``desired/<project-id>.yaml`` files.

Reads are pure: :meth:`DesiredStore.read` says what a file holds now and remembers nothing.
What stays in force while a file is invalid is the caller's business, kept in a
:class:`LastGood` that only its owner writes (the controller, from the reconcile that applied a
spec; the state database holds a copy across restarts).

Writing goes through one function, :meth:`DesiredStore.edit`: a read-modify-write of chosen
fields under a per-project lock that also holds across processes (``flock``). The new text is
the old text with only the changed values replaced, validated before it is written, and
replaces the file atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.core.detect import DetectError, detect
from reconciler.core.fileio import atomic_write, identity, replace_if_unchanged
from reconciler.core.kinds import RuntimeName
from reconciler.core.spec import InvalidProjectId, ProjectId, ProjectSpec, check_project_id
from reconciler.stores.desired.edit import EditError, set_values
from reconciler.stores.desired.parse import (
    SETTLE,
    SUFFIXES,
    DesiredFileError,
    Problem,
    dangling,
    decode,
    is_settled,
    parse,
    read_file,
)
from reconciler.stores.gitcache import GitError

if TYPE_CHECKING:
    from reconciler.stores.desired.git import ConfigRepo

CUT_SHORT = (
    f"the file holds the start of what it held, cut short: read when it has been unchanged "
    f"for {SETTLE:g} s (a write may be under way)"
)
Rewrite = Callable[[str], str]  # a file's text -> its new text (``write_text``)
EDIT_TRIES = 20  # an edit redone when the file changed under it, at most this often


class ProjectNotFound(LookupError):
    pass


@dataclass(frozen=True)
class DesiredFile:
    """What one project's desired file says now: a valid spec, or the problems found."""

    project_id: ProjectId
    path: Path
    spec: ProjectSpec | None
    problems: tuple[Problem, ...] = ()
    settles_at: float | None = None  # Unix time a file without a final newline is read

    @property
    def valid(self) -> bool:
        return self.spec is not None

    @property
    def error(self) -> str | None:
        return "; ".join(str(p) for p in self.problems) or None


@dataclass
class Scan:
    """All desired files: read projects, and files that cannot be tied to a project id."""

    projects: dict[ProjectId, DesiredFile] = field(default_factory=dict)
    orphans: list[Problem] = field(default_factory=list)

    def problems(self) -> list[Problem]:
        found = list(self.orphans)
        for desired in self.projects.values():
            found.extend(desired.problems)
        return found


@dataclass(frozen=True)
class EditResult:
    before: ProjectSpec
    after: ProjectSpec
    changed: bool


Mutation = Callable[[ProjectSpec], Mapping[str, object]]


class LastGood:
    """The last valid spec of each project: what stays in force while its file is invalid.
    ``default_runtime``: the daemon's, for a file that names none (see ``found_runtime``)."""

    def __init__(self, default_runtime: RuntimeName = RuntimeName.PROCESS) -> None:
        self._specs: dict[ProjectId, ProjectSpec] = {}
        self._lock = threading.Lock()
        self.default_runtime = default_runtime

    def remember(self, project_id: ProjectId, spec: ProjectSpec) -> None:
        with self._lock:
            self._specs[project_id] = spec

    def seed(self, project_id: ProjectId, spec: ProjectSpec) -> None:
        """Remember ``spec`` unless a newer one is known (e.g. from the database at startup)."""
        with self._lock:
            self._specs.setdefault(project_id, spec)

    def get(self, project_id: ProjectId) -> ProjectSpec | None:
        with self._lock:
            return self._specs.get(project_id)

    def forget(self, project_id: ProjectId) -> None:
        with self._lock:
            self._specs.pop(project_id, None)

    def with_secrets(self) -> list[ProjectId]:
        """The projects whose spec refers to a secret."""
        with self._lock:
            return [p for p, spec in self._specs.items() if spec.secret_names]

    def in_force(self, desired: DesiredFile) -> ProjectSpec | None:
        """The file's spec when it is valid, else the last good one."""
        return spec_in_force(desired, self.get(desired.project_id), self.default_runtime)


def spec_in_force(
    desired: DesiredFile,
    last: ProjectSpec | None,
    default_runtime: RuntimeName = RuntimeName.PROCESS,
) -> ProjectSpec | None:
    """The spec a project runs by: its file's when the file is valid (keeping the last
    production state when the file has no ``production:``; an app that only a Dockerfile
    builds on the docker runtime), else the last good one."""
    if desired.spec is None:
        return last
    return found_runtime(keep_production(desired.spec, last), desired.path, default_runtime)


def found_runtime(spec: ProjectSpec, desired_file: Path, default: RuntimeName) -> ProjectSpec:
    """A directory source whose file names no runtime and no build or start, and whose only
    way to build is its ``Dockerfile``, runs on the docker runtime where the daemon's default
    (the process runtime) could not build it. One stat for a source without a Dockerfile."""
    if (
        default != RuntimeName.PROCESS
        or spec.runtime is not None
        or spec.git is not None
        or spec.build.command
        or spec.build.output
        or spec.start.command
    ):
        return spec
    source = spec.source_dir(desired_file)
    if not (source / "Dockerfile").is_file():
        return spec
    try:
        found = detect(source)
    except DetectError:
        return spec
    if found.runtime != RuntimeName.DOCKER:
        return spec
    return spec.model_copy(update={"runtime": RuntimeName.DOCKER})


def keep_production(spec: ProjectSpec, last: ProjectSpec | None) -> ProjectSpec:
    """A file without a ``production:`` block says nothing about production: the project
    keeps the production state it had (a running site is not stopped because the block was
    deleted or a write was cut short); a new project stays stopped."""
    if "production" in spec.model_fields_set or last is None:
        return spec
    return spec.model_copy(update={"production": last.production})


class DesiredStore:
    """A desired-state directory. Safe to share between threads and processes."""

    def __init__(
        self,
        directory: Path,
        *,
        lock_dir: Path | None = None,
        committer: ConfigRepo | None = None,
        derived: Path | None = None,
    ) -> None:
        self.directory = Path(directory)
        # files the daemon writes itself (branch previews): read like the directory's, never
        # edited through it; a file of the directory with the same name wins
        self.derived = derived
        self.lock_dir = Path(lock_dir) if lock_dir is not None else self.directory / ".locks"
        self._memo: dict[Path, tuple[bytes, DesiredFile]] = {}
        self._memo_lock = threading.Lock()
        self.committer = committer  # writes become commits (--desired-git)

    # -- reading ---------------------------------------------------------------------------

    def _names(self) -> list[str]:
        names: set[str] = set()
        for directory in (self.directory, self.derived):
            if directory is not None:
                with contextlib.suppress(FileNotFoundError):
                    names.update(os.listdir(directory))
        return sorted(names)

    def paths_for(self, project_id: ProjectId) -> list[Path]:
        for directory in (self.directory, self.derived):
            if directory is None:
                continue
            base = os.path.join(directory, project_id)
            found = [Path(base + s) for s in SUFFIXES if os.path.lexists(base + s)]
            if found:
                return found
        return []

    def is_derived(self, project_id: ProjectId) -> bool:
        """The project's file is one the daemon wrote (a branch preview)."""
        path = self.path_for(project_id)
        return path is not None and self.derived is not None and path.parent == self.derived

    def path_for(self, project_id: ProjectId) -> Path | None:
        found = self.paths_for(project_id)
        return found[0] if found else None

    def read(self, project_id: ProjectId) -> DesiredFile | None:
        """Read one project's file; None when it has none.

        The file is read every time; parsing is memoized on its exact bytes (a resync of a
        thousand unchanged files parses none of them)."""
        paths = self.paths_for(project_id)
        if not paths:
            return None
        path = paths[0]
        if len(paths) > 1:
            return DesiredFile(project_id, path, None, (_duplicate_problem(paths),))
        try:
            data = read_file(path)
        except FileNotFoundError:
            if path.is_symlink():  # shown as invalid, never silently left out
                return DesiredFile(project_id, path, None, (dangling(path),))
            return None
        except DesiredFileError as exc:
            return DesiredFile(project_id, path, None, tuple(exc.problems))
        except OSError as exc:
            problem = Problem(path, 1, 1, f"cannot read: {exc.strerror}")
            return DesiredFile(project_id, path, None, (problem,))
        with self._memo_lock:
            memo = self._memo.get(path)
        # being written (no final newline, or an editor that omits it), or cut short: what it
        # held before, less its end (a write that stopped midway, or lines deleted at the end)
        shrank = memo is not None and memo[1].valid and _cut_short(memo[0], data)
        settles_at = None
        if shrank or not data.endswith(b"\n"):
            try:
                settles_at = os.stat(path, follow_symlinks=False).st_mtime + SETTLE
            except OSError:
                return None
            if settles_at <= time.time():
                settles_at = None  # unchanged long enough: read it as it is
        if memo is not None and memo[0] == data and memo[1].settles_at == settles_at:
            return memo[1]
        try:
            if shrank and settles_at is not None:
                raise DesiredFileError([Problem(path, 1, 1, CUT_SHORT)])
            spec = parse(path, data, settled=settles_at is None)
            result = DesiredFile(project_id, path, spec)
        except DesiredFileError as exc:
            result = DesiredFile(project_id, path, None, tuple(exc.problems), settles_at)
        with self._memo_lock:
            self._memo[path] = (data, result)
        return result

    def _ids(self, orphans: list[Problem]) -> list[ProjectId]:
        ids, refused = classify(self._names())
        orphans.extend(Problem(self.directory / name, 1, 1, why) for name, why in refused)
        return ids

    def scan_names(self) -> list[Problem]:
        """Files whose names are no project id (they are never read)."""
        orphans: list[Problem] = []
        self._ids(orphans)
        return orphans

    def ids(self) -> list[ProjectId]:
        """The project ids that have a desired file, without parsing any of them."""
        return self._ids([])

    def scan(self) -> Scan:
        """Read every desired file."""
        result = Scan()
        for project_id in self._ids(result.orphans):
            desired = self.read(project_id)
            if desired is not None:
                result.projects[project_id] = desired
        return result

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, project_id: ProjectId) -> Iterator[None]:
        """Exclusive per-project lock, held across threads and processes."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_dir / f"{project_id}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def edit(self, project_id: ProjectId, mutate: Mutation, *, reason: str = "edit") -> EditResult:
        """Read-modify-write of chosen fields of one desired file.

        ``mutate`` sees the current spec (under the lock) and returns dotted keys with new
        scalar values, e.g. ``{"production.generation": 4}``; an empty mapping writes nothing.
        With a configuration repository (``committer``) the edit is a commit pushed to it,
        its message naming ``reason``, the project and the new values.
        Raises ProjectNotFound, DesiredFileError (the file is invalid now) or EditError.
        """
        if self.committer is not None and not self.is_derived(project_id):
            return self._commit_edit(project_id, mutate, reason)
        with self.lock(project_id):
            paths = self.paths_for(project_id)
            if not paths:
                raise ProjectNotFound(project_id)
            if len(paths) > 1:
                raise DesiredFileError([_duplicate_problem(paths)])
            path = paths[0]
            if path.is_symlink():
                raise EditError(
                    f"{path.name} is a symlink (to {os.readlink(path)}); the API does not write "
                    "through links: edit the file it points to"
                )
            for _ in range(EDIT_TRIES):
                seen = identity(os.stat(path, follow_symlinks=False))
                data = read_file(path)
                settled = data.endswith(b"\n") or is_settled(path)
                result, text, _changes = _edited(path, data, mutate, settled=settled)
                if text is None or replace_if_unchanged(path, text.encode(), seen):
                    return result
                # an editor or a pull wrote it meanwhile: theirs stands, the edit is redone
            raise EditError(
                f"{path.name} kept changing while it was edited ({EDIT_TRIES} tries); try again"
            )

    def _commit_edit(self, project_id: ProjectId, mutate: Mutation, reason: str) -> EditResult:
        from reconciler.stores.desired.git import NoSuchFile, PushRefused

        assert self.committer is not None
        found: list[EditResult] = []

        def transform(name: str, data: bytes) -> tuple[bytes | None, str]:
            found.clear()
            result, text, changes = _edited(self.directory / name, data, mutate, settled=True)
            found.append(result)
            shown = ", ".join(
                f"{key.removeprefix('production.')} {value}" for key, value in changes.items()
            )
            return (text.encode() if text is not None else None), f"{reason} {project_id}: {shown}"

        names = tuple(f"{project_id}{suffix}" for suffix in SUFFIXES)
        try:
            self.committer.commit_edit(names, transform)
        except NoSuchFile:
            raise ProjectNotFound(project_id) from None
        except (PushRefused, GitError) as exc:
            raise EditError(str(exc)) from None
        return found[0]

    def write_text(
        self,
        project_id: ProjectId,
        text: str | Rewrite,
        *,
        create: bool,
        reason: str = "edit",
        base: str | None = None,
    ) -> bool:
        """Replace a project's whole file with ``text`` (``create``: a new project, whose
        file must not exist yet), or with what ``text(file's text)`` makes of it: an edit of
        its text, redone on a save made meanwhile (a compare-and-swap, as ``edit``).
        ``base``: the ``text_digest`` of the text the new one was made from; a file that
        changed since is refused. The result must be a valid desired file; it is written
        as it is (comments kept), or committed in desired-git mode. True when it changed.
        Raises ProjectNotFound, FileExistsError, DesiredFileError or EditError."""
        if self.committer is not None:
            return self._commit_whole(project_id, text, create=create, reason=reason, base=base)
        with self.lock(project_id):
            path = self._own_path(project_id, create=create)
            for _ in range(EDIT_TRIES):
                seen = identity(os.stat(path, follow_symlinks=False)) if path.exists() else None
                before = read_file(path) if seen is not None else b""
                data = _whole(path, before, text, base)
                if data == before and seen is not None:
                    return False
                if seen is None:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    atomic_write(path, data)
                    return True
                if replace_if_unchanged(path, data, seen):
                    return True
            raise EditError(
                f"{path.name} kept changing while it was written ({EDIT_TRIES} tries); try again"
            )

    def remove(self, project_id: ProjectId, *, reason: str = "delete") -> None:
        """Delete a project's file (the daemon then stops the project and forgets it).
        Raises ProjectNotFound or EditError."""
        if self.committer is not None:
            self._commit_whole(project_id, None, create=False, reason=reason)
            return
        with self.lock(project_id):
            self._own_path(project_id, create=False).unlink()

    def _own_path(self, project_id: ProjectId, *, create: bool) -> Path:
        """The operator's own file of a project, as a whole-file write may touch it."""
        paths = self.paths_for(project_id)
        if create:
            if paths:
                raise FileExistsError(f"project {project_id} exists ({paths[0].name})")
            return self.directory / f"{project_id}.yaml"
        if not paths:
            raise ProjectNotFound(project_id)
        path = paths[0]
        if self.derived is not None and path.parent == self.derived:
            raise EditError(f"{project_id} is a branch preview: its file is the daemon's")
        if len(paths) > 1:
            raise EditError(_duplicate_problem(paths).message)
        if path.is_symlink():
            raise EditError(f"{path.name} is a symlink; the API does not write through links")
        return path

    def _commit_whole(
        self,
        project_id: ProjectId,
        text: str | Rewrite | None,
        *,
        create: bool,
        reason: str,
        base: str | None = None,
    ) -> bool:
        from reconciler.stores.desired.git import REMOVE, NoSuchFile, PushRefused

        assert self.committer is not None
        names = tuple(f"{project_id}{suffix}" for suffix in SUFFIXES)

        def transform(name: str, before: bytes) -> tuple[bytes | None, str]:
            if create and before:
                raise FileExistsError(f"project {project_id} exists ({name})")
            data = None if text is None else _whole(Path(name), before, text, base)
            if data == before:
                return None, ""
            return (REMOVE if data is None else data), f"{reason} {project_id}"

        try:
            return self.committer.commit_edit(names, transform, create=create)
        except NoSuchFile:
            raise ProjectNotFound(project_id) from None
        except (PushRefused, GitError) as exc:
            raise EditError(str(exc)) from None


def text_digest(data: bytes) -> str:
    """What a client names the text it edited by (``write_text(base=...)``)."""
    return hashlib.sha256(data).hexdigest()[:16]


def _whole(path: Path, before: bytes, text: str | Rewrite, base: str | None) -> bytes:
    """The new bytes of a whole-file write, checked (DesiredFileError: refused)."""
    if base is not None and text_digest(before) != base:
        raise EditError(
            f"{path.name} changed since it was read (by an editor, a pull or another "
            "client); load it again and redo the change"
        )
    if callable(text):
        text = text(before.decode("utf-8", errors="replace"))
    data = text.encode()
    if not data.endswith(b"\n"):
        data += b"\n"
    parse(path, data)
    return data


def _edited(
    path: Path, data: bytes, mutate: Mutation, *, settled: bool
) -> tuple[EditResult, str | None, dict[str, object]]:
    """The edit of one file's bytes: the result, the new text (None: nothing to write) and
    the changes asked for."""
    before = parse(path, data, settled=settled)
    changes = dict(mutate(before))
    if not changes:
        return EditResult(before, before, changed=False), None, changes
    text = set_values(decode(path, data, settled=settled), changes, path=path)
    if not text.endswith("\n"):
        text += "\n"
    try:
        after = parse(path, text.encode())
    except DesiredFileError as exc:
        raise EditError(f"the edit would make {path.name} invalid: {exc}") from None
    for dotted, value in changes.items():
        obj: Any = after
        for part in dotted.split("."):
            obj = getattr(obj, part)
        if obj != value:
            raise EditError(f"the edit of {dotted} did not take in {path.name}")
    if after == before:
        return EditResult(before, after, changed=False), None, changes
    return EditResult(before, after, changed=True), text, changes


def classify(names: Iterable[str]) -> tuple[list[ProjectId], list[tuple[str, str]]]:
    """Of a desired dir's entry names (sorted): the project ids its desired files name, in
    order and once each; and the desired files whose names are no project id, with why.
    Hidden files and other suffixes are neither."""
    ids: list[ProjectId] = []
    seen: set[ProjectId] = set()
    refused: list[tuple[str, str]] = []
    for name in names:
        if name.startswith(".") or not name.endswith(SUFFIXES):
            continue
        try:
            project_id = check_project_id(name.rsplit(".", 1)[0])
        except InvalidProjectId as exc:
            refused.append((name, str(exc)))
            continue
        if project_id not in seen:
            seen.add(project_id)
            ids.append(project_id)
    return ids, refused


def _duplicate_problem(paths: list[Path]) -> Problem:
    names = " and ".join(p.name for p in paths)
    return Problem(paths[0], 1, 1, f"project id {paths[0].stem!r} is defined twice ({names})")


def _cut_short(before: bytes, now: bytes) -> bool:
    """``now`` is ``before`` less its end (and not empty: an empty file is read as it is)."""
    return 0 < len(now) < len(before) and before.startswith(now)
