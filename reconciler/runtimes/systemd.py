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

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from reconciler.core.errors import TransientError
from reconciler.core.fileio import atomic_write
from reconciler.core.spec import Limits

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
BUILD_ROOT = Path("/run/reconciler-build")  # where a build unit sees its source and command


def readable_by_others(root: Path) -> None:
    """Let the site's user read its release (files o+r, dirs and executables o+x). The
    daemon's umask keeps others out of what it writes, and the data dir (0750) keeps other
    users of the host out of every release; inside a site's unit only its own is bound."""
    _open_to_others(root, stat.S_IROTH, skip=("logs",))  # the daemon's records and logs


def writable_by_others(root: Path) -> None:
    """Let a build's user work in its source tree (read and write; its unit's UMask=0000
    leaves what it makes open to the daemon in turn). Only the daemon and the build's own
    unit can reach the tree: /srv/reconciler and the data dir are 0750 and every unit but
    this one sees neither."""
    _open_to_others(root, stat.S_IROTH | stat.S_IWOTH, skip=())


def _open_to_others(root: Path, bits: int, *, skip: tuple[str, ...]) -> None:
    """Add ``bits`` for others to everything under ``root`` (and o+x to dirs and
    executables). Links are not followed; what the daemon does not own stays as it is."""

    def grant(path: str, st: os.stat_result) -> None:
        want = st.st_mode | bits
        if stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IXUSR:
            want |= stat.S_IXOTH
        if want != st.st_mode:
            with contextlib.suppress(PermissionError):
                os.chmod(path, stat.S_IMODE(want))

    for top, dirs, files in os.walk(root):
        if top == str(root):
            dirs[:] = [d for d in dirs if d not in skip]
        for name in (*dirs, *files):
            path = os.path.join(top, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode):
                grant(path, st)
    grant(str(root), os.stat(root))


