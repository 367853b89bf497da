"""The installation on a real systemd (PID 1 in a container booted from a Debian root
filesystem): the installer, Type=notify readiness, the watchdog, restarts and upgrades with
sites serving throughout, each site in its own unit as its own user (what it can reach, a
memory hog killed alone), the journal, the hardening as it is in force on the running units. The tests run in file order on one machine."""

from __future__ import annotations

import json
import re
import time
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
    "/var/lib/reconciler/x /etc/reconciler/desired/.x /srv/reconciler/x own.txt"
)
READS = "/srv/reconciler/app/index.html /var/lib/reconciler/state.db /etc/reconciler/api-token"
PROBE = f"""\
source: /srv/reconciler/probe
build:
  command: "mkdir -p dist && (for p in {PATHS}; do if touch $p 2>/dev/null; then echo $p written; rm -f $p; else echo $p refused; fi; done; for p in {READS}; do if cat $p >/dev/null 2>&1; then echo $p read; else echo $p unread; fi; done; echo uid $(id -u)) > dist/index.html"
production:
  state: running
  generation: 1
"""
# a build that takes 400 MB under a 64 MB build limit
BUILD_HOG = """\
source: /srv/reconciler/buildhog
build:
  command: "python3 -c 'x = bytearray(400 << 20)' && mkdir -p dist && echo built > dist/index.html"
  limits:
    memory: 64M
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


def answer(box: Machine, project: str) -> str | None:
    """What the project serves at its stable port, once it has one."""
    answered = box.sh(
        'curl -fsS -H "Authorization: Bearer $(cat /etc/reconciler/api-token)" '
        f"http://127.0.0.1:3000/api/projects/{project}/production",
        check=False,
    )
    port = json.loads(answered.stdout).get("port") if answered.returncode == 0 else None
    return serving(box, port) if isinstance(port, int) else None


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
    # PrivateUsers= with ProtectProc= cannot be set up by a systemd in a container (systemd
    # issue 29656: "Failed to set up user namespacing"); on a host it can. The API keeps
    # PrivateUsers= here and drops ProtectProc=, the one concession to the test machine.
    box.sh(
        "mkdir -p /etc/systemd/system/reconciler-api.service.d && printf '[Service]\\n"
        "ProtectProc=default\\n' > /etc/systemd/system/reconciler-api.service.d/container.conf"
    )
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


def site_units(box: Machine, project: str = "") -> list[str]:
    """The loaded instances of ``reconciler-site@.service`` (of one project, by the
    description the daemon gives them, or all)."""
    listed = box.run(
        "systemctl", "list-units", "--no-legend", "--plain", "--full", "reconciler-site@*"
    ).stdout
    return [
        line.split()[0]
        for line in listed.splitlines()
        if line.strip() and (not project or f" reconciler site {project} " in line)
    ]


def remove(box: Machine, project: str) -> None:
    """Take the project's file away and wait until it is gone: no longer served, no unit.
    Its removal loads the edge's configuration, which drops a few queued connections on
    every site (README, "Why no reload per deploy"); a test's request loop starts after."""
    box.run("rm", f"/etc/reconciler/desired/{project}.yaml")
    box.wait(
        lambda: answer(box, project) is None and not site_units(box, project),
        60,
        f"{project} to be gone",
    )
    time.sleep(0.5)  # the edge's listeners settle after the load


def uid_of(box: Machine, unit: str) -> str:
    pid = box.show(unit, "MainPID")
    return box.run("stat", "-c", "%u", f"/proc/{pid}").stdout.strip()


def events(box: Machine, project: str, kind: str) -> list[dict[str, object]]:
    answer = box.sh(
        'curl -fsS -H "Authorization: Bearer $(cat /etc/reconciler/api-token)" '
        f"'http://127.0.0.1:3000/api/projects/{project}/events?type={kind}'"
    ).stdout
    return json.loads(answer)["events"]  # type: ignore[no-any-return]


