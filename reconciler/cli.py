"""Command-line entry point: ``reconciler <command>``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from reconciler.desired import SUFFIXES, DesiredFileError, Problem, load_file
from reconciler.spec import json_schema


def _validate_paths(paths: Sequence[Path]) -> tuple[int, list[Problem]]:
    files: list[Path] = []
    problems: list[Problem] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.name.endswith(SUFFIXES) and not p.name.startswith(".")
                )
            )
        elif path.exists():
            files.append(path)
        else:
            problems.append(Problem(path, 1, 1, "no such file or directory"))
    seen: dict[str, Path] = {}
    for file in files:
        try:
            project_id, _spec = load_file(file)
        except DesiredFileError as exc:
            problems.extend(exc.problems)
            continue
        if project_id in seen and seen[project_id].parent == file.parent:
            problems.append(
                Problem(
                    file, 1, 1, f"project id {project_id!r} is also defined by {seen[project_id]}"
                )
            )
        seen[project_id] = file
    return len(files), problems


def cmd_validate(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths] or [Path("desired")]
    count, problems = _validate_paths(paths)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {count} file(s)", file=sys.stderr)
        return 1
    print(f"{count} desired file(s) valid")
    return 0


def cmd_schema(_args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Converge production deployments to desired-state files.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check desired-state files (default: ./desired)")
    validate.add_argument("paths", nargs="*", metavar="PATH", help="files or directories")
    validate.set_defaults(func=cmd_validate)

    schema = sub.add_parser("schema", help="print the JSON Schema of a desired-state file")
    schema.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code
