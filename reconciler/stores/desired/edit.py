"""The in-place editor: set scalar values in a desired file's text, touching nothing else.

Comments, key order, blank lines and quoting of everything not edited stay byte-for-byte. The
caller validates the result (``DesiredStore.edit`` does) before it is written.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.stores.desired.parse import compose, find

_PLAIN_SAFE = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./ -]*$")


class EditError(Exception):
    """An edit that would not produce a valid file; nothing was written."""


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
        node, _key_node, depth = find(root, keys)
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


def replace_block(text: str, key: str, value: Mapping[str, object] | None, *, path: Path) -> str:
    """Return ``text`` with the top-level ``key`` replaced by ``value`` written as a block
    (None or empty: the key goes); the rest of the file, comments included, is kept."""
    root = compose(path, text)
    block = ""
    if value:
        block = yaml.safe_dump({key: dict(value)}, sort_keys=False, allow_unicode=True,
                               default_flow_style=False)  # fmt: skip
    found = None
    if isinstance(root, MappingNode):
        found = next((pair for pair in root.value if pair[0].value == key), None)
    if found is None:
        if not block:
            return text
        return text + ("" if not text or text.endswith("\n") else "\n") + block
    key_node, node = found
    start = text.rfind("\n", 0, key_node.start_mark.index) + 1
    end = _after_last_line(text, node)
    return text[:start] + block + text[end:]