# what a site may reach: another site's release, the sources, the daemon's state and token,
# its own release (read, not write)
REACH = (
    "/var/lib/reconciler/production/hello/current/dist/index.html "
    "/srv/reconciler/hello-site/dist/index.html /var/lib/reconciler/state.db "
    "/etc/reconciler/api-token /run/reconciler-site/release/dist/own.txt"
)
SNOOP = f"""\
source: /srv/reconciler/snoop
build:
  output: .
start:
  command: "mkdir -p /tmp/www && for p in {REACH}; do if cat $p >/dev/null 2>&1; then echo $p read; else echo $p refused; fi; done > /tmp/www/index.html && if touch /run/reconciler-site/release/dist/x 2>/dev/null; then echo release written; else echo release refused; fi >> /tmp/www/index.html && id -u >> /tmp/www/index.html && cd /tmp/www && exec python3 -m http.server $PORT --bind 127.0.0.1"
production:
  state: running
  generation: 1
"""
# a site that takes 400 MB when asked, under a 64 MB limit
HOG_PY = """\
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/eat":
            self.server.hoard = [bytearray(8 << 20) for _ in range(50)]
        self.send_response(200); self.end_headers(); self.wfile.write(b"hog\\n")
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""
HOG = """\
source: /srv/reconciler/hog
build:
  output: .
start:
  command: "exec python3 hog.py"
limits:
  memory: 64M
production:
  state: running
  generation: 1
