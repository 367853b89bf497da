"""Hostile apps: start commands and builds that leave processes behind, in the ways real
servers and scripts do (``nohup ... &``, ``setsid``, ``setsid -f``, a double fork, a
subshell, ``start-stop-daemon --background``, a daemon that changes to / and closes its
files). A start that does not stay in the foreground is refused with nothing of it left, and
never taken for the version it was meant to be; a build's leftovers are stopped when it
ends. ``make hostile`` runs every style (HOSTILE_FULL=1); ``make test`` a slice.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.harness import Env, desired_yaml, environment, wait_for
from tests.integration.test_truthful import app_site, app_yaml

FULL = os.environ.get("HOSTILE_FULL") == "1"

DAEMONIZE = """import os, sys
if os.fork():
    sys.exit(0)
os.setsid()
if os.fork():
    sys.exit(0)
server = os.path.abspath("server.py")
if "--chdir" in sys.argv:  # as a classic daemon does: cwd /, no files of its parent
    os.chdir("/")
    os.umask(0)
    os.closerange(0, 1024)
    fd = os.open(os.devnull, os.O_RDWR)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
os.execvp("python3", ["python3", server, *sys.argv[1:]])
"""

SLEEPER = 'python3 -c "import time; time.sleep(600)" {marker}'

STARTS = {
    "nohup": "nohup python3 server.py {marker} > /dev/null 2>&1 &",
    "setsid-then-sleep": "setsid python3 server.py {marker} & sleep 3",
    "setsid-f": "setsid -f python3 server.py {marker}",
    "double-fork": "exec python3 daemonize.py {marker}",
    "subshell": "(python3 server.py {marker} &)",
    "start-stop-daemon": 'start-stop-daemon --start --background --chdir "$PWD" '
    '--startas "$(command -v python3)" -- server.py {marker}',
    "classic-daemon": "exec python3 daemonize.py --chdir {marker}",
}
BUILDS = {
    "setsid": f"setsid {SLEEPER} & mkdir -p out; cp -r dist/. out/",
    "nohup": f"nohup {SLEEPER} > /dev/null 2>&1 & mkdir -p out; cp -r dist/. out/",
    "setsid-f": f"setsid -f {SLEEPER}; mkdir -p out; cp -r dist/. out/",
    "double-fork": "python3 dist/daemonize.py --chdir {marker} & mkdir -p out; cp -r dist/. out/",
    "subshell": f"({SLEEPER} &); mkdir -p out; cp -r dist/. out/",
}
START_SLICE = ("setsid-then-sleep", "classic-daemon")
BUILD_SLICE = ("double-fork",)


def _ours(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
                stat = Path(f"/proc/{entry.name}/stat").read_bytes().rsplit(b")", 1)[1]
                if marker.encode() in cmdline and stat.split()[0] != b"Z":
                    found.append(int(entry.name))
    return found


def _answer(env: Env) -> tuple[str | None, str | None]:
    """(status, what its address answers)."""
    row = env.row("app")
    if row is None or row.productionPort is None:
        return (row.productionStatus if row else None), None
    try:
        body = httpx.get(f"http://127.0.0.1:{row.productionPort}/", timeout=2).text
    except httpx.HTTPError:
        body = None
    return row.productionStatus, body


@pytest.mark.timeout(180)
@pytest.mark.parametrize("style", list(STARTS) if FULL else START_SLICE)
def test_a_start_command_that_leaves_the_foreground(tmp_path: Path, style: str) -> None:
    site = app_site(tmp_path / "app")
    daemonize = DAEMONIZE.replace('"server.py"', f'"{site / "dist" / "server.py"}"')
    (site / "dist" / "daemonize.py").write_text(daemonize)
    marker = f"daemonized-{style}-{tmp_path.name}"
    with environment(tmp_path) as env:
        env.start()
        env.write("app", app_yaml(site, "one"))
        env.wait_serving("app", "one")
        command = STARTS[style].format(marker=marker)
        env.write("app", app_yaml(site, "two", generation=2, command=command))
        # refused (the version before keeps serving), or, for a leader that lingers, taken
        # down when it ends: never "running" while another version answers
        row = env.wait_status("app", "failed", timeout=90)
        error = str(row.productionError)
        assert (
            "must stay in the foreground" in error or "keeps dying" in error or ("exited" in error)
        ), error
        wait_for(lambda: not _ours(marker), 15, "nothing of the refused start left")
        assert _answer(env) == ("failed", "one"), "the version before serves, said as failed"

        env.write("app", app_yaml(site, "three", generation=3))
        env.wait_serving("app", "three")  # its own answer, nobody else's
        env.write("app", app_yaml(site, "three", generation=3).replace("running", "stopped"))
        env.wait_status("app", "stopped")
        time.sleep(0.5)
        assert _ours(marker) == []


@pytest.mark.timeout(180)
@pytest.mark.parametrize("style", list(BUILDS) if FULL else BUILD_SLICE)
def test_a_build_that_leaves_processes_behind(tmp_path: Path, style: str) -> None:
    site = app_site(tmp_path / "app")
    (site / "dist" / "index.html").write_text("built")
    (site / "dist" / "daemonize.py").write_text(
        DAEMONIZE.replace('os.path.abspath("server.py")', '"-c"').replace(
            '[python3", server', '["python3", "-c", "import time; time.sleep(600)"'
        )
    )
    marker = f"build-leftover-{style}-{tmp_path.name}"
    command = BUILDS[style].format(marker=marker)
    build = f"build:\n  command: {command!r}\n  output: out\n"
    with environment(tmp_path) as env:
        env.start()
        env.write("app", desired_yaml(site, extra=build))
        env.wait_serving("app", "built", timeout=60)  # the build was not held by its leftover
        wait_for(lambda: not _ours(marker), 15, "the build's leftovers stopped")
        builds = [j for j in env.db.jobs("app") if j.type == "production.build"]
        assert [j.state for j in builds] == ["succeeded"]
