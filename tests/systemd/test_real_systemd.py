"""The installation on a real systemd (PID 1 in a container booted from a Debian root
filesystem): the installer, Type=notify readiness, the watchdog, restarts and upgrades with
sites serving throughout, transient site units in the service user's manager, the journal, the
hardening as it is in force on the running units. The tests run in file order on one machine."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.conftest import REPO
from tests.systemd.conftest import Machine

pytestmark = pytest.mark.systemd

UNITS = ("reconciler-edge", "reconciler", "reconciler-api")
HELLO = """\
source: /srv/reconciler/hello-site
production:
  state: running
  generation: 1
"""
# a dynamic site whose start command leaves a child behind: the unit stops its whole tree
APP = """\
source: /srv/reconciler/app
build:
  output: .
start:
  command: "sleep 1000 & exec python3 -m http.server $PORT --bind 127.0.0.1"
health:
  timeout: 60
  interval: 0.5
production:
  state: {state}
  generation: 1
"""
PATHS = (
    "/etc/reconciler/x /opt/reconciler/x /usr/x /root/x /home/x /var/lib/x "
    "/var/lib/reconciler/x /etc/reconciler/desired/.x /srv/reconciler/x"
)
PROBE = f"""\
source: /srv/reconciler/probe
build:
  command: "mkdir -p dist && for p in {PATHS}; do if touch $p 2>/dev/null; then echo $p written; rm -f $p; else echo $p refused; fi; done > dist/index.html"
production:
  state: running
  generation: 1
"""
LOOP = """\
rm -f /tmp/loop.failures /tmp/loop.done
(i=0; while [ ! -e /tmp/loop.stop ] && [ $i -lt 6000 ]; do
   for port in {ports}; do
     curl -fsS -m 5 -o /dev/null http://127.0.0.1:$port/ || echo "$port $(date +%T.%N)" >> /tmp/loop.failures
   done
   i=$((i+1)); sleep 0.02
 done; touch /tmp/loop.done) >/dev/null 2>&1 &
"""


def install(box: Machine) -> None:
    box.run(
        "env", "WHEELHOUSE=/root/wheelhouse", "/root/reconciler/systemd/install.sh", timeout=600
    )


def port_of(box: Machine, project: str) -> int:
    """The project's stable port, from the API (with the installed token)."""
    answer = box.sh(
        'curl -fsS -H "Authorization: Bearer $(cat /etc/reconciler/api-token)" '
        f"http://127.0.0.1:3000/api/projects/{project}/production"
    ).stdout
    return int(json.loads(answer)["port"])


def probe_result(box: Machine) -> str | None:
    result = box.run(
        "cat", "/var/lib/reconciler/production/probe/current/dist/index.html", check=False
    )
    return result.stdout if result.returncode == 0 and result.stdout else None


def serving(box: Machine, port: int) -> str | None:
    result = box.run("curl", "-fsS", "-m", "5", f"http://127.0.0.1:{port}/", check=False)
    return result.stdout if result.returncode == 0 else None


class Loop:
    """A bounded request loop inside the machine against both sites, counting failures."""

    def __init__(self, box: Machine) -> None:
        self.box = box

    def __enter__(self) -> Loop:
        ports = " ".join(str(port_of(self.box, p)) for p in ("hello", "app"))
        self.box.sh("rm -f /tmp/loop.stop")
        self.box.run("sh", "-c", LOOP.format(ports=ports))
        return self

    def failures(self) -> list[str]:
        self.box.sh("touch /tmp/loop.stop")
        self.box.wait(
            lambda: self.box.run("test", "-e", "/tmp/loop.done", check=False).returncode == 0,
            30,
            "the request loop to end",
        )
        text = self.box.run("cat", "/tmp/loop.failures", check=False).stdout
        return text.splitlines()

    def __exit__(self, *_exc: object) -> None:
        self.box.sh("touch /tmp/loop.stop")


@pytest.fixture(scope="module")
def installed(machine: Machine) -> Iterator[Machine]:
    box = machine
    install(box)
    box.sh(
        "mkdir -p /srv/reconciler/app && cp -r /root/reconciler/examples/hello-site "
        "/srv/reconciler/hello-site && echo app > /srv/reconciler/app/index.html && "
        "chown -R reconciler:reconciler /srv/reconciler"
    )
    box.sh(f"cat > /etc/reconciler/desired/hello.yaml <<'EOF'\n{HELLO}EOF")
    box.sh(f"cat > /etc/reconciler/desired/app.yaml <<'EOF'\n{APP.format(state='running')}EOF")
    box.sh("chown reconciler:reconciler /etc/reconciler/desired/*.yaml")
    box.run("systemctl", "enable", "--now", *UNITS, timeout=300)
    yield box


