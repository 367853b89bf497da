"""Working out how to build and start an app from its files (``reconciler detect``/``new``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from reconciler.core.detect import DetectError, detect, find_program
from reconciler.core.kinds import RuntimeName
from reconciler.core.spec import ProjectSpec
from reconciler.stores.desired import parse
from tests.conftest import PYTHON, REPO

PYTHONS = {"python3.11", "python3.12"}


def which(name: str) -> str | None:
    return f"/usr/bin/{name}" if name in PYTHONS else None


def app(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


FLASK = "from flask import Flask\n\napp = Flask(__name__)\n"
VENV = (
    '[ "$(.venv/bin/python -V 2>&1)" = "$(python3 -V 2>&1)" ] || '
    "python3 -m venv --copies --clear .venv"
)


def pip(extra: str = "") -> str:
    """The requirements' install, skipped when they are the ones installed last."""
    marker = ".venv/.installed-requirements.txt"
    return (f"{{ cmp -s requirements.txt {marker} || "
            f"{{ .venv/bin/pip install -r requirements.txt{extra} && cp requirements.txt {marker}; }}; }}")  # fmt: skip


@pytest.mark.parametrize(
    ("files", "build", "output", "start"),
    [
        pytest.param({"requirements.txt": "flask\ngunicorn\n", "app.py": FLASK},
                     f"{VENV} && {pip()}", ".",
                     "exec .venv/bin/python -m gunicorn --bind $HOST:$PORT app:app",
                     id="flask"),
        pytest.param({"requirements.txt": "flask\n", "app.py": FLASK},
                     f"{VENV} && {pip(' gunicorn')}", ".",
                     "exec .venv/bin/python -m gunicorn --bind $HOST:$PORT app:app",
                     id="flask-without-gunicorn"),
        pytest.param({"requirements.txt": "django\ngunicorn\n", "manage.py": "",
                      "mysite/wsgi.py": ""},
                     f"{VENV} && {pip()} && .venv/bin/python manage.py collectstatic --noinput", ".",
                     "exec .venv/bin/python -m gunicorn --bind $HOST:$PORT mysite.wsgi",
                     id="django"),
        pytest.param({"pyproject.toml": "[project]\nname='x'\ndependencies=['fastapi','uvicorn']\n",
                      "main.py": "from fastapi import FastAPI\napi = FastAPI()\n"},
                     f"{VENV} && .venv/bin/pip install .", ".",
                     "exec .venv/bin/python -m uvicorn --host $HOST --port $PORT main:api",
                     id="fastapi-pyproject"),
        pytest.param({"requirements.txt": "gunicorn\n", "Procfile": "web: gunicorn hello:app\n"},
                     f"{VENV} && {pip()}", ".",
                     "exec .venv/bin/python -m gunicorn --bind $HOST:$PORT hello:app",
                     id="procfile-python"),
        pytest.param({"requirements.txt": "uvicorn\n",
                      "Procfile": "web: uvicorn main:app --port $PORT --host 0.0.0.0\n"},
                     f"{VENV} && {pip()}", ".",
                     "exec .venv/bin/python -m uvicorn main:app --port $PORT --host 0.0.0.0",
                     id="procfile-says-where"),
        pytest.param({"package.json": json.dumps({"scripts": {"start": "node server.js"}}),
                      "package-lock.json": "{}"},
                     "{ cmp -s package-lock.json node_modules/.installed-package-lock.json || { npm ci "
                     "--no-audit --no-fund && cp package-lock.json "
                     "node_modules/.installed-package-lock.json; }; }", ".", "exec npm start",
                     id="express"),
        pytest.param({"package.json": json.dumps({"scripts": {"build": "vite build"},
                                                  "devDependencies": {"vite": "5"}})},
                     "npm install --no-audit --no-fund && npm run build", "dist", None,
                     id="vite-site"),
        pytest.param({"package.json": json.dumps({"scripts": {"build": "react-scripts build"},
                                                  "dependencies": {"react-scripts": "5"}})},
                     "npm install --no-audit --no-fund && npm run build", "build", None,
                     id="create-react-app"),
        pytest.param({"package.json": json.dumps({"scripts": {"build": "react-scripts build",
                                                              "start": "react-scripts start"},
                                                  "dependencies": {"react-scripts": "5"}})},
                     "npm install --no-audit --no-fund && npm run build", "build", None,
                     id="a-site-builders-start-is-its-dev-server"),
        pytest.param({"public/index.html": "hi"}, None, "public", None, id="prebuilt"),
    ],
)  # fmt: skip
def test_an_app_is_recognised_by_its_files(
    tmp_path: Path, files: dict[str, str], build: str | None, output: str, start: str | None
) -> None:
    found = detect(app(tmp_path, files), which=which)
    assert (found.build, found.output, found.start) == (build, output, start)
    assert found.runtime == RuntimeName.PROCESS


def test_a_dockerfile_takes_the_docker_runtime_and_its_exposed_port(tmp_path: Path) -> None:
    found = detect(app(tmp_path, {"Dockerfile": "FROM x\nEXPOSE 8080\n", "app.py": FLASK}))
    assert (found.runtime, found.port, found.kind) == (RuntimeName.DOCKER, 8080, "docker")


