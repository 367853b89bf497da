"""Apps as their platforms' guides shape them, deployed from the smallest desired file (a
source and ``state: running``): the build and start are worked out from their files at the
build, kept with the release, and shown; a release phase gates going live; a virtualenv
works from the release."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reconciler.core.kinds import EdgeMode
from reconciler.core.spec import ProjectId
from reconciler.stores.releases import ReleaseStore
from tests.integration.gitrepo import Repo
from tests.integration.harness import Env, environment, get, wait_for

FLASK = """\
from flask import Flask

app = Flask(__name__)


@app.route("/")
def hello():
    return "hello from flask {}"
"""
EXPRESS = """\
const express = require("express");
const app = express();
const port = process.env.PORT || 3000;
app.get("/", (req, res) => res.send("hello from express {}"));
app.listen(port, () => console.log(`listening on ${{port}}`));
"""
SMALLEST = "source: ../{name}\nhealth:\n  timeout: 120\nproduction:\n  state: running\n"


def smallest(name: str, generation: int = 0) -> str:
    """The smallest desired file; a new ``generation`` asks for a fresh build."""
    return SMALLEST.format(name=name) + f"  generation: {generation}\n"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def served(env: Env, project: str, text: str, timeout: float = 240) -> str:
    """Until the project's address answers with ``text``; the version that does."""

    def check() -> str | None:
        row = env.row(project)
        if row is None or row.productionPort is None or row.productionStatus != "running":
            if row is not None and row.productionStatus == "failed":
                raise AssertionError(f"{project} failed: {row.productionError}")
            return None
        body = get(f"http://127.0.0.1:{row.productionPort}/")
        return row.productionHash if body is not None and text in body else None

    return str(wait_for(check, timeout, f"{project} to serve {text!r}"))


def app_of(env: Env, project: str, version: str) -> dict[str, object]:
    app = ReleaseStore(env.data / "production").app_of(project, version)  # type: ignore[arg-type]
    assert app is not None, "the release keeps what was detected"
    return app


def test_a_flask_app_from_its_guide_deploys_and_redeploys_from_the_smallest_file(
    tmp_path: Path,
) -> None:
    source = write(
        tmp_path / "flaskapp", {"app.py": FLASK.format(1), "requirements.txt": "flask\n"}
    )
    with environment(tmp_path, edge=EdgeMode.ON) as env:
        env.start()
        env.write("flaskapp", SMALLEST.format(name="flaskapp"))
        first = served(env, "flaskapp", "hello from flask 1")
        app = app_of(env, "flaskapp", first)
        assert app["kind"] == "python" and "gunicorn" in str(app["start"])
        assert app["seen"] == ["requirements.txt", "app.py"]
        (source / "app.py").write_text(FLASK.format(2))
        env.write("flaskapp", smallest("flaskapp", 1))
        second = served(env, "flaskapp", "hello from flask 2")
        assert second != first
        logs = env.data / "production" / "flaskapp"
        assert "Successfully installed" in (logs / first / "logs" / "build.log").read_text()
        build_log = (logs / second / "logs" / "build.log").read_text()
        assert "Successfully installed" not in build_log, "unchanged dependencies: none again"


def test_a_pushed_flask_app_reuses_its_installed_dependencies(tmp_path: Path) -> None:
    """A git source builds in a clean checkout: the venv the last build installed is moved
    in, so a push of a one-line change installs nothing."""
    repo = Repo(tmp_path / "git")
    repo.commit({"app.py": FLASK.format(1), "requirements.txt": "flask\n"}, "first")
    repo.push()
    desired = (f"source:\n  git: {repo.remote}\n  poll: 5\nproduction:\n  state: running\n"
               "  follow: true\nhealth:\n  timeout: 120\n")  # fmt: skip
    with environment(tmp_path) as env:
        env.start()
        env.write("pushed", desired)
        first = served(env, "pushed", "hello from flask 1")
        repo.commit({"app.py": FLASK.format(2)}, "second")
        repo.push()
        assert env.daemon is not None
        env.daemon.follower.check_soon(ProjectId("pushed"))  # what a push hook does
        second = served(env, "pushed", "hello from flask 2")
        log = (env.data / "production" / "pushed" / second / "logs" / "build.log").read_text()
        assert second != first and "Reusing the dependencies the last build installed" in log
        built = (env.data / "production" / "pushed" / first / "logs" / "build.log").read_text()
        assert "Successfully installed" in built, "the first build installs"
        assert "Collecting" not in log and "Successfully installed" not in log, log


