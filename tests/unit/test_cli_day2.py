"""The day-2 commands on this host's stores (no daemon): start, stop and deploy of several
projects, pin and unpin, status's pin line and exit codes, history's truth, secrets, a pipe
closed early, and each command's own --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.core.spec import ProjectId
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB

SITE = "# {name}\nsource: ../site\nproduction:\n  state: stopped\nhealth:\n  timeout: 1\n"


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    desired, data = tmp_path / "desired", tmp_path / "data"
    desired.mkdir()
    for name in ("www", "blog", "shop"):
        (desired / f"{name}.yaml").write_text(SITE.format(name=name))
    (tmp_path / "site").mkdir()
    StateDB(data / "state.db").close()
    return desired, data


def run(dirs: tuple[Path, Path], *argv: str) -> int:
    desired, data = dirs
    return main([*argv, "--desired", str(desired), "--data", str(data)])


def kept(dirs: tuple[Path, Path], html: str, *, served: bool) -> str:
    store = ReleaseStore(dirs[1] / "production")
    dist = dirs[1].parent / f"dist-{html}"
    dist.mkdir()
    (dist / "index.html").write_text(html)
    version = store.commit(store.begin(ProjectId("www")), dist=dist).hash
    db = StateDB(dirs[1] / "state.db")
    if served:
        db.version_served("www", version)
    else:
        db.version_failed("www", version, "health check failed: GET / answered 500")
    db.close()
    return version


def test_start_and_stop_several_or_all(
    dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    desired = dirs[0]
    assert run(dirs, "start", "www", "blog") == 0
    assert "state: running" in (desired / "www.yaml").read_text()
    assert "state: running" in (desired / "blog.yaml").read_text()
    assert "state: stopped" in (desired / "shop.yaml").read_text()
    assert run(dirs, "stop", "--all") == 0
    assert all("state: stopped" in p.read_text() for p in desired.glob("*.yaml"))
    assert run(dirs, "stop", "www", "nope") == 1  # one of them failed: 1, the other done
    assert "nope: project 'nope' not found" in capsys.readouterr().err
    assert run(dirs, "start") == 2  # no project named
    assert run(dirs, "start", "www", "--all") == 2


def test_pin_unpin_and_status_say_so(
    dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    good = kept(dirs, "good", served=True)
    bad = kept(dirs, "bad", served=False)
    assert run(dirs, "pin", "www", bad) == 1
    assert "never served (its last start: health check failed" in capsys.readouterr().err
    assert run(dirs, "pin", "www", good) == 0
    assert f"pinned to {good} (not following): `reconciler unpin www`" in capsys.readouterr().out
    assert run(dirs, "status", "www") == 0
    assert f"pinned to {good} (not following)" in capsys.readouterr().out
    assert run(dirs, "history", "www") == 0
    history = capsys.readouterr().out
    assert "never served: health check failed: GET / answered 500" in history
    assert run(dirs, "unpin", "www") == 0
    assert "pinned" not in capsys.readouterr().out
    assert run(dirs, "pin", "www", bad, "--force") == 0
    assert run(dirs, "pin", "www", "NOTAHASH") == 2


def test_status_of_an_invalid_file_is_a_failure_with_its_error(
    dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (dirs[0] / "shop.yaml").write_text("source: [\n")
    assert run(dirs, "status", "shop") == 1
    out = capsys.readouterr().out
    assert "error: the desired file is invalid (nothing runs): shop.yaml:" in out
    assert run(dirs, "status") == 1


def test_secrets_from_a_file_listed_without_values_and_removed(
    dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (dirs[0] / "www.yaml").write_text(
        SITE.format(name="www") + "env:\n  DATABASE_URL: {secret: db-url}\n"
    )
    assert run(dirs, "secret", "list") == 1  # referred to, not set
    assert "db-url  NOT SET  used by www" in capsys.readouterr().out
    value = dirs[1].parent / "value"
    value.write_text("postgres://u:hunter2@db/app\n")
    assert run(dirs, "secret", "set", "db-url", "--from-file", str(value)) == 0
    assert run(dirs, "secret", "list") == 0
    listed = capsys.readouterr().out
    assert "used by www" in listed and "hunter2" not in listed
    assert run(dirs, "secret", "rm", "db-url") == 0
    assert run(dirs, "secret", "rm", "db-url") == 1
    assert run(dirs, "secret", "set", "Bad Name", "--from-file", str(value)) == 2


def test_a_pipe_closed_early_is_quiet(dirs: tuple[Path, Path]) -> None:
    for n in range(300):
        (dirs[0] / f"p{n}.yaml").write_text(SITE.format(name=n))
    desired, data = dirs
    command = (f"{sys.executable} -m reconciler status --json --desired {desired} "
               f"--data {data} | head -1")  # fmt: skip
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "0"})  # fmt: skip
    assert done.stdout == "{\n"
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_each_command_lists_its_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["api", "--help"])
    api = capsys.readouterr().out
    assert "--listen" in api and "--allowed-origins" in api
    assert "--port-range" not in api and "--site-users" not in api and "--drain" not in api
    with pytest.raises(SystemExit):
        main(["daemon", "--help"])
    assert "--site-users" in capsys.readouterr().out