"""


def test_each_site_runs_as_its_own_user_and_reaches_only_its_own_release(
    installed: Machine,
) -> None:
    """Sites run as instances of reconciler-site@.service, each as its own dynamic user: a
    site reads its own release (not write it) and nothing of another site, of the sources or
    of the daemon; the service user may start its site units and no other unit."""
    box = installed
    box.sh(
        "mkdir -p /srv/reconciler/snoop && echo own > /srv/reconciler/snoop/own.txt && "
        "chown -R reconciler:reconciler /srv/reconciler/snoop && "
        f"cat > /etc/reconciler/desired/snoop.yaml <<'EOF'\n{SNOOP}EOF"
    )
    box.wait(lambda: bool(site_units(box, "snoop")), 90, "the snoop site's unit")
    box.wait(lambda: answer(box, "snoop") is not None, 60, "the snoop site")
    lines = (answer(box, "snoop") or "").splitlines()
    result = dict(line.rsplit(" ", 1) for line in lines[:-1])
    for path in REACH.split()[:-1]:
        assert result[path] == "refused", (path, result)
    assert result["/run/reconciler-site/release/dist/own.txt"] == "read", result
    assert result["release"] == "refused", result

    assert site_units(box, "hello") == [], "a static site is served by the edge itself"
    (app,) = site_units(box, "app")
    (snoop,) = site_units(box, "snoop")
    assert re.fullmatch(r"reconciler-site@[0-9a-f]{16}\.service", app)
    assert re.fullmatch(r"reconciler site app [0-9a-f]{8} \(settings [0-9a-f]{8}\)",
                        box.show(app, "Description"))  # fmt: skip
    reconciler = box.run("id", "-u", "reconciler").stdout.strip()
    uids = {uid_of(box, unit) for unit in (app, snoop)}
    assert len(uids) == 2 and reconciler not in uids and "0" not in uids, uids
    assert lines[-1] == uid_of(box, snoop)
    assert box.show(app, "DynamicUser") == "yes"

    def usage() -> dict[str, object] | None:
        view = json.loads(box.sh(
            'curl -fsS -H "Authorization: Bearer $(cat /etc/reconciler/api-token)" '
            "http://127.0.0.1:3000/api/projects/app/production"
        ).stdout)  # fmt: skip
        return view.get("usage")  # type: ignore[no-any-return]

    # what a site unit uses is sampled like any instance's (every 10 s)
    box.wait(lambda: bool((usage() or {}).get("memory")), 30, "the app's usage sampled")
    assert int((usage() or {})["memory"]) > 1 << 20  # type: ignore[call-overload]
    remove(box, "snoop")

    # polkit: the service user manages its site units and nothing else
    as_reconciler = ("runuser", "-u", "reconciler", "--")
    for argv in (
        ("systemctl", "stop", "reconciler-api.service"),
        ("systemctl", "start", "reconciler-sitex.service"),
        ("systemctl", "set-property", "--runtime", "reconciler-edge.service", "MemoryMax=1M"),
        ("systemd-run", "--quiet", "--unit=reconciler-site@0123456789abcdef.service", "sleep", "9"),
    ):
        refused = box.run(*as_reconciler, *argv, check=False)
        assert refused.returncode != 0, argv
    assert box.active("reconciler-api") == "active"
    assert box.show("reconciler-edge", "MemoryMax") == "infinity"


def test_a_memory_hog_is_killed_alone_and_told(installed: Machine) -> None:
    """A site over its memory limit is killed by the kernel inside its own unit; the event
    says so, the daemon starts it again, and the other sites serve throughout."""
    box = installed
    box.sh(
        "mkdir -p /srv/reconciler/hog && cat > /srv/reconciler/hog/hog.py <<'EOF'\n"
        f"{HOG_PY}EOF\n"
        "chown -R reconciler:reconciler /srv/reconciler/hog && "
        f"cat > /etc/reconciler/desired/hog.yaml <<'EOF'\n{HOG}EOF"
    )
    box.wait(lambda: bool(site_units(box, "hog")), 90, "the hog's unit")
    box.wait(lambda: answer(box, "hog") == "hog\n", 60, "the hog to serve")
    (unit,) = site_units(box, "hog")
    assert box.show(unit, "MemoryMax") == str(64 << 20)
    with Loop(box) as loop:
        port = port_of(box, "hog")
        box.run("curl", "-sS", "-m", "10", f"http://127.0.0.1:{port}/eat", check=False)
        box.wait(lambda: bool(events(box, "hog", "production.exited")), 60, "the exit told")
        box.wait(lambda: serving(box, port) == "hog\n", 60, "the hog to be started again")
        failures = loop.failures()
    assert failures == [], "the other sites kept serving"
    message = str(events(box, "hog", "production.exited")[0]["data"])
    assert "memory" in message and str(64 << 20) in message, message
    remove(box, "hog")


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
    (site,) = site_units(box, "app")
    for unit, limit in (("reconciler.service", 3.0), ("reconciler-api.service", 3.0),
                        ("reconciler-edge.service", 3.0), (site, 3.0),
                        ("reconciler-build@0123456789abcdef.service", 3.0)):  # fmt: skip
        report = box.run("systemd-analyze", "security", unit, check=False).stdout
        found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", report)
        assert found is not None, report[-500:]
        assert float(found.group(1)) <= limit, (unit, found.group(0))
        levels.append(found.group(0))
    (REPO / "artifacts" / "systemd").mkdir(parents=True, exist_ok=True)
    (REPO / "artifacts" / "systemd" / "security.txt").write_text("\n".join(levels) + "\n")
    # a build runs as its own user in its own unit: it writes its own source tree and
    # nothing else, and reads no other project's source, the state or the token
    box.sh(
        "mkdir -p /srv/reconciler/probe && chown reconciler:reconciler /srv/reconciler/probe && "
        f"cat > /etc/reconciler/desired/probe.yaml <<'EOF'\n{PROBE}EOF"
    )
    box.wait(lambda: probe_result(box) is not None, 60, "the probe's build")
    result = dict(line.rsplit(" ", 1) for line in (probe_result(box) or "").splitlines())
    for path in PATHS.split()[:-1]:
        assert result[path] == "refused", (path, result)
    assert result["own.txt"] == "written", result
    for path in READS.split():
        assert result[path] == "unread", (path, result)
    reconciler = box.run("id", "-u", "reconciler").stdout.strip()
    assert result["uid"] not in (reconciler, "0"), result
    journal = box.run("journalctl", "--no-pager", "-o", "cat").stdout
    assert "reconciler build probe" in journal, "the build ran as reconciler-build@"
    remove(box, "probe")
    assert box.show("reconciler", "NoNewPrivileges") == "yes"


def test_a_build_over_its_memory_limit_fails_alone(installed: Machine) -> None:
    box = installed
    with Loop(box) as loop:
        box.sh(
            "mkdir -p /srv/reconciler/buildhog && chown reconciler:reconciler "
            "/srv/reconciler/buildhog && cat > /etc/reconciler/desired/buildhog.yaml <<'EOF'\n"
            f"{BUILD_HOG}EOF"
        )

        def failed() -> str | None:
            answered = box.sh(
                'curl -fsS -H "Authorization: Bearer $(cat /etc/reconciler/api-token)" '
                "http://127.0.0.1:3000/api/projects/buildhog/production",
                check=False,
            )
            if answered.returncode != 0:
                return None
            view = json.loads(answered.stdout)
            return view.get("error") if view.get("status") == "failed" else None

        box.wait(lambda: failed() is not None, 90, "the build to fail")
        failures = loop.failures()
    error = failed() or ""
    assert "killed by signal 9" in error and str(64 << 20) in error, error
    assert failures == [], "the sites served throughout"
    remove(box, "buildhog")


SLOW = """\
source: /srv/reconciler/slow
build:
  command: "{command}"
  output: .