def test_readiness_means_every_site_was_reconciled(installed: Machine) -> None:
    """``systemctl start`` returns once the daemon sent READY=1, and it sends it only after
    its first reconcile of every project: by then both sites serve, with no waiting."""
    box = installed
    for unit in UNITS:
        assert box.active(unit) == "active", unit
    hello, app = port_of(box, "hello"), port_of(box, "app")
    assert hello != app
    assert serving(box, hello) is not None, "the static site serves when start returned"
    assert serving(box, app) == "app\n"
    status = box.show("reconciler", "StatusText")
    assert status.startswith("2 running, 0 failed"), status
    shown = box.run("systemctl", "status", "reconciler", "--no-pager", check=False).stdout
    assert "Status:" in shown and status in shown


def user_systemctl(box: Machine, args: str) -> str:
    """``systemctl --user`` as the reconciler user (its manager, where the sites run)."""
    return box.sh(
        "XDG_RUNTIME_DIR=/run/user/$(id -u reconciler) runuser -u reconciler -- "
        f"systemctl --user {args}"
    ).stdout


def site_units(box: Machine) -> list[str]:
    listed = user_systemctl(box, "list-units --no-legend --plain 'reconciler-site-*'").split()
    return [u for u in listed if u.startswith("reconciler-site-")]


def test_site_units_run_in_the_service_users_own_manager(installed: Machine) -> None:
    """Sites are transient units of the reconciler user's manager (lingering keeps it up):
    that needs no privilege, and the user can start no unit of the system manager."""
    box = installed
    sites = [u for u in site_units(box) if u.startswith("reconciler-site-app-")]
    assert len(sites) == 1, sites
    assert re.fullmatch(r"reconciler-site-app-[0-9a-f]{8}-[0-9a-f]{8}\.service", sites[0])
    uid = box.run("id", "-u", "reconciler").stdout.strip()
    assert box.active(f"user@{uid}.service") == "active"
    assert box.run("test", "-e", "/var/lib/systemd/linger/reconciler", check=False).returncode == 0
    pid = user_systemctl(box, f"show --value --property=MainPID {sites[0]}").strip()
    assert box.run("stat", "-c", "%U", f"/proc/{pid}").stdout.strip() == "reconciler"
    cgroup = box.run("cat", f"/proc/{pid}/cgroup").stdout
    assert f"user@{uid}.service" in cgroup and sites[0] in cgroup, cgroup
    refused = box.run(
        "runuser", "-u", "reconciler", "--", "systemd-run", "--quiet",
        "--unit=reconciler-site-probe.service", "sleep", "30",
        check=False,
    )  # fmt: skip
    assert refused.returncode != 0, "the service user starts nothing in the system manager"
    assert box.active("reconciler-site-probe.service") != "active"


def test_restart_keeps_every_site_serving_and_adopts_them(installed: Machine) -> None:
    box = installed
    before = site_units(box)
    with Loop(box) as loop:
        box.run("systemctl", "restart", "reconciler", timeout=180)
        assert box.active("reconciler") == "active"
        failures = loop.failures()
    assert failures == []
    assert site_units(box) == before, "the site's unit outlived the daemon"
    journal = box.run("journalctl", "-u", "reconciler", "--no-pager", "-o", "cat").stdout
    assert "app: adopted" in journal


def test_the_journal_names_the_project_in_each_step(installed: Machine) -> None:
    journal = installed.run("journalctl", "-u", "reconciler", "--no-pager", "-o", "cat").stdout
    steps = [line for line in journal.splitlines() if "running" in line and " at http" in line]
    assert any(line.startswith("app: running ") or ": app: running " in line for line in steps), (
        steps
    )
    assert any("hello: running " in line for line in steps), steps


