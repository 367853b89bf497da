"""The --systemd-run launcher, against stand-ins for systemd-run and systemctl.

No systemd runs on the test machines, so two small scripts play its part at this one
boundary: they record the command line and start the process the way a transient unit would
(own session, working directory, output appended to the log, only the given environment).
What is checked is our side: the argv we hand to systemd-run, the MainPID lookup, and that the
instance is then adopted and stopped like any other.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from reconciler.releases import ReleaseStore
from reconciler.runtimes.base import wait_ready
from reconciler.runtimes.process import ProcessRuntime, instance_mark
from reconciler.runtimes.systemd import spawn_transient_unit
from reconciler.spec import Health, ProjectId, ProjectSpec
from tests.conftest import free_port

FAKE_RUN = """\
#!{python}
import json, os, subprocess, sys
state = {state!r}
args = sys.argv[1:]
split = args.index("--")
opts, argv = args[:split], args[split + 1:]
unit = next(o.split("=", 1)[1] for o in opts if o.startswith("--unit="))
props = dict(o.split("=", 2)[1:] for o in opts if o.startswith("--property="))
env = dict(o.split("=", 2)[1:] for o in opts if o.startswith("--setenv="))
log = open(props["StandardOutput"].removeprefix("append:"), "ab")
proc = subprocess.Popen(argv, cwd=props["WorkingDirectory"], env=env, stdout=log, stderr=log, start_new_session=True)
json.dump({{"argv": sys.argv[1:], "pid": proc.pid}}, open(os.path.join(state, unit), "w"))
"""

FAKE_CTL = """\
#!{python}
import json, os, sys
state = {state!r}
if sys.argv[1] == "show":
    print(json.load(open(os.path.join(state, sys.argv[-1])))["pid"])
"""


@pytest.fixture
def fake_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir, state = tmp_path / "bin", tmp_path / "units"
    bindir.mkdir()
    state.mkdir()
    for name, text in (("systemd-run", FAKE_RUN), ("systemctl", FAKE_CTL)):
        path = bindir / name
        path.write_text(textwrap.dedent(text.format(python=sys.executable, state=str(state))))
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("RECONCILER_API_TOKEN", "secret")
    return state


def test_sites_start_as_transient_units(tmp_path: Path, fake_systemd: Path) -> None:
    store = ReleaseStore(tmp_path / "production")
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("from a unit")
    release = store.commit(store.begin(ProjectId("www")), dist=dist)
    runtime = ProcessRuntime(store, launcher=spawn_transient_unit)
    port = free_port()
    instance = runtime.start(
        release, ProjectSpec(source="x", env={"GREETING": "hi"}), port=port, config="c0ffee00"
    )
    try:
        wait_ready(
            f"http://127.0.0.1:{port}/",
            Health(timeout=10),
            alive=lambda: runtime.alive(instance),
            why_dead=lambda: runtime.describe_exit(instance),
        )
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "from a unit"
        record = json.loads(
            (fake_systemd / f"reconciler-site-www-{release.hash}-c0ffee00.service").read_text()
        )
        argv = record["argv"]
        assert record["pid"] == instance.pid
        assert argv[0] == f"--unit=reconciler-site-www-{release.hash}-c0ffee00.service"
        for flag in ("--collect", f"--uid={os.getuid()}", f"--property=WorkingDirectory={release.dist}",
                     f"--property=StandardOutput=append:{release.logs / 'app.log'}", "--property=KillMode=control-group",
                     "--property=NoNewPrivileges=yes", f"--setenv=PORT={port}", "--setenv=GREETING=hi"):  # fmt: skip
            assert flag in argv
        # none of the daemon's own settings (its token) reach a site; only its instance mark
        private = [
            a
            for a in argv
            if a.startswith(("--setenv=NOTIFY_SOCKET", "--setenv=RECONCILER_"))
            and not a.startswith("--setenv=RECONCILER_INSTANCE=")
        ]
        assert private == []
        mark = instance_mark(store, "www", release.hash, "c0ffee00")
        assert f"--setenv=RECONCILER_INSTANCE={mark}" in argv
        assert [i.pid for i in ProcessRuntime(store).observe(ProjectId("www"))] == [instance.pid]
    finally:
        runtime.stop(instance, timeout=3)
    assert not runtime.alive(instance)