start:
  command: "exec python3 -m http.server $PORT --bind 127.0.0.1"
production:
  state: running
  generation: {generation}
"""


def test_a_changed_file_cancels_a_running_build_unit(installed: Machine) -> None:
    """A build in its unit is stopped whole (``systemctl stop``) when the desired file it
    builds for changes; the next one builds and serves."""
    box = installed
    box.sh(
        "mkdir -p /srv/reconciler/slow && echo slow > /srv/reconciler/slow/index.html && "
        "chown -R reconciler:reconciler /srv/reconciler/slow && "
        "cat > /etc/reconciler/desired/slow.yaml <<'EOF'\n"
        f"{SLOW.format(command='sleep 300', generation=1)}EOF"
    )

    def building() -> bool:
        listed = box.run("systemctl", "list-units", "--no-legend", "--plain", "reconciler-build@*")
        # a oneshot is "activating" while its command runs
        return any(
            "reconciler build slow" in line and " activating " in line
            for line in listed.stdout.splitlines()
        )

    box.wait(building, 60, "the slow build's unit")
    box.sh(
        "cat > /etc/reconciler/desired/slow.yaml <<'EOF'\n"
        f"{SLOW.format(command='true', generation=2)}EOF"
    )
    box.wait(lambda: answer(box, "slow") is not None, 60, "the next build to serve")
    assert not building()
    assert box.run("pgrep", "-f", "sleep 300", check=False).returncode != 0, "stopped whole"
    remove(box, "slow")


def test_stopping_a_site_stops_its_whole_unit(installed: Machine) -> None:
    box = installed
    port = port_of(box, "app")
    box.sh(f"cat > /etc/reconciler/desired/app.yaml <<'EOF'\n{APP.format(state='stopped')}EOF")
    box.wait(lambda: serving(box, port) is None, 60, "the app to stop")
    box.wait(lambda: not site_units(box, "app"), 30, "its unit to go")
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


SLEEPY = """\
source: /srv/reconciler/sleepy
build:
  output: .
start:
  command: "exec python3 -m http.server $PORT --bind 127.0.0.1"
health:
  timeout: 60
  interval: 0.5
sleep:
  after: 10s
production:
  state: running
  generation: 1
"""


def test_a_sleeping_site_has_no_unit_and_its_request_starts_one(installed: Machine) -> None:
    """Under systemd, with the edge its own unit: idle, the site's unit goes; the first
    request reaches the daemon's waker through the edge, starts a unit and is answered."""
    box = installed
    box.sh(
        "mkdir -p /srv/reconciler/sleepy && echo sleepy > /srv/reconciler/sleepy/index.html && "
        "chown -R reconciler:reconciler /srv/reconciler/sleepy && "
        f"cat > /etc/reconciler/desired/sleepy.yaml <<'EOF'\n{SLEEPY}EOF"
    )
    box.wait(lambda: answer(box, "sleepy") == "sleepy\n", 90, "the sleepy site")
    port = port_of(box, "sleepy")

    def status() -> str | None:
        view = json.loads(box.sh(
            'curl -fsS -H "Authorization: Bearer $(cat /etc/reconciler/api-token)" '
            "http://127.0.0.1:3000/api/projects/sleepy/production"
        ).stdout)  # fmt: skip
        return view.get("status")  # type: ignore[no-any-return]

    box.wait(lambda: status() == "sleeping", 60, "the site to sleep")
    box.wait(lambda: not site_units(box, "sleepy"), 30, "its unit to go")
    assert serving(box, port) == "sleepy\n", "the first request is served"
    assert len(site_units(box, "sleepy")) == 1
    assert status() == "running"
    remove(box, "sleepy")