def test_a_hung_daemon_is_restarted_by_the_watchdog(installed: Machine) -> None:
    """A daemon that stops making progress (frozen with SIGSTOP) misses its watchdog pings;
    systemd kills and restarts it, and the sites serve throughout. The test shortens
    ``WatchdogSec`` with a drop-in, as an operator could."""
    box = installed
    box.sh(
        "mkdir -p /etc/systemd/system/reconciler.service.d && printf '[Service]\\n"
        "WatchdogSec=4s\\n' > /etc/systemd/system/reconciler.service.d/watchdog.conf && "
        "systemctl daemon-reload && systemctl restart reconciler"
    )
    restarts = int(box.show("reconciler", "NRestarts"))
    frozen = box.show("reconciler", "MainPID")
    try:
        with Loop(box) as loop:
            box.run("kill", "-STOP", frozen)
            box.wait(
                lambda: (
                    int(box.show("reconciler", "NRestarts")) > restarts
                    and box.active("reconciler") == "active"
                ),
                60,
                "systemd to restart the hung daemon",
            )
            failures = loop.failures()
        assert failures == []
        assert box.show("reconciler", "MainPID") != frozen
        journal = box.run("journalctl", "-u", "reconciler", "--no-pager").stdout
        assert "Watchdog timeout" in journal
    finally:
        box.sh(
            "rm -rf /etc/systemd/system/reconciler.service.d && systemctl daemon-reload && "
            "systemctl restart reconciler"
        )


def test_the_hardening_is_in_force(installed: Machine) -> None:
    box = installed
    levels = []
    for unit, limit in (("reconciler", 3.0), ("reconciler-api", 3.0), ("reconciler-edge", 3.0)):
        report = box.run("systemd-analyze", "security", f"{unit}.service", check=False).stdout
        found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", report)
        assert found is not None, report[-500:]
        assert float(found.group(1)) <= limit, (unit, found.group(0))
        levels.append(found.group(0))
    (REPO / "artifacts" / "systemd").mkdir(parents=True, exist_ok=True)
    (REPO / "artifacts" / "systemd" / "security.txt").write_text("\n".join(levels) + "\n")
    # a build runs in the daemon's sandbox: what it may write is what the daemon may write
    box.sh(
        "mkdir -p /srv/reconciler/probe && chown reconciler:reconciler /srv/reconciler/probe && "
        f"cat > /etc/reconciler/desired/probe.yaml <<'EOF'\n{PROBE}EOF"
    )
    box.wait(lambda: probe_result(box) is not None, 60, "the probe's build")
    result = dict(line.rsplit(" ", 1) for line in (probe_result(box) or "").splitlines())
    for path in ("/etc/reconciler/x", "/opt/reconciler/x", "/usr/x", "/root/x", "/home/x",
                 "/var/lib/x"):  # fmt: skip
        assert result[path] == "refused", (path, result)
    for path in ("/var/lib/reconciler/x", "/etc/reconciler/desired/.x", "/srv/reconciler/x"):
        assert result[path] == "written", (path, result)
    box.run("rm", "/etc/reconciler/desired/probe.yaml")
    assert box.show("reconciler", "NoNewPrivileges") == "yes"


def test_stopping_a_site_stops_its_whole_unit(installed: Machine) -> None:
    box = installed
    port = port_of(box, "app")
    box.sh(f"cat > /etc/reconciler/desired/app.yaml <<'EOF'\n{APP.format(state='stopped')}EOF")
    box.wait(lambda: serving(box, port) is None, 60, "the app to stop")
    box.wait(lambda: not site_units(box), 30, "its unit to go")
    leftover = box.run("pgrep", "-f", "sleep 1000", check=False)
    assert leftover.returncode != 0, leftover.stdout  # the start command's child went too
    box.sh(f"cat > /etc/reconciler/desired/app.yaml <<'EOF'\n{APP.format(state='running')}EOF")
    box.wait(lambda: serving(box, port) == "app\n", 60, "the app to serve again")


def test_an_upgrade_over_a_running_installation_keeps_every_site_serving(
    installed: Machine,
) -> None:
    box = installed
    token = box.run("cat", "/etc/reconciler/api-token").stdout
    with Loop(box) as loop:
        install(box)
        box.run("systemctl", "restart", "reconciler", "reconciler-api", timeout=180)
        failures = loop.failures()
    assert failures == []
    assert box.run("cat", "/etc/reconciler/api-token").stdout == token, "the token is kept"
    for unit in UNITS:
        assert box.active(unit) == "active", unit
    assert serving(box, port_of(box, "app")) == "app\n"
