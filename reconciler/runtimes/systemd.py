"""Launch process-runtime instances as transient systemd units (``systemd-run``).

Under systemd the daemon's unit owns a cgroup; with the default ``KillMode=control-group``
every process in it dies on ``systemctl restart reconciler``. A transient unit per instance
(``reconciler-site-<id>-<hash8>-<config>.service``) lives in its own cgroup, so sites keep
serving while the daemon restarts, and each gets its own resource accounting. Output still
goes to ``<release>/logs/app.log``; adoption still works by pid + process start time.

A daemon running as root starts them in the system manager. One running as its own user (the
installed units) starts them in that user's manager (``systemd-run --user``; the installer
enables lingering, so the manager runs from boot): starting units there needs no privilege at
all, where the system manager would need a polkit rule, and systemd passes no unit name for
transient units to polkit, so such a rule could not be limited to the sites' units.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from reconciler.errors import TransientError
from reconciler.fileio import atomic_write
from reconciler.spec import Limits

UNIT_TIMEOUT = 30
UNREACHABLE = ("Failed to connect to bus", "Failed to connect to user scope bus")


def unit_name(unit: str) -> str:
    return f"{unit}.service"


def manager_args() -> tuple[list[str], dict[str, str]]:
    """The flags and environment that reach the right manager: the system's for root, else
    the user's own (through its runtime dir, which the installed units do not set)."""
    if os.getuid() == 0:
        return [], dict(os.environ)
    env = dict(os.environ)
    env.setdefault("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")
    return ["--user"], env


def limit_properties(limits: Limits) -> list[str]:
    """A unit's resource controls, enforced by the kernel's cgroups for the unit alone. An
    unset limit is lifted explicitly: an instance of a template keeps what was set before."""
    return [
        f"MemoryMax={'infinity' if limits.memory is None else limits.memory}",
        f"MemorySwapMax={'infinity' if limits.memory is None else 0}",
        f"CPUQuota={'' if limits.cpu is None else f'{round(limits.cpu * 100)}%'}",
        f"TasksMax={'infinity' if limits.pids is None else limits.pids}",
    ]


def spawn_transient_unit(
    argv: Sequence[str],
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    unit: str,
    limits: Limits = Limits(),  # noqa: B008 - frozen
) -> int:
    systemd_run = shutil.which("systemd-run")
    systemctl = shutil.which("systemctl")
    if systemd_run is None or systemctl is None:
        raise OSError("--systemd-run needs systemd-run and systemctl on PATH")
    name = unit_name(unit)
    scope, environ = manager_args()
    subprocess.run(
        [systemctl, *scope, "reset-failed", name],
        capture_output=True, timeout=UNIT_TIMEOUT, check=False, env=environ,
    )  # fmt: skip
    who = [f"--uid={os.getuid()}", f"--gid={os.getgid()}"] if not scope else []
    command = [
        systemd_run,
        *scope,
        f"--unit={name}",
        "--collect",
        "--quiet",
        *who,
        f"--property=WorkingDirectory={cwd}",
        f"--property=StandardOutput=append:{log_path}",
        f"--property=StandardError=append:{log_path}",
        "--property=KillMode=control-group",
        "--property=NoNewPrivileges=yes",
        *[f"--property={prop}" for prop in limit_properties(limits)],
        *[f"--setenv={key}={value}" for key, value in sorted(env.items())],
        "--",
        *argv,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=UNIT_TIMEOUT, check=False, env=environ
    )
    if result.returncode != 0:
        why = result.stderr.strip() or str(result.returncode)
        if any(text in why for text in UNREACHABLE):
            raise TransientError(
                f"systemd-run {name}: the service manager does not answer yet ({why}); "
                "retrying (a user manager runs once lingering is enabled: "
                "loginctl enable-linger USER)",
                delay=2,
            )
        raise OSError(f"systemd-run {name} failed: {why}")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        shown = subprocess.run(
            [systemctl, *scope, "show", "--property=MainPID", "--value", name],
            capture_output=True,
            text=True,
            timeout=UNIT_TIMEOUT,
            check=False,
            env=environ,
        ).stdout.strip()
        if shown.isdigit() and int(shown) > 0:
            return int(shown)
        time.sleep(0.05)
    raise OSError(f"{name} started but systemd reports no main process (did it exit at once?)")


# -- sites as their own users ----------------------------------------------------------------

SITE_DATA = Path("/var/lib/reconciler")  # the data dir reconciler-site@.service binds from
SITE_TEMPLATE = "reconciler-site@.service"
SITE_ROOT = Path("/run/reconciler-site")  # where a site unit sees its own pieces (sitexec)
SITE_LOG_MODE = 0o622  # the site's user appends to its log; only the daemon reads it


