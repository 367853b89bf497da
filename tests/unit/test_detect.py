"""Working out how to build and start an app from its files (``reconciler detect``/``new``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from reconciler.core.kinds import RuntimeName
from reconciler.sources.detect import DetectError, detect
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
VENV = "python3 -m venv --copies .venv"


@pytest.mark.parametrize(
    ("files", "build", "output", "start"),
    [
        pytest.param({"requirements.txt": "flask\ngunicorn\n", "app.py": FLASK},
                     f"{VENV} && .venv/bin/pip install -q -r requirements.txt", ".",
                     "exec .venv/bin/python -m gunicorn --bind 127.0.0.1:$PORT app:app",
                     id="flask"),
        pytest.param({"requirements.txt": "flask\n", "app.py": FLASK},
                     f"{VENV} && .venv/bin/pip install -q -r requirements.txt && "
                     ".venv/bin/pip install -q gunicorn", ".",
                     "exec .venv/bin/python -m gunicorn --bind 127.0.0.1:$PORT app:app",
                     id="flask-without-gunicorn"),
        pytest.param({"requirements.txt": "django\ngunicorn\n", "manage.py": "",
                      "mysite/wsgi.py": ""},
                     f"{VENV} && .venv/bin/pip install -q -r requirements.txt && "
                     ".venv/bin/python manage.py collectstatic --noinput", ".",
                     "exec .venv/bin/python -m gunicorn --bind 127.0.0.1:$PORT mysite.wsgi",
                     id="django"),
        pytest.param({"pyproject.toml": "[project]\nname='x'\ndependencies=['fastapi','uvicorn']\n",
                      "main.py": "from fastapi import FastAPI\napi = FastAPI()\n"},
                     f"{VENV} && .venv/bin/pip install -q .", ".",
                     "exec .venv/bin/python -m uvicorn --host 127.0.0.1 --port $PORT main:api",
                     id="fastapi-pyproject"),
        pytest.param({"requirements.txt": "gunicorn\n", "Procfile": "web: gunicorn hello:app\n"},
                     f"{VENV} && .venv/bin/pip install -q -r requirements.txt", ".",
                     "exec .venv/bin/python -m gunicorn hello:app", id="procfile-python"),
        pytest.param({"package.json": json.dumps({"scripts": {"start": "node server.js"}}),
                      "package-lock.json": "{}"},
                     "npm ci --no-audit --no-fund", ".", "exec npm start", id="express"),
        pytest.param({"package.json": json.dumps({"scripts": {"build": "vite build"},
                                                  "devDependencies": {"vite": "5"}})},
                     "npm install --no-audit --no-fund && npm run build", "dist", None,
                     id="vite-site"),
        pytest.param({"package.json": json.dumps({"scripts": {"build": "react-scripts build"},
                                                  "dependencies": {"react-scripts": "5"}})},
                     "npm install --no-audit --no-fund && npm run build", "build", None,
                     id="create-react-app"),
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
    assert found.build is not None and found.build.startswith("python3.12 -m venv --copies")
    with pytest.raises(DetectError, match=r"asks for Python 3\.9 .* installed: 3\.11, 3\.12"):
        detect(app(tmp_path / "b", {**files, ".python-version": "3.9\n"}), which=which)
    runtime_txt = {"requirements.txt": "flask\n", "app.py": FLASK, "runtime.txt": "python-3.11.4"}
    assert str(detect(app(tmp_path / "c", runtime_txt), which=which).build).startswith("python3.11")


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
    assert spec.start.command is not None and "gunicorn" in spec.start.command
    again = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "exists" in again.stderr, "an existing file is kept"
    shown = subprocess.run([PYTHON, "-m", "reconciler", "detect", str(source), "--json"],
                           cwd=REPO, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert json.loads(shown.stdout)["kind"] == "python"
