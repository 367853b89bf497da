"""The desired-state store: load, validate and edit ``desired/<project-id>.yaml`` files.

Reading is strict and hostile-input safe: files over 1 MiB, non-UTF-8 bytes, tabs, anchors and
aliases, duplicate keys and unknown tags are refused, and every problem names the file, line and
column. The store remembers the last good spec per project, so an invalid edit never changes
what runs.

Writing goes through one function, :meth:`DesiredStore.edit`: a read-modify-write of chosen
fields under a per-project lock that also holds across processes (``flock``). The new text is
the old text with only the changed values replaced (comments, key order and blank lines stay
byte-for-byte), validated before it is written, and replaces the file atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.events import AliasEvent, NodeEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.spec import InvalidProjectId, ProjectId, ProjectSpec, check_project_id

MAX_FILE_BYTES = 1024 * 1024
SUFFIXES = (".yaml", ".yml")
_ALLOWED_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}
_PLAIN_SAFE = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./ -]*$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a desired file, located as precisely as the parser allows."""

    path: Path
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


class DesiredFileError(Exception):
    """A desired file that cannot be used. ``problems`` holds every located problem."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class ProjectNotFound(LookupError):
    pass


class EditError(Exception):
    """An edit that would not produce a valid file; nothing was written."""


# ---------------------------------------------------------------------------------------------
# Parsing


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases (no "billion laughs")."""

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent) or (
            isinstance(event, NodeEvent) and event.anchor is not None
        ):
            raise yaml.composer.ComposerError(
                None,
                None,
                "anchors and aliases are not allowed in desired files",
                event.start_mark,  # type: ignore[arg-type]
            )
        return super().compose_node(parent, index)


def _problem(path: Path, node_or_mark: Any, message: str) -> Problem:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    if mark is None:
        return Problem(path, 1, 1, message)
    return Problem(path, mark.line + 1, mark.column + 1, message)


def _offset_to_line_col(data: bytes, offset: int) -> tuple[int, int]:
    line = data.count(b"\n", 0, offset) + 1
    start = data.rfind(b"\n", 0, offset) + 1
    return line, offset - start + 1