def test_the_python_asked_for_is_used_or_named_with_the_ones_installed(tmp_path: Path) -> None:
    files = {"requirements.txt": "flask\n", "app.py": FLASK, ".python-version": "3.12.1\n"}
    found = detect(app(tmp_path / "a", files), which=which)
    assert found.build is not None and "/usr/bin/python3.12 -m venv --copies" in found.build
    with pytest.raises(DetectError, match=r"asks for Python 3\.9 .* installed: 3\.11, 3\.12"):
        detect(app(tmp_path / "b", {**files, ".python-version": "3.9\n"}), which=which)
    runtime_txt = {"requirements.txt": "flask\n", "app.py": FLASK, "runtime.txt": "python-3.11.4"}
    assert "python3.11 -m venv" in str(detect(app(tmp_path / "c", runtime_txt), which=which).build)


def test_nothing_to_go_by_says_what_it_looks_for(tmp_path: Path) -> None:
    with pytest.raises(DetectError, match=r"a Procfile, package\.json, requirements\.txt"):
        detect(tmp_path)


def test_new_writes_a_stopped_desired_file_that_reads_back(tmp_path: Path) -> None:
    source = app(tmp_path / "hello", {"requirements.txt": "flask\n", "app.py": FLASK})
    desired = tmp_path / "desired"
    run = [PYTHON, "-m", "reconciler", "new", "hello", "--source", str(source),
           "--desired", str(desired)]  # fmt: skip
    done = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    path = desired / "hello.yaml"
    spec = parse(path, path.read_bytes())
    assert spec.source == "../hello" and spec.production.state == "stopped"
    # the smallest file: each build works the commands out; they show as comments
    assert spec.start.command is None and spec.build.command is None
    assert "#   start: exec .venv/bin/python -m gunicorn" in path.read_text()
    again = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "exists" in again.stderr, "an existing file is kept"
    shown = subprocess.run([PYTHON, "-m", "reconciler", "detect", str(source), "--json"],
                           cwd=REPO, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert json.loads(shown.stdout)["kind"] == "python"


def test_a_procfile_release_runs_with_the_apps_tools(tmp_path: Path) -> None:
    files = {"requirements.txt": "django\n", "manage.py": "", "mysite/wsgi.py": "",
             "Procfile": "web: gunicorn mysite.wsgi\nrelease: python manage.py migrate\n"}  # fmt: skip
    found = detect(app(tmp_path, files), which=which)
    assert found.release == "export PATH=.venv/bin:$PATH; exec python manage.py migrate"
    assert found.identity is not None and "migrate" in found.identity
    assert found.record()["release"] == found.release


def test_a_build_on_this_host_takes_a_dockerfile_last(tmp_path: Path) -> None:
    files = {"Dockerfile": "FROM x\n", "package.json": json.dumps({"scripts": {"start": "x"}})}
    assert detect(app(tmp_path, files)).kind == "node", "what reconciler detect says is done"
    alone = app(tmp_path / "alone", {"Dockerfile": "FROM x\n"})
    assert detect(alone).runtime == RuntimeName.DOCKER


def test_a_static_site_has_no_identity_beyond_its_files(tmp_path: Path) -> None:
    found = detect(app(tmp_path, {"public/index.html": "hi"}))
    assert found.identity is None and found.start is None


def test_a_python_version_is_found_past_a_pyenv_shim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shim on the PATH answers only for the selected version: the version's own binary
    is taken, and the build names it by its path."""
    shims, real = tmp_path / "pyenv" / "shims", tmp_path / "pyenv" / "versions" / "3.12.1" / "bin"
    for where in (shims, real):
        where.mkdir(parents=True)
        (where / "python3.12").write_text("#!/bin/sh\n")
        (where / "python3.12").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:/usr/bin:/bin")
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    assert find_program("python3.12") == str(real / "python3.12")
    files = {"requirements.txt": "flask\n", "app.py": FLASK, ".python-version": "3.12\n"}
    found = detect(app(tmp_path / "app", files))
    assert f"|| {real}/python3.12 -m venv --copies --clear .venv" in str(found.build)


def test_only_an_app_that_just_a_dockerfile_builds_is_put_on_the_docker_runtime(
    tmp_path: Path,
) -> None:
    from reconciler.stores.desired.store import found_runtime

    def spec(source: Path, extra: str = "") -> ProjectSpec:
        path = tmp_path / "desired" / "x.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"source: {source}\n{extra}")
        return parse(path, path.read_bytes())

    alone = app(tmp_path / "alone", {"Dockerfile": "FROM x\n", "site/index.html": "hi"})
    both = app(tmp_path / "both", {"Dockerfile": "FROM x\n", "requirements.txt": "", "Procfile":
                                   "web: python -m http.server $PORT\n"})  # fmt: skip
    desired = tmp_path / "desired" / "x.yaml"
    process, swarm = RuntimeName.PROCESS, RuntimeName.SWARM
    assert found_runtime(spec(alone), desired, process).runtime == RuntimeName.DOCKER
    assert found_runtime(spec(both), desired, process).runtime is None, "a build here"
    assert found_runtime(spec(alone), desired, swarm).runtime is None, "swarm builds images"
    said = spec(alone, "runtime: process\nbuild:\n  output: site\n")
    assert found_runtime(said, desired, process) == said, "what the file says wins"
