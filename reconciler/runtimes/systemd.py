"""Launch process-runtime instances as transient systemd units (``systemd-run``).

Under systemd the daemon's unit owns a cgroup; with the default ``KillMode=control-group``
every process in it dies on ``systemctl restart reconciler``. A transient unit per instance
(``reconciler-site-<id>-<hash8>.service``) lives in its own cgroup, so sites keep serving
while the daemon restarts, and each gets its own resource accounting. Output still goes to
``<release>/logs/app.log``; adoption still works by pid + process start time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

UNIT_TIMEOUT = 30


def unit_name(unit: str) -> str:
    return f"{unit}.service"


def spawn_transient_unit(
    argv: Sequence[str], cwd: Path, env: dict[str, str], log_path: Path, unit: str
) -> int:
    systemd_run = shutil.which("systemd-run")
    systemctl = shutil.which("systemctl")
    if systemd_run is None or systemctl is None:
        raise OSError("--systemd-run needs systemd-run and systemctl on PATH")
    name = unit_name(unit)
    subprocess.run(
        [systemctl, "reset-failed", name], capture_output=True, timeout=UNIT_TIMEOUT, check=False
    )
    command = [
        systemd_run,
        f"--unit={name}",
        "--collect",
        "--quiet",
        f"--uid={os.getuid()}",
        f"--gid={os.getgid()}",
        f"--property=WorkingDirectory={cwd}",
        f"--property=StandardOutput=append:{log_path}",
        f"--property=StandardError=append:{log_path}",
        "--property=KillMode=control-group",
        "--property=NoNewPrivileges=yes",
        *[f"--setenv={key}={value}" for key, value in sorted(env.items())],
        "--",
        *argv,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=UNIT_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise OSError(f"systemd-run {name} failed: {result.stderr.strip() or result.returncode}")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        shown = subprocess.run(
            [systemctl, "show", "--property=MainPID", "--value", name],
            capture_output=True,
            text=True,
            timeout=UNIT_TIMEOUT,
            check=False,
        ).stdout.strip()
        if shown.isdigit() and int(shown) > 0:
            return int(shown)
        time.sleep(0.05)
    raise OSError(f"{name} started but systemd reports no main process (did it exit at once?)")
