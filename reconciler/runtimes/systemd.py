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

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from reconciler.errors import TransientError
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


def unit_limits(limits: Limits) -> list[str]:
    """The unit's resource controls: enforced by the kernel's cgroups for the unit alone."""
    props = []
    if limits.memory is not None:
        props += [f"--property=MemoryMax={limits.memory}", "--property=MemorySwapMax=0"]
    if limits.cpu is not None:
        props.append(f"--property=CPUQuota={round(limits.cpu * 100)}%")
    if limits.pids is not None:
        props.append(f"--property=TasksMax={limits.pids}")
    return props


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
        *unit_limits(limits),
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