def decode(path: Path, data: bytes) -> str:
    """Check size, encoding and whitespace rules; return the text."""
    if len(data) > MAX_FILE_BYTES:
        raise DesiredFileError(
            [Problem(path, 1, 1, f"file is larger than {MAX_FILE_BYTES} bytes; refused")]
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _offset_to_line_col(data, exc.start)
        raise DesiredFileError([Problem(path, line, col, "file is not valid UTF-8")]) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise DesiredFileError([Problem(path, 1, 1, "file is empty")])
    problems = []
    for lineno, text_line in enumerate(text.split("\n"), start=1):
        tab = text_line.find("\t")
        if tab >= 0:
            problems.append(
                Problem(path, lineno, tab + 1, "tab character; indent and separate with spaces")
            )
        if "\0" in text_line:
            problems.append(Problem(path, lineno, text_line.index("\0") + 1, "NUL character"))
    if not text.endswith("\n"):
        last_line = text.count("\n") + 1
        problems.append(
            Problem(
                path,
                last_line,
                len(text) - text.rfind("\n"),
                "file does not end with a newline (an incomplete write?); "
                "the last good desired state stays in force",
            )
        )
    if problems:
        raise DesiredFileError(problems)
    return text


def compose(path: Path, text: str) -> MappingNode:
    """Parse text into a node tree with positions; refuses duplicate keys and unknown tags."""
    try:
        loader = _StrictLoader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise DesiredFileError([_problem(path, mark, f"YAML syntax: {message}")]) from None
    except yaml.YAMLError as exc:
        raise DesiredFileError([Problem(path, 1, 1, f"YAML syntax: {exc}")]) from None
    if root is None:
        raise DesiredFileError([Problem(path, 1, 1, "file holds no document")])
    if not isinstance(root, MappingNode):
        raise DesiredFileError([_problem(path, root, "the document must be a mapping of keys")])
    problems: list[Problem] = []
    _check_nodes(path, root, problems)
    if problems:
        raise DesiredFileError(problems)
    return root


def _check_nodes(path: Path, node: Node, problems: list[Problem]) -> None:
    if node.tag not in _ALLOWED_TAGS:
        short = node.tag.replace("tag:yaml.org,2002:", "!!")
        problems.append(_problem(path, node, f"unsupported YAML type {short}; quote the value"))
        return
    if isinstance(node, MappingNode):
        seen: dict[Any, Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag not in _ALLOWED_TAGS:
                problems.append(_problem(path, key_node, "keys must be plain strings"))
                continue
            key = key_node.value
            if key in seen:
                first = seen[key].start_mark.line + 1
                problems.append(
                    _problem(
                        path, key_node, f"duplicate key {key!r} (first defined on line {first})"
                    )
                )
            seen[key] = key_node
            _check_nodes(path, value_node, problems)
    elif isinstance(node, SequenceNode):
        for item in node.value:
            _check_nodes(path, item, problems)


def _construct(root: MappingNode) -> Any:
    loader = _StrictLoader("")
    try:
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _find(root: Node, loc: tuple[int | str, ...]) -> tuple[Node, Node | None, int]:
    """Follow ``loc`` down the tree. Returns (deepest node, its key node, depth reached)."""
    node: Node = root
    key_node: Node | None = None
    depth = 0
    for part in loc:
        if isinstance(node, MappingNode):
            for k, v in node.value:
                if isinstance(k, ScalarNode) and k.value == str(part):
                    key_node, node = k, v
                    break
            else:
                return node, key_node, depth
        elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            key_node, node = None, node.value[part]
        else:
            return node, key_node, depth
        depth += 1
    return node, key_node, depth


def _validation_problems(path: Path, root: MappingNode, exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc)
        node, key_node, depth = _find(root, loc)
        kind = err["type"]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            where = ".".join(str(p) for p in loc[:-1]) or "the top level"
            message = f"unknown key {loc[-1]!r} in {where}"
            target: Node = key_node if key_node is not None and depth == len(loc) else node
        elif kind == "missing":
            message = f"missing required key {dotted!r}"
            target = node
        elif loc and loc[-1] == "[key]":
            message = f"{'.'.join(str(p) for p in loc[:-2])} key {loc[-2]!r}: {msg}"
            target = key_node if key_node is not None else node
        else:
            message = f"{dotted}: {msg}"
            target = node if depth == len(loc) else (key_node or node)
        problems.append(_problem(path, target, message))
    problems.sort(key=lambda p: (p.line, p.column))
    return problems


def parse(path: Path, data: bytes) -> ProjectSpec:
    """Parse and validate one desired file's bytes. Raises DesiredFileError."""
    text = decode(path, data)
    root = compose(path, text)
    try:
        return ProjectSpec.model_validate(_construct(root))
    except ValidationError as exc:
        raise DesiredFileError(_validation_problems(path, root, exc)) from None


def read_file(path: Path) -> bytes:
    """Read at most MAX_FILE_BYTES + 1 bytes without following a FIFO or device."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DesiredFileError([Problem(path, 1, 1, "not a regular file")])
        chunks = []
        remaining = MAX_FILE_BYTES + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_file(path: Path) -> tuple[ProjectId, ProjectSpec]:
    """Load one desired file: id from the stem, then the spec. Raises DesiredFileError."""
    try:
        project_id = check_project_id(path.stem)
    except InvalidProjectId as exc:
        raise DesiredFileError([Problem(path, 1, 1, str(exc))]) from None
    try:
        data = read_file(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise DesiredFileError([Problem(path, 1, 1, f"cannot read: {exc.strerror}")]) from None
    return project_id, parse(path, data)


# ---------------------------------------------------------------------------------------------
# Editing text in place


def format_scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN_SAFE.fullmatch(value) and not value.endswith(" "):
            with contextlib.suppress(yaml.YAMLError):
                if yaml.safe_load(value) == value:
                    return value
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} into a desired file")


def _line_end_after(text: str, index: int) -> int:
    newline = text.find("\n", index)
    return len(text) if newline < 0 else newline + 1


def _after_last_line(text: str, node: Node) -> int:
    """The offset just after the last line that ``node`` occupies (its trailing comment too)."""
    if isinstance(node, MappingNode) and not node.flow_style and node.value:
        return _after_last_line(text, node.value[-1][1])
    if isinstance(node, SequenceNode) and not node.flow_style and node.value:
        return _after_last_line(text, node.value[-1])
    end = node.end_mark.index
    if isinstance(node, ScalarNode) and node.style in ("|", ">"):
        return end if end == len(text) or text[end - 1] == "\n" else _line_end_after(text, end)
    return _line_end_after(text, end)


def _block_snippet(keys: tuple[str, ...], value: object, indent: int) -> str:
    lines = []
    for depth, key in enumerate(keys):
        pad = " " * (indent + 2 * depth)
        if depth == len(keys) - 1:
            lines.append(f"{pad}{key}: {format_scalar(value)}")
        else:
            lines.append(f"{pad}{key}:")
    return "\n".join(lines) + "\n"


def _flow_snippet(keys: tuple[str, ...], value: object) -> str:
    inner = format_scalar(value)
    for key in reversed(keys[1:]):
        inner = f"{{{key}: {inner}}}"
    return f"{keys[0]}: {inner}"


def set_values(text: str, changes: Mapping[str, object], *, path: Path) -> str:
    """Return ``text`` with each dotted key set to its scalar value, touching nothing else."""
    for dotted, value in changes.items():
        keys = tuple(dotted.split("."))
        root = compose(path, text)
        node, _key_node, depth = _find(root, keys)
        if depth == len(keys):
            if not isinstance(node, ScalarNode):
                raise EditError(f"{dotted} is not a single value in {path.name}")
            new = format_scalar(value)
            start, end = node.start_mark.index, node.end_mark.index
            if node.style in ("|", ">"):
                new += "\n"
            text = text[:start] + new + text[end:]
            continue
        rest = keys[depth:]
        if isinstance(node, MappingNode) and node.flow_style:
            close = node.end_mark.index - 1
            sep = ", " if node.value else ""
            text = text[:close] + sep + _flow_snippet(rest, value) + text[close:]
        elif isinstance(node, MappingNode):
            indent = node.value[0][0].start_mark.column if node.value else 0
            at = _after_last_line(text, node)
            prefix = "" if at == 0 or text[at - 1] == "\n" else "\n"
            text = text[:at] + prefix + _block_snippet(rest, value, indent) + text[at:]
        elif isinstance(node, ScalarNode) and node.tag.endswith(":null") and _key_node is not None:
            indent = _key_node.start_mark.column + 2
            start, end = node.start_mark.index, node.end_mark.index
            snippet = _block_snippet(rest, value, indent).rstrip("\n")
            text = text[:start].rstrip(" ") + "\n" + snippet + text[end:]
        else:
            raise EditError(f"cannot set {dotted}: {'.'.join(keys[:depth])} is not a mapping")
    return text


# ---------------------------------------------------------------------------------------------
# The store


@dataclass(frozen=True)
class Loaded:
    """What one desired file says now, and the spec that is in force for its project."""

    project_id: ProjectId
    path: Path
    spec: ProjectSpec | None
    problems: tuple[Problem, ...] = ()
    in_force: ProjectSpec | None = None

    @property
    def valid(self) -> bool:
        return self.spec is not None

    @property
    def error(self) -> str | None:
        return "; ".join(str(p) for p in self.problems) or None


@dataclass
class Scan:
    """All desired files: loaded projects, and files that cannot be tied to a project id."""

    projects: dict[ProjectId, Loaded] = field(default_factory=dict)
    orphans: list[Problem] = field(default_factory=list)

    def problems(self) -> list[Problem]:
        found = list(self.orphans)
        for loaded in self.projects.values():
            found.extend(loaded.problems)
        return found


@dataclass(frozen=True)
class EditResult:
    before: ProjectSpec
    after: ProjectSpec
    changed: bool


Mutation = Callable[[ProjectSpec], Mapping[str, object]]


class DesiredStore:
    """A desired-state directory. Safe to share between threads and processes."""

    def __init__(self, directory: Path, *, lock_dir: Path | None = None) -> None:
        self.directory = Path(directory)
        self.lock_dir = Path(lock_dir) if lock_dir is not None else self.directory / ".locks"
        self._last_good: dict[ProjectId, ProjectSpec] = {}
        self._mutex = threading.Lock()

    # -- reading ---------------------------------------------------------------------------

    def _candidates(self) -> Iterator[Path]:
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(SUFFIXES):
                continue
            yield Path(entry.path)

    def paths_for(self, project_id: ProjectId) -> list[Path]:
        check_project_id(project_id)
        return [
            self.directory / f"{project_id}{suffix}"
            for suffix in SUFFIXES
            if (self.directory / f"{project_id}{suffix}").exists()
        ]

    def path_for(self, project_id: ProjectId) -> Path | None:
        found = self.paths_for(project_id)
        return found[0] if found else None

    def remember(self, project_id: ProjectId, spec: ProjectSpec) -> None:
        """Seed the last good spec (e.g. from the state database after a restart)."""
        with self._mutex:
            self._last_good.setdefault(project_id, spec)

    def last_good(self, project_id: ProjectId) -> ProjectSpec | None:
        with self._mutex:
            return self._last_good.get(project_id)

    def _loaded(self, project_id: ProjectId, path: Path, problems: list[Problem]) -> Loaded:
        return Loaded(project_id, path, None, tuple(problems), self.last_good(project_id))

    def load(self, project_id: ProjectId) -> Loaded | None:
        """Load one project's file; None when it has none."""
        paths = self.paths_for(project_id)
        if not paths:
            return None
        if len(paths) > 1:
            return self._loaded(project_id, paths[0], [_duplicate_problem(paths)])
        try:
            _, spec = load_file(paths[0])
        except FileNotFoundError:
            return None
        except DesiredFileError as exc:
            return self._loaded(project_id, paths[0], exc.problems)
        with self._mutex:
            self._last_good[project_id] = spec
        return Loaded(project_id, paths[0], spec, (), spec)

    def _ids(self, orphans: list[Problem]) -> list[ProjectId]:
        ids: list[ProjectId] = []
        for path in self._candidates():
            try:
                project_id = check_project_id(path.stem)
            except InvalidProjectId as exc:
                orphans.append(Problem(path, 1, 1, str(exc)))
                continue
            if project_id not in ids:
                ids.append(project_id)
        return ids

    def ids(self) -> list[ProjectId]:
        """The project ids that have a desired file, without parsing any of them."""
        return self._ids([])

    def scan(self) -> Scan:
        """Load every desired file."""
        result = Scan()
        for project_id in self._ids(result.orphans):
            loaded = self.load(project_id)
            if loaded is not None:
                result.projects[project_id] = loaded
        return result

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, project_id: ProjectId) -> Iterator[None]:
        """Exclusive per-project lock, held across threads and processes."""
        check_project_id(project_id)
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_dir / f"{project_id}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def edit(self, project_id: ProjectId, mutate: Mutation) -> EditResult:
        """Read-modify-write of chosen fields of one desired file.

        ``mutate`` sees the current spec (under the lock) and returns dotted keys with new
        scalar values, e.g. ``{"production.generation": 4}``; an empty mapping writes nothing.
        Raises ProjectNotFound, DesiredFileError (the file is invalid now) or EditError.
        """
        with self.lock(project_id):
            paths = self.paths_for(project_id)
            if not paths:
                raise ProjectNotFound(project_id)
            if len(paths) > 1:
                raise DesiredFileError([_duplicate_problem(paths)])
            path = paths[0]
            data = read_file(path)
            before = parse(path, data)
            changes = dict(mutate(before))
            if not changes:
                return EditResult(before, before, changed=False)
            text = set_values(decode(path, data), changes, path=path)
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
                return EditResult(before, after, changed=False)
            atomic_write(path, text.encode())
            with self._mutex:
                self._last_good[project_id] = after
            return EditResult(before, after, changed=True)


def _duplicate_problem(paths: list[Path]) -> Problem:
    names = " and ".join(p.name for p in paths)
    return Problem(paths[0], 1, 1, f"project id {paths[0].stem!r} is defined twice ({names})")


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file in the same dir, fsync, rename, fsync dir."""
    directory = path.parent
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