def readable_by_others(root: Path) -> None:
    """Let the site's user read its release (files o+r, dirs and executables o+x). The
    daemon's umask keeps others out of what it writes, and the data dir (0750) keeps other
    users of the host out of every release; inside a site's unit only its own is bound."""
    for top, dirs, files in os.walk(root):
        if top == str(root):
            dirs[:] = [d for d in dirs if d != "logs"]  # the daemon's records and logs
        for name in (*dirs, *files):
            path = os.path.join(top, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            want = st.st_mode | stat.S_IROTH
            if stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IXUSR:
                want |= stat.S_IXOTH
            if want != st.st_mode:
                os.chmod(path, stat.S_IMODE(want))
    st = os.stat(root)
    os.chmod(root, stat.S_IMODE(st.st_mode) | stat.S_IROTH | stat.S_IXOTH)


def check_site_data(data_dir: Path) -> None:
    if os.path.realpath(data_dir) != str(SITE_DATA):
        raise ValueError(
            f"--site-users needs the data dir {SITE_DATA} ({SITE_TEMPLATE} binds each site's "
            f"release from there), not {data_dir}"
        )


class SiteUnits:
    """Process-runtime instances as instances of the installed ``reconciler-site@.service``
    (``--site-users``): each runs as its own dynamic user (``DynamicUser=yes``), sees an empty
    data dir with only its own release bound in (read-only), and gets its limits as the
    unit's cgroup settings (``MemoryMax``, ``CPUQuota``, ``TasksMax``).

    Everything here goes through the system manager: ``systemctl set-property --runtime``,
    ``start``, ``stop`` and ``reset-failed`` on ``reconciler-site@<instance>.service`` (the
    instance a digest of project, version and config; the description names them) and
    nothing else, which is what the installer's polkit rule lets the service user do (a
    daemon running as root needs no rule). The instance's files are in
    ``<data>/sites/<instance>/``: ``run.json`` (what to run), and links to the release and
    its log; systemd binds them into the unit, so they are read with the site's own rights.
    """

    def __init__(self, data_dir: Path) -> None:
        check_site_data(data_dir)
        self.sites = SITE_DATA / "sites"
        systemctl = shutil.which("systemctl")
        if systemctl is None:
            raise ValueError("--site-users needs systemctl on PATH")
        self.systemctl = systemctl

    @staticmethod
    def unit(instance: str) -> str:
        return f"reconciler-site@{instance}.service"

    def _ctl(self, *argv: str, timeout: float = UNIT_TIMEOUT) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.systemctl, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0 and any(text in result.stderr for text in UNREACHABLE):
            raise TransientError(
                f"systemctl {argv[0]}: the service manager does not answer ({result.stderr})",
                delay=2,
            )
        return result

    def start(
        self,
        instance: str,
        description: str,
        release_root: Path,
        argv: Sequence[str],
        cwd: Path,
        env: dict[str, str],
        log_path: Path,
        limits: Limits,
    ) -> int:
        """Start the instance's unit; its main pid once systemd has exec'd it."""
        unit = self.unit(instance)
        home = self.sites / instance
        home.mkdir(parents=True, exist_ok=True)
        release = str(release_root)

        def seen(arg: str) -> str:
            if arg == release or arg.startswith(release + "/"):
                return str(SITE_ROOT / "release") + arg[len(release) :]
            return arg

        run = {"argv": [seen(a) for a in argv], "cwd": seen(str(cwd)), "env": env}
        atomic_write(home / "run.json", json.dumps(run).encode() + b"\n", durable=False)
        readable_by_others(release_root)
        log_path.touch(exist_ok=True)
        os.chmod(log_path, SITE_LOG_MODE)
        for name, target in (("release", release_root), ("app.log", log_path)):
            link = home / name
            if link.is_symlink() and os.readlink(link) == str(target):
                continue
            link.unlink(missing_ok=True)
            link.symlink_to(target)
        self._ctl("reset-failed", unit)
        props = [f"Description={description}", *limit_properties(limits)]
        result = self._ctl("set-property", "--runtime", unit, *props)
        if result.returncode != 0:
            raise OSError(f"systemctl set-property {unit} failed: {result.stderr.strip()}")
        result = self._ctl("start", unit)
        if result.returncode != 0:
            raise OSError(f"{unit} did not start: {self.why_ended(instance)}")
        shown = self._ctl("show", "--property=MainPID", "--value", unit).stdout.strip()
        if not shown.isdigit() or int(shown) == 0:
            raise OSError(f"{unit} started but it has no main process: {self.why_ended(instance)}")
        return int(shown)

    def why_ended(self, instance: str) -> str:
        """What systemd recorded of the unit's last run, in words."""
        shown = self._ctl(
            "show", "--property=Result,ExecMainCode,ExecMainStatus,MemoryMax", self.unit(instance)
        ).stdout
        props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
        result, code, status = (
            props.get("Result", ""), props.get("ExecMainCode", ""), props.get("ExecMainStatus", "")
        )  # fmt: skip
        limit = props.get("MemoryMax", "infinity")
        if result == "oom-kill":
            return f"was killed by the kernel for using more memory than its limit ({limit} bytes)"
        if code == "1":
            return f"exited with code {status}"
        if code in ("2", "3"):
            name = signal.Signals(int(status)).name if status.isdigit() else status
            why = f"was killed by signal {status} ({name})"
            if status == "9" and limit not in ("", "infinity"):
                why += f"; its memory limit is {limit} bytes, and the kernel kills with SIGKILL"
            return why
        return f"ended (systemd's result: {result or 'unknown'})"

    def stop(self, instance: str, timeout: float) -> None:
        unit = self.unit(instance)
        result = self._ctl("stop", unit, timeout=timeout + UNIT_TIMEOUT)
        if result.returncode != 0:
            raise OSError(f"systemctl stop {unit} failed: {result.stderr.strip()}")
        self._ctl("reset-failed", unit)
        shutil.rmtree(self.sites / instance, ignore_errors=True)

    def running(self) -> list[str]:
        """The instances whose units are loaded (active, activating or failed)."""
        listed = self._ctl(
            "list-units", "--all", "--plain", "--no-legend", "--full", "reconciler-site@*"
        ).stdout
        found = []
        for line in listed.splitlines():
            name = line.split(" ", 1)[0]
            if name.startswith("reconciler-site@") and name.endswith(".service"):
                found.append(name[len("reconciler-site@") : -len(".service")])
        return found
