"""Apps as they come: a build the desired file does not describe is worked out from the app's
files (``core.detect``), and a virtualenv built into the source works from the release.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

from reconciler.core.detect import Detected, DetectError, detect
from reconciler.core.errors import BuildFailed
from reconciler.core.kinds import RuntimeName
from reconciler.runtimes.base import BuildRequest, LineSink

# a console script that finds its interpreter beside itself, wherever the venv is: sh runs
# the second line (exec), Python reads it as a string (pip's own form for long paths)
RELOCATABLE = b"#!/bin/sh\n'''exec' \"$(dirname -- \"$0\")/python\" \"$0\" \"$@\"\n' '''\n"
SHEBANG = re.compile(rb"^#!(/\S+/bin/python[0-9.]*)[ \t]*\r?\n")


def found_app(request: BuildRequest) -> Detected | None:
    """How to build and start the app, worked out from its files when the desired file names
    no build or start command and no output (None: the file says, or a prebuilt ``dist/``
    serves as it is, as before detection)."""
    spec = request.spec
    if spec.build.command or spec.build.output or spec.start.command:
        return None
    if not request.source.is_dir():
        return None  # the build says so
    try:
        app = detect(request.source)
    except DetectError as exc:
        if (request.source / "dist").is_dir():
            return None
        if "nothing in" not in str(exc):
            raise BuildFailed(f"Build failed: {exc}") from None
        raise BuildFailed(
            "Build failed: nothing in the source says how to build or start it (a Procfile, "
            "package.json, requirements.txt or pyproject.toml, an index.html, a built site "
            "such as public/index.html), and the source has no dist/ (build.output: dist); "
            "write build.command and start.command in the desired file"
        ) from None
    if app.runtime != RuntimeName.PROCESS:
        raise BuildFailed(
            "Build failed: the app has a Dockerfile and nothing else this host builds it from "
            "(a Procfile, package.json, requirements.txt); set 'runtime: docker' in its "
            "desired file"
        )
    return app


def relocate_venvs(dist: Path, say: LineSink) -> int:
    """Make the console scripts of a virtualenv in ``dist`` (``.venv/bin/gunicorn``) find
    the interpreter beside them, so they run from the release (their shebangs name the dir
    the build made them in, which is gone). Returns how many it rewrote."""
    rewritten = 0
    for config in (*dist.glob("pyvenv.cfg"), *dist.glob("*/pyvenv.cfg")):
        bin_dir = config.parent / "bin"
        if config.is_symlink() or bin_dir.is_symlink() or not bin_dir.is_dir():
            continue
        for entry in os.scandir(bin_dir):
            if _relocate(Path(entry.path)):
                rewritten += 1
    if rewritten:
        say(f"Made {rewritten} virtualenv scripts run from wherever the release is")
    return rewritten


def _relocate(script: Path) -> bool:
    """Rewrite one script whose shebang names a python in its own dir (absolutely)."""
    try:
        st = os.stat(script, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 1 << 20:
            return False
        with open(script, "rb") as fh:
            head = fh.read(4096)
        found = SHEBANG.match(head)
        if found is None or Path(os.fsdecode(found.group(1))).parent.name != "bin":
            return False
        if Path(os.fsdecode(found.group(1))).parent.parent.name != script.parent.parent.name:
            return False
        body = script.read_bytes()[found.end() :]
        script.write_bytes(RELOCATABLE + body)
        os.chmod(script, stat.S_IMODE(st.st_mode))
        return True
    except OSError:
        return False


# what a detected app's build installs into a clean checkout; kept between builds of a git
# source (a directory source's build runs in place and keeps them there)
DEPENDENCY_DIRS = (".venv", "node_modules")


def restore_dependencies(request: BuildRequest, say: LineSink) -> int:
    """Move the dependencies the last build installed into this build's clean checkout, so
    that unchanged dependencies install nothing. Returns how many dirs it moved."""
    if request.spec.git is None or request.cache_dir is None:
        return 0
    kept = request.cache_dir / "build"
    moved = 0
    for name in DEPENDENCY_DIRS:
        found, target = kept / name, request.source / name
        if found.is_dir() and not found.is_symlink() and not os.path.lexists(target):
            try:
                os.rename(found, target)
                moved += 1
            except OSError:
                shutil.rmtree(found, ignore_errors=True)
    if moved:
        say("Reusing the dependencies the last build installed")
    return moved


def keep_dependencies(request: BuildRequest) -> None:
    """After the release was made: keep this build's dependency dirs for the next one."""
    if request.spec.git is None or request.cache_dir is None:
        return
    kept = request.cache_dir / "build"
    kept.mkdir(parents=True, exist_ok=True)
    for name in DEPENDENCY_DIRS:
        found = request.source / name
        if found.is_dir() and not found.is_symlink():
            shutil.rmtree(kept / name, ignore_errors=True)
            try:
                os.rename(found, kept / name)
            except OSError:
                continue


def noting(request: BuildRequest) -> LineSink:
    """A line for the build's events and its log both (what the build does besides its
    commands)."""

    def say(line: str) -> None:
        request.on_line(line)
        request.log_dir.mkdir(parents=True, exist_ok=True)
        with open(request.log_dir / "build.log", "a", encoding="utf-8") as log:
            log.write(line + "\n")

    return say
