"""The strict reader of desired files: bytes in, a valid ``ProjectSpec`` or located problems out.

Reading is hostile-input safe: files over 1 MiB, non-UTF-8 bytes, tabs, NULs, anchors and
aliases, duplicate keys and unknown tags are refused, and every problem names the file, line
and column. Nothing here touches the desired directory beyond reading one named file.
"""

from __future__ import annotations

import difflib
import os
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.events import AliasEvent, NodeEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.core.fileio import NotRegularFile, read_bounded
from reconciler.core.spec import (
    SOURCE_TAGS,
    InvalidProjectId,
    ProjectId,
    ProjectSpec,
    check_project_id,
)

MAX_FILE_BYTES = 1024 * 1024
SETTLE = 1.0  # seconds a file without a final newline must stay unchanged to be read
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


def decode(path: Path, data: bytes, *, settled: bool = False) -> str:
    """Check size, encoding and whitespace rules; return the text. A file without a final
    newline may be a write still under way; ``settled`` (unchanged for SETTLE seconds, as
    editors that leave the newline out write) accepts it."""
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
    if not text.endswith("\n") and not settled:
        last_line = text.count("\n") + 1
        problems.append(
            Problem(
                path,
                last_line,
                len(text) - text.rfind("\n"),
                "file does not end with a newline (an incomplete write?); it is read once "
                f"unchanged for {SETTLE:g} s; the last good desired state stays in force",
            )
        )
    if problems:
        raise DesiredFileError(problems)
    return text


# PyYAML's words for a syntax error -> what it means and its usual causes
_PLAIN = (
    ("mapping values are not allowed here",
     "a ':' where a value was expected; usual causes: this line is indented deeper than the "
     "key above it, the line before lacks ': ' after its key, or a value holding ': ' needs "
     "quotes"),
    ("could not find expected ':'",
     "a key without ':'; write 'key: value', with a space after the colon"),
    ("while scanning a quoted scalar",
     "a quote that is never closed; close it on the same line, or quote the whole value"),
    ("expected ',' or '}'", "a '{' that is never closed with '}'"),
    ("expected ',' or ']'", "a '[' that is never closed with ']'"),
    ("expected <block end>",
     "this line is indented differently from the lines of its block (in YAML the indentation "
     "is the structure); line it up with the keys beside it"),
    ("did not find expected key",
     "this line is indented differently from the lines of its block (in YAML the indentation "
     "is the structure); line it up with the keys beside it"),
    ("expected a single document",
     "a second document ('---'); a desired file holds one project"),
    ("cannot start any token", "a character that cannot start a value here; quote the value"),
)  # fmt: skip


_AT_START = ("could not find expected ':'", "while scanning a quoted scalar")


def plain_syntax(pyyaml: str) -> str:
    """A YAML syntax error in plain words (PyYAML's own when it is not a usual one)."""
    return next((plain for words, plain in _PLAIN if words in pyyaml), pyyaml)


def _pointer(text: str, mark: Any) -> str:
    """The line a syntax error is on, and a caret under its column."""
    if mark is None:
        return ""
    lines = text.split("\n")
    if not 0 <= mark.line < len(lines) or not lines[mark.line].strip():
        return ""
    return f"\n    {lines[mark.line]}\n    {' ' * mark.column}^"


def compose(path: Path, text: str) -> MappingNode:
    """Parse text into a node tree with positions; refuses duplicate keys and unknown tags."""
    try:
        loader = _StrictLoader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        # what is never closed, or a key without its colon, is pointed at where it starts
        starts = any(words in message for words in _AT_START)
        mark = (exc.context_mark if starts else None) or exc.problem_mark or exc.context_mark
        plain = plain_syntax(message)
        if "flow" in message and exc.context_mark is not None:
            plain += f" (it opens on line {exc.context_mark.line + 1})"
        message = f"YAML syntax: {plain}{_pointer(text, mark)}"
        raise DesiredFileError([_problem(path, mark, message)]) from None
    except yaml.YAMLError as exc:
        raise DesiredFileError([Problem(path, 1, 1, f"YAML syntax: {exc}")]) from None
    if root is None:
        raise DesiredFileError([Problem(path, 1, 1, "file holds no document")])
    if not isinstance(root, MappingNode):
        message = "the document must be a mapping of keys"
        if isinstance(root, ScalarNode) and ":" in str(root.value):
            message += " (a key needs a space after its colon: 'source: ./site')"
        raise DesiredFileError([_problem(path, root, message)])
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


def find(root: Node, loc: tuple[int | str, ...]) -> tuple[Node, Node | None, int]:
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
        loc = tuple(
            part
            for i, part in enumerate(err["loc"])
            if not (i == 1 and err["loc"][0] == "source" and part in SOURCE_TAGS)
        )
        dotted = ".".join(str(p) for p in loc)
        node, key_node, depth = find(root, loc)
        kind = err["type"]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            where = ".".join(str(p) for p in loc[:-1]) or "the top level"
            message = f"unknown key {loc[-1]!r} in {where}" + _did_you_mean(loc)
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


def _keys_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys a desired file may have at ``loc`` (the fields of the model found there)."""
    models: list[type[BaseModel]] = [ProjectSpec]
    for part in loc:
        found: list[type[BaseModel]] = []
        for model in models:
            field = model.model_fields.get(str(part))
            if field is not None:
                found += _models_in(field.annotation)
        models = found
    return sorted({name for model in models for name in model.model_fields})


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """A close known key for a misspelled one ('producton' -> 'production'), as a hint."""
    close = difflib.get_close_matches(str(loc[-1]), _keys_at(loc[:-1]), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def parse(path: Path, data: bytes, *, settled: bool = False) -> ProjectSpec:
    """Parse and validate one desired file's bytes. Raises DesiredFileError."""
    text = decode(path, data, settled=settled)
    root = compose(path, text)
    try:
        return ProjectSpec.model_validate(_construct(root))
    except ValidationError as exc:
        raise DesiredFileError(_validation_problems(path, root, exc)) from None


def read_file(path: Path) -> bytes:
    """Read at most MAX_FILE_BYTES + 1 bytes without following a FIFO or device."""
    try:
        return read_bounded(path, MAX_FILE_BYTES + 1)
    except NotRegularFile:
        raise DesiredFileError([Problem(path, 1, 1, "not a regular file")]) from None


def dangling(path: Path) -> Problem:
    """The problem of a desired file that is a symlink to nothing."""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return Problem(path, 1, 1, f"a symlink to {target}, which does not exist")


def is_settled(path: Path) -> bool:
    """Unchanged for SETTLE seconds: a file without a final newline is read as it is then."""
    try:
        return os.stat(path, follow_symlinks=False).st_mtime + SETTLE <= time.time()
    except OSError:
        return False


def load_file(path: Path) -> tuple[ProjectId, ProjectSpec]:
    """Load one desired file: id from the stem, then the spec. Raises DesiredFileError."""
    try:
        project_id = check_project_id(path.stem)
    except InvalidProjectId as exc:
        raise DesiredFileError([Problem(path, 1, 1, str(exc))]) from None
    try:
        data = read_file(path)
    except FileNotFoundError:
        if path.is_symlink():
            raise DesiredFileError([dangling(path)]) from None
        raise
    except OSError as exc:
        raise DesiredFileError([Problem(path, 1, 1, f"cannot read: {exc.strerror}")]) from None
    return project_id, parse(path, data, settled=data.endswith(b"\n") or is_settled(path))