def ended_in_words(props: dict[str, str]) -> str:
    """How a unit's main process ended, in words, from its Result and ExecMain* properties."""
    result, code, status = (
        props.get("Result", ""), props.get("ExecMainCode", ""), props.get("ExecMainStatus", "")
    )  # fmt: skip
    limit = props.get("MemoryMax", "infinity")
    if result == "oom-kill":
        return f"was killed by the kernel for using more memory than its limit ({limit} bytes)"
    limited = limit not in ("", "infinity")
    if code == "1" and status == "137" and limited:  # a shell whose command was SIGKILLed
        return (
            f"exited with code 137: a process of it was killed by signal 9 (SIGKILL); its "
            f"memory limit is {limit} bytes, and the kernel kills with SIGKILL"
        )
    if code == "1":
        return f"exited with code {status}"
    if code in ("2", "3"):
        name = signal.Signals(int(status)).name if status.isdigit() else status
        why = f"was killed by signal {status} ({name})"
        if status == "9" and limited:
            why += f"; its memory limit is {limit} bytes, and the kernel kills with SIGKILL"
        return why
    return f"ended (systemd's result: {result or 'unknown'})"


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
        self.builds = SITE_DATA / "builds"
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
        return ended_in_words(
            dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
        )

    def stop(self, instance: str, timeout: float) -> None:
        unit = self.unit(instance)
        result = self._ctl("stop", unit, timeout=timeout + UNIT_TIMEOUT)
        if result.returncode != 0:
            raise OSError(f"systemctl stop {unit} failed: {result.stderr.strip()}")
        self._ctl("reset-failed", unit)
        shutil.rmtree(self.sites / instance, ignore_errors=True)

    def running(self, template: str = "reconciler-site") -> list[str]:
        """The instances of ``template@.service`` that are loaded (active, activating or
        failed)."""
        listed = self._ctl(
            "list-units", "--all", "--plain", "--no-legend", "--full", f"{template}@*"
        ).stdout
        found = []
        for line in listed.splitlines():
            name = line.split(" ", 1)[0]
            if name.startswith(f"{template}@") and name.endswith(".service"):
                found.append(name[len(template) + 1 : -len(".service")])
        return found

    # -- builds ------------------------------------------------------------------------------

    @staticmethod
    def build_unit(instance: str) -> str:
        return f"reconciler-build@{instance}.service"

    def build(
        self,
        instance: str,
        description: str,
        source: Path,
        argv: Sequence[str],
        env: dict[str, str],
        limits: Limits,
        *,
        on_output: Callable[[str], None],
        cancel: threading.Event,
        timeout: float,
    ) -> tuple[int, str | None]:
        """Run a build as ``reconciler-build@<instance>.service``: its own dynamic user, its
        source tree bound in read-write (and nothing else of the data dir or the sources),
        its limits as the unit's cgroup settings. Returns the exit code (128 + the signal
        when it was killed) and ``"cancelled"`` or ``"timeout"`` when it was stopped."""
        unit = self.build_unit(instance)
        home = self.builds / instance
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        run = {"argv": list(argv), "cwd": str(BUILD_ROOT / "source"), "env": env}
        atomic_write(home / "run.json", json.dumps(run).encode() + b"\n", durable=False)
        output = home / "build.log"
        output.touch()
        os.chmod(output, SITE_LOG_MODE)
        (home / "source").symlink_to(source)
        writable_by_others(source)
        self._ctl("reset-failed", unit)
        props = [f"Description={description}", *limit_properties(limits)]
        result = self._ctl("set-property", "--runtime", unit, *props)
        if result.returncode != 0:
            raise OSError(f"systemctl set-property {unit} failed: {result.stderr.strip()}")
        # a oneshot: `systemctl start` returns when the build has ended
        starter = subprocess.Popen(
            [self.systemctl, "start", unit],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        reason = None
        deadline = time.monotonic() + timeout
        with open(output, "rb") as fh:
            while starter.poll() is None:
                pump_lines(fh, on_output)
                if cancel.wait(0.1):
                    reason = "cancelled"
                elif time.monotonic() > deadline:
                    reason = "timeout"
                if reason is not None:
                    self._ctl("stop", unit, timeout=UNIT_TIMEOUT * 2)
                    starter.wait(UNIT_TIMEOUT)
                    break
            pump_lines(fh, on_output, final=True)
        code = self._exit_code(unit, on_output)
        self._ctl("reset-failed", unit)
        shutil.rmtree(home, ignore_errors=True)
        return code, reason

    def _exit_code(self, unit: str, on_output: Callable[[str], None]) -> int:
        shown = self._ctl(
            "show", "--property=ExecMainCode,ExecMainStatus,Result,MemoryMax", unit
        ).stdout
        props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
        status = props.get("ExecMainStatus", "")
        code = int(status) if status.isdigit() else 1
        if props.get("ExecMainCode") in ("2", "3"):  # killed, dumped: say by what
            on_output(f"(the build {ended_in_words(props)})")
            return 128 + code
        if props.get("Result") == "oom-kill" or code == 128 + signal.SIGKILL:
            on_output(f"(the build {ended_in_words(props)})")
        elif code >= 200:  # systemd's own exit statuses: the unit could not run the build
            on_output(f"(systemd could not run the build: status {code}; journalctl -u {unit})")
        return code

    def stop_builds(self) -> list[str]:
        """At startup: builds a previous daemon left running end with it."""
        stopped = []
        for instance in self.running("reconciler-build"):
            self._ctl("stop", self.build_unit(instance), timeout=UNIT_TIMEOUT * 2)
            self._ctl("reset-failed", self.build_unit(instance))
            shutil.rmtree(self.builds / instance, ignore_errors=True)
            stopped.append(instance)
        return stopped


def pump_lines(fh: IO[bytes], on_output: Callable[[str], None], *, final: bool = False) -> None:
    """Hand on the whole lines written since the last call (and the rest, when ``final``)."""
    data = fh.read()
    if not data:
        return
    lines = data.split(b"\n")
    rest = lines.pop()
    if rest and not final:
        fh.seek(-len(rest), os.SEEK_CUR)  # a line still being written: read it whole later
    elif rest:
        lines.append(rest)
    for line in lines:
        on_output(line.decode("utf-8", "replace"))