def test_an_express_app_deploys_from_the_smallest_file(tmp_path: Path) -> None:
    package = {"name": "hello", "version": "1.0.0", "scripts": {"start": "node index.js"},
               "dependencies": {"express": "^4.19.2"}}  # fmt: skip
    write(tmp_path / "web", {"index.js": EXPRESS.format(1), "package.json": json.dumps(package)})
    with environment(tmp_path, edge=EdgeMode.ON) as env:
        env.start()
        env.write("web", SMALLEST.format(name="web"))
        version = served(env, "web", "hello from express 1")
        assert app_of(env, "web", version)["start"] == "exec npm start"


def test_a_release_phase_gates_going_live_and_a_site_can_become_an_app(tmp_path: Path) -> None:
    """A prebuilt site is served as files; the same project made an app (a Procfile) runs
    as one, its release phase first; a failing release phase leaves the old version serving;
    a rollback to the site serves files again."""
    source = write(tmp_path / "shop", {"public/index.html": "the static shop"})
    with environment(tmp_path, edge=EdgeMode.ON) as env:
        env.start()
        env.write("shop", SMALLEST.format(name="shop"))
        site = served(env, "shop", "the static shop", 60)
        assert env.instances("shop") == [], "a site is served by the edge, no process"
        procfile = "web: python3 -m http.server $PORT\nrelease: echo migrated > migrated.txt\n"
        write(source, {"Procfile": procfile, "index.html": "the shop app"})
        shutil.rmtree(source / "public")
        env.write("shop", smallest("shop", 1))
        app = served(env, "shop", "the shop app", 60)
        row = env.row("shop")
        assert row is not None
        assert get(f"http://127.0.0.1:{row.productionPort}/migrated.txt") == "migrated\n"
        assert [i.hash for i in env.instances("shop")] == [app]

        write(source, {"Procfile": procfile.replace("echo migrated", "exit 3; echo")})
        env.write("shop", smallest("shop", 2))
        failed = env.wait_status("shop", "failed", 60)
        assert "Release phase failed" in str(failed.productionError)
        assert f"version {app} keeps serving" in str(failed.productionError)
        assert get(f"http://127.0.0.1:{row.productionPort}/") == "the shop app"

        env.write("shop", smallest("shop", 2) + f'  version: "{site}"\n')
        wait_for(lambda: get(f"http://127.0.0.1:{row.productionPort}/") == "the static shop",
                 30, "the rollback to the site")  # fmt: skip
        # the app's instance is kept for the rollback window (rolling forward is a switch)
        wait_for(lambda: [r.role for r in env.db.instances("shop")] == ["standby"], 30,
                 "the app's instance out of service")  # fmt: skip


def test_an_apps_virtualenv_may_link_out_of_the_release_and_its_scripts_run_there(
    tmp_path: Path,
) -> None:
    """An app's release keeps the venv's link to its interpreter (never followed by the
    daemon); its console scripts, made in a build dir that is gone, run from the release."""
    write(tmp_path / "tool", {"requirements.txt": "", "index.html": "venv app",
                              "Procfile": "web: pip --version > pip.txt && exec python -m "
                                          "http.server $PORT\n"})  # fmt: skip
    with environment(tmp_path) as env:
        env.start()
        env.write("tool", SMALLEST.format(name="tool"))
        version = served(env, "tool", "venv app", 120)
        row = env.row("tool")
        assert row is not None and row.productionPort is not None
        pip = get(f"http://127.0.0.1:{row.productionPort}/pip.txt")
        release = env.data / "production" / "tool" / version / "dist"
        assert pip is not None and str(release / ".venv") in pip, pip
        assert (release / ".venv/bin/pip").read_bytes().startswith(b"#!/bin/sh\n'''exec'")


@pytest.mark.parametrize("served_as_files", [False, True])
def test_links_out_of_a_release_are_kept_for_an_app_and_refused_for_a_site(
    tmp_path: Path, served_as_files: bool
) -> None:
    write(tmp_path / "linked", {"index.html": "linked"})
    (tmp_path / "linked" / "python").symlink_to("/usr/bin/python3")
    start = "" if served_as_files else "start:\n  command: exec python3 -m http.server $PORT\n"
    with environment(tmp_path, edge=EdgeMode.ON) as env:
        env.start()
        env.write("linked", SMALLEST.format(name="linked") + "build:\n  output: .\n" + start)
        if served_as_files:
            failed = env.wait_status("linked", "failed", 60)
            assert "symlink dist/python -> /usr/bin/python3 leaves dist/" in str(
                failed.productionError
            )
        else:
            version = served(env, "linked", "linked", 60)
            kept = env.data / "production" / "linked" / version / "dist" / "python"
            assert kept.is_symlink() and str(kept.readlink()) == "/usr/bin/python3"
