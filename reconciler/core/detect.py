"""How to build and start an app, worked out from its files the way the platforms users come
from do (Heroku's Procfile, a package.json's scripts, a requirements.txt, a Dockerfile, a
prebuilt site): at a build whose desired file names no build or start command, and for
``reconciler detect DIR`` and ``reconciler new ID --source DIR``.

Detection only reads files; it runs nothing and downloads nothing. What it found is kept in
the release's manifest (``app``), so a release starts the way it was built to, rollbacks
included.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from reconciler.core.kinds import RuntimeName
from reconciler.core.spec import ProjectSpec

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
# the venv is made again only when the Python asked for is not the one it has; --copies: the
# release holds its own interpreter
VENV = (
    '[ "$(.venv/bin/python -V 2>&1)" = "$(python3 -V 2>&1)" ] || '
    "python3 -m venv --copies --clear .venv"
)


class DetectError(ValueError):
    """Nothing to go by, or something asked for that this host does not have."""


def find_program(name: str) -> str | None:
    """Where ``name`` is: a ``python3.N`` is looked for as a real interpreter (a pyenv shim
    on the PATH names a version that may not be selected: the version's own binary under
    ``$PYENV_ROOT/versions`` is taken instead); anything else on the PATH."""
    if not re.fullmatch(r"python3\.\d+", name):
        return shutil.which(name)
    for where in os.environ.get("PATH", "").split(os.pathsep):
        if where and "shims" not in Path(where).parts:
            path = Path(where) / name
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    try:
        versions = sorted(
            root.iterdir(), key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)]
        )
    except OSError:
        return None
    for version in reversed(versions):
        path = version / "bin" / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


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
    release: str | None = None  # the Procfile's release: (once per deploy, before going live)
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
            "release": self.release,
            "seen": list(self.seen),
            "notes": list(self.notes),
        }

    @property
    def summary(self) -> str:
        """One line an operator reads in status and history: ``python (requirements.txt,
        Procfile)``."""
        return f"{self.kind} ({', '.join(self.seen)})" if self.seen else self.kind

    def desired_yaml(self, source: str) -> str:
        """The smallest desired file for the app in ``source``, stopped until it is deployed:
        each build works the commands out again from the files (shown here as comments);
        writing build.command or start.command takes over."""
        lines = [f"# written by reconciler new from {', '.join(self.seen) or 'the source'}"]
        if self.runtime == RuntimeName.PROCESS:
            lines.append("# each build works out from the app's files (reconciler detect DIR):")
            for name, value in (("build", self.build), ("output", self.output),
                                ("start", self.start), ("release", self.release)):  # fmt: skip
                if value:
                    lines.append(f"#   {name}: {value}")
            lines.append("# to take over, write build.command, build.output and start.command")
        lines += [f"source: {json.dumps(source)}"]
        if self.runtime != RuntimeName.PROCESS:
            lines.append(f"runtime: {self.runtime}")
        lines += ["production:", "  state: stopped  # reconciler deploy ID (or: running)"]
        if self.port:
            lines += ["start:", f"  port: {self.port}"]
        lines += ["health:", f"  path: {json.dumps(self.health)}", "  timeout: 120"]
        lines += [f"# note: {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def applied(self, spec: ProjectSpec) -> ProjectSpec:
        """``spec`` with the build this app needs (its start stays the release's: see
        ``record``)."""
        build = spec.build.model_copy(update={"command": self.build, "output": self.output})
        return spec.model_copy(update={"build": build})

    def record(self) -> dict[str, Any]:
        """What a release keeps of it (its manifest's ``app``)."""
        found = self.describe()
        del found["notes"], found["runtime"], found["port"]
        return found

    @property
    def identity(self) -> str | None:
        """What runs besides the files (the version names it): the start and release
        commands of an app; None for a static site."""
        if self.start is None and self.release is None:
            return None
        return f"start {self.start}\nrelease {self.release}"


def run(command: str) -> str:
    """A Procfile command as the start command: exec'd when it is one command (the instance
    is the app's own process), run by the shell when it is a list (``a && b``)."""
    return command if re.search(r"[;&|\n]", command) else f"exec {command}"


def on_path(tools: str, command: str) -> str:
    """``command`` with the app's own tools (``.venv/bin``) first on its PATH."""
    return f"export PATH={tools}:$PATH; {run(command)}"


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


def detect(
    root: Path,
    *,
    which: Callable[[str], str | None] = find_program,
) -> Detected:
    """What the app in ``root`` needs (DetectError: nothing to go by, or a Python version this
    host does not have). A Dockerfile is taken only when no other convention says how: what
    ``reconciler detect`` prints is what a deploy does."""
    if not root.is_dir():
        raise DetectError(f"{root} is not a directory")
    files = _Files(root)
    web, release = _procfile(files)
    found = None
    if files.has("package.json"):
        found = _node(files, web, which)
    elif any(files.has(n) for n in ("requirements.txt", "pyproject.toml", "manage.py")):
        found = _python(files, web, which)
    if found is not None:
        tools = ".venv/bin" if found.kind == "python" else "node_modules/.bin"
        return replace(found, release=on_path(tools, release) if release else None)
    if web is not None:
        return Detected(
            "procfile", start=run(web), output=".", release=release, seen=tuple(files.seen)
        )
    if files.has("Dockerfile"):
        return _docker(files)
    for name in STATIC_DIRS:
        if (root / name / "index.html").is_file():
            return Detected("static", output=name, seen=(f"{name}/index.html",))
    if files.has("index.html"):
        return Detected("static", output=".", seen=tuple(files.seen))
    raise DetectError(
        f"nothing in {root} says how to build or start it: a Procfile, package.json, "
        "requirements.txt or pyproject.toml, a Dockerfile, or a built site (dist/index.html); "
        "write build.command and start.command in the desired file"
    )


def _procfile(files: _Files) -> tuple[str | None, str | None]:
    """The Procfile's ``web:`` and ``release:`` commands."""
    found: dict[str, str] = {}
    if files.has("Procfile"):
        for line in files.text("Procfile").splitlines():
            name, sep, command = line.partition(":")
            if sep and name.strip() in ("web", "release") and command.strip():
                found.setdefault(name.strip(), command.strip())
    return found.get("web"), found.get("release")


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
    site = next((out for name, out in FRAMEWORK_OUTPUT if name in deps), None)
    # a site builder's start script is its dev server: its build is what is served
    dev_server = site is not None and site != "out" and "build" in scripts
    if web is not None or ("start" in scripts and not dev_server):
        start = on_path("node_modules/.bin", web) if web is not None else "exec npm start"
        return Detected("node", build=build, output=".", start=start, seen=tuple(files.seen))
    output = site or "dist"
    if "build" not in scripts:
        raise DetectError(
            "package.json has neither a start script (an app) nor a build script (a site)"
        )
    return Detected("node", build=build, output=output, seen=tuple(files.seen))


def _node_install(files: _Files, which: Callable[[str], str | None]) -> str:
    if files.has("package-lock.json"):
        return once("package-lock.json", "npm ci --no-audit --no-fund")
    if files.has("pnpm-lock.yaml") and which("pnpm"):
        return once("pnpm-lock.yaml", "pnpm install --frozen-lockfile")
    if files.has("yarn.lock") and which("yarn"):
        return once("yarn.lock", "yarn install --frozen-lockfile")
    return "npm install --no-audit --no-fund"


def once(lock: str, install: str, into: str = "node_modules") -> str:
    """``install``, skipped when ``lock`` is the one the last install installed (a copy of it
    is kept in ``into``): a redeploy with unchanged dependencies installs nothing."""
    marker = f"{into}/.installed-{lock.rsplit('/', 1)[-1]}"
    return f"{{ cmp -s {lock} {marker} || {{ {install} && cp {lock} {marker}; }}; }}"


def _python(files: _Files, web: str | None, which: Callable[[str], str | None]) -> Detected:
    python = _interpreter(files, which)
    venv = VENV.replace("python3", python)
    if files.has("requirements.txt"):
        wants = files.text("requirements.txt").lower()
    else:
        wants = files.text("pyproject.toml").lower() if files.has("pyproject.toml") else ""
    django = files.has("manage.py") and "django" in wants
    start, extra = _python_start(files, web, wants, django)
    more = "".join(f" {name}" for name in extra)
    if files.has("requirements.txt"):
        install = once(
            "requirements.txt", f".venv/bin/pip install -r requirements.txt{more}", ".venv"
        )
    else:
        install = f".venv/bin/pip install .{more}"
    steps = [venv, install]
    if django:
        steps.append(".venv/bin/python manage.py collectstatic --noinput")
    notes: list[str] = []
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
    files: _Files, web: str | None, wants: str, django: bool
) -> tuple[str | None, list[str]]:
    """The web process, run by the release's own interpreter (``python -m``), and the server
    to install with the requirements when they lack it."""
    bind = "--bind $HOST:$PORT"
    if web is not None:
        first, _, rest = web.partition(" ")
        if first in ("gunicorn", "uvicorn", "waitress-serve", "hypercorn", "daphne"):
            server = first.replace("-", "_")
            return f"exec .venv/bin/python -m {server} {_bound(first, rest)}", []
        return on_path(".venv/bin", web), []
    gunicorn = [] if "gunicorn" in wants else ["gunicorn"]
    if django:
        module = _django_module(files.root)
        if module is None:
            return None, []
        return f"exec .venv/bin/python -m gunicorn {bind} {module}.wsgi", gunicorn
    for name in ("app.py", "wsgi.py", "main.py", "application.py"):
        if not files.has(name):
            continue
        found = re.search(r"^(\w+)\s*=\s*(Flask|FastAPI)\(", files.text(name), re.M)
        if found is None:
            continue
        app = f"{name[:-3]}:{found.group(1)}"
        if found.group(2) == "FastAPI":
            uvicorn = [] if "uvicorn" in wants else ["uvicorn"]
            return f"exec .venv/bin/python -m uvicorn --host $HOST --port $PORT {app}", uvicorn
        return f"exec .venv/bin/python -m gunicorn {bind} {app}", gunicorn
    return None, []


def _bound(server: str, args: str) -> str:
    """A Procfile's server arguments, bound to ``$HOST:$PORT`` when they name no address
    (gunicorn alone would take 0.0.0.0, past the edge; uvicorn port 8000)."""
    words = args.split()
    if server == "gunicorn" and not any(w.startswith(("-b", "--bind")) for w in words):
        return f"--bind $HOST:$PORT {args}".rstrip()
    if server == "uvicorn" and not any(w.startswith(("--port", "--fd", "--uds")) for w in words):
        return f"--host $HOST --port $PORT {args}".rstrip()
    return args


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
    found = which(name)
    if found is not None:
        return name if shutil.which(name) == found else found
    have = sorted(
        (f"3.{minor}" for minor in range(6, 20) if which(f"python3.{minor}")),
        key=lambda v: int(v.split(".")[1]),
    )
    raise DetectError(
        f"the app asks for Python {asked} and this host has no {name}; installed: "
        f"{', '.join(have) or 'none but python3'}"
    )
