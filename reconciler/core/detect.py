"""How to build and start an app, worked out from its files the way the platforms users come
from do (Heroku's Procfile, a package.json's scripts, a requirements.txt, a Dockerfile, a
prebuilt site), for ``reconciler detect DIR`` and ``reconciler new ID --source DIR``.

Detection only reads files; it runs nothing and downloads nothing. What it finds is written
into a desired file as plain build and start commands, so what runs is what the file says.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.core.kinds import RuntimeName

STATIC_DIRS = ("dist", "public", "build", "out", "_site", "site")
# a framework's build writes here (the first that matches among the dependencies)
FRAMEWORK_OUTPUT = (
    ("next", "out"),
    ("react-scripts", "build"),
    ("gatsby", "public"),
    ("@11ty/eleventy", "_site"),
    ("astro", "dist"),
    ("vite", "dist"),
)
VENV = "python3 -m venv --copies .venv"  # --copies: the release holds its own interpreter


class DetectError(ValueError):
    """Nothing to go by, or something asked for that this host does not have."""


@dataclass(frozen=True)
class Detected:
    """What a deploy of the app would do, in the desired file's terms."""

    kind: str  # what was recognised: "python", "node", "docker", "static"
    runtime: RuntimeName = RuntimeName.PROCESS
    build: str | None = None  # build.command
    output: str | None = None  # build.output
    start: str | None = None  # start.command (None: a static site, served by the edge)
    port: int | None = None  # start.port (the docker runtime)
    health: str = "/"
    seen: tuple[str, ...] = ()  # the files it went by
    notes: tuple[str, ...] = ()  # what it could not do for you

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "runtime": str(self.runtime),
            "build": self.build,
            "output": self.output,
            "start": self.start,
            "port": self.port,
            "health": self.health,
            "seen": list(self.seen),
            "notes": list(self.notes),
        }

    def desired_yaml(self, source: str) -> str:
        """A desired file for the app in ``source``, stopped until it is deployed."""
        lines = [f"# written by reconciler new from {', '.join(self.seen) or 'the source'}"]
        lines += [f"source: {json.dumps(source)}"]
        if self.runtime != RuntimeName.PROCESS:
            lines.append(f"runtime: {self.runtime}")
        lines += ["production:", "  state: stopped  # reconciler deploy ID (or: running)"]
        if self.build or self.output:
            lines.append("build:")
            if self.build:
                lines.append(f"  command: {json.dumps(self.build)}")
            if self.output:
                lines.append(f"  output: {json.dumps(self.output)}")
        if self.start or self.port:
            lines.append("start:")
            if self.start:
                lines.append(f"  command: {json.dumps(self.start)}")
            if self.port:
                lines.append(f"  port: {self.port}")
        lines += ["health:", f"  path: {json.dumps(self.health)}", "  timeout: 120"]
        lines += [f"# note: {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


@dataclass
class _Files:
    root: Path
    seen: list[str] = field(default_factory=list)

    def has(self, name: str) -> bool:
        path = self.root / name
        found = path.is_file() and not path.is_symlink()
        if found and name not in self.seen:
            self.seen.append(name)
        return found

    def text(self, name: str) -> str:
        return (self.root / name).read_text(encoding="utf-8", errors="replace")


def detect(root: Path, *, which: Callable[[str], str | None] = shutil.which) -> Detected:
    """What the app in ``root`` needs (DetectError: nothing to go by, or a Python version this
    host does not have)."""
    if not root.is_dir():
        raise DetectError(f"{root} is not a directory")
    files = _Files(root)
    web = _procfile(files)
    if files.has("Dockerfile"):
        return _docker(files)
    if files.has("package.json"):
        return _node(files, web, which)
    if any(files.has(n) for n in ("requirements.txt", "pyproject.toml", "manage.py")):
        return _python(files, web, which)
    for name in STATIC_DIRS:
        if (root / name / "index.html").is_file():
            return Detected("static", output=name, seen=(f"{name}/index.html",))
    if files.has("index.html"):
        return Detected("static", output=".", seen=tuple(files.seen))
    if web is not None:
        return Detected("procfile", start=f"exec {web}", output=".", seen=tuple(files.seen))
    raise DetectError(
        f"nothing in {root} says how to build or start it: a Procfile, package.json, "
        "requirements.txt or pyproject.toml, a Dockerfile, or a built site (dist/index.html); "
        "write build.command and start.command in the desired file"
    )


def _procfile(files: _Files) -> str | None:
    if not files.has("Procfile"):
        return None
    for line in files.text("Procfile").splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() == "web" and command.strip():
            return command.strip()
    return None


def _docker(files: _Files) -> Detected:
    exposed = re.findall(r"(?im)^\s*EXPOSE\s+(\d+)", files.text("Dockerfile"))
    port = int(exposed[0]) if exposed else None
    notes = () if port else ("no EXPOSE: start.port defaults to 3000; set it to the app's",)
    return Detected("docker", RuntimeName.DOCKER, port=port, seen=tuple(files.seen), notes=notes)


def _node(files: _Files, web: str | None, which: Callable[[str], str | None]) -> Detected:
    try:
        package = json.loads(files.text("package.json"))
    except ValueError as exc:
        raise DetectError(f"package.json is not valid JSON: {exc}") from None
    scripts = package.get("scripts") or {}
    deps = {**(package.get("devDependencies") or {}), **(package.get("dependencies") or {})}
    install = _node_install(files, which)
    build = f"{install} && npm run build" if "build" in scripts else install
    if web is not None or "start" in scripts:
        start = f"exec {web}" if web is not None else "exec npm start"
        return Detected("node", build=build, output=".", start=start, seen=tuple(files.seen))
    output = next((out for name, out in FRAMEWORK_OUTPUT if name in deps), "dist")
    if "build" not in scripts:
        raise DetectError(
            "package.json has neither a start script (an app) nor a build script (a site)"
        )
    return Detected("node", build=build, output=output, seen=tuple(files.seen))


def _node_install(files: _Files, which: Callable[[str], str | None]) -> str:
    if files.has("package-lock.json"):
        return "npm ci --no-audit --no-fund"
    if files.has("pnpm-lock.yaml") and which("pnpm"):
        return "pnpm install --frozen-lockfile"
    if files.has("yarn.lock") and which("yarn"):
        return "yarn install --frozen-lockfile"
    return "npm install --no-audit --no-fund"


def _python(files: _Files, web: str | None, which: Callable[[str], str | None]) -> Detected:
    python = _interpreter(files, which)
    venv = VENV.replace("python3", python, 1)
    pip = ".venv/bin/pip install -q"
    if files.has("requirements.txt"):
        wants = files.text("requirements.txt").lower()
        steps = [venv, f"{pip} -r requirements.txt"]
    else:
        wants = files.text("pyproject.toml").lower() if files.has("pyproject.toml") else ""
        steps = [venv, f"{pip} ."]
    notes: list[str] = []
    django = files.has("manage.py") and "django" in wants
    if django:
        steps.append(".venv/bin/python manage.py collectstatic --noinput")
    start = _python_start(files, web, wants, django, steps)
    if start is None:
        notes.append("no web process found: set start.command (it gets the port in $PORT)")
    return Detected(
        "python",
        build=" && ".join(steps),
        output=".",
        start=start,
        seen=tuple(files.seen),
        notes=tuple(notes),
    )


def _python_start(
    files: _Files, web: str | None, wants: str, django: bool, steps: list[str]
) -> str | None:
    """The web process, run by the release's own interpreter (``python -m``)."""
    bind = "--bind 127.0.0.1:$PORT"
    if web is not None:
        first, _, rest = web.partition(" ")
        if first in ("gunicorn", "uvicorn", "waitress-serve", "hypercorn", "daphne"):
            return f"exec .venv/bin/python -m {first.replace('-', '_')} {rest}".rstrip()
        return f"PATH=.venv/bin:$PATH exec {web}"
    gunicorn = [] if "gunicorn" in wants else [".venv/bin/pip install -q gunicorn"]
    if django:
        module = _django_module(files.root)
        if module is None:
            return None
        steps += gunicorn
        return f"exec .venv/bin/python -m gunicorn {bind} {module}.wsgi"
    for name in ("app.py", "wsgi.py", "main.py", "application.py"):
        if not files.has(name):
            continue
        text = files.text(name)
        found = re.search(r"^(\w+)\s*=\s*(Flask|FastAPI)\(", text, re.M)
        if found is None:
            continue
        app = f"{name[:-3]}:{found.group(1)}"
        if found.group(2) == "FastAPI":
            if "uvicorn" not in wants:
                steps.append(".venv/bin/pip install -q uvicorn")
            return f"exec .venv/bin/python -m uvicorn --host 127.0.0.1 --port $PORT {app}"
        steps += gunicorn
        return f"exec .venv/bin/python -m gunicorn {bind} {app}"
    return None


def _django_module(root: Path) -> str | None:
    for wsgi in sorted(root.glob("*/wsgi.py")):
        return wsgi.parent.name
    return None


def _interpreter(files: _Files, which: Callable[[str], str | None]) -> str:
    """``python3``, or the ``python3.N`` that ``.python-version`` or ``runtime.txt`` asks for."""
    asked = None
    if files.has(".python-version"):
        asked = files.text(".python-version").strip().splitlines()[0].strip()
    elif files.has("runtime.txt"):
        asked = files.text("runtime.txt").strip().removeprefix("python-")
    if not asked:
        return "python3"
    match = re.match(r"^(\d+)\.(\d+)", asked)
    if match is None:
        raise DetectError(f"cannot read the Python version asked for: {asked!r}")
    name = f"python{match.group(1)}.{match.group(2)}"
    if which(name) is not None:
        return name
    have = sorted(
        (f"3.{minor}" for minor in range(6, 20) if which(f"python3.{minor}")),
        key=lambda v: int(v.split(".")[1]),
    )
    raise DetectError(
        f"the app asks for Python {asked} and this host has no {name}; installed: "
        f"{', '.join(have) or 'none but python3'}"
    )
