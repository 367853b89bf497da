"""The shipped systemd units pass `systemd-analyze verify`; the installer lays out its files."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

UNITS = ["reconciler.service", "reconciler-api.service", "reconciler-edge.service"]
ANALYZE = shutil.which("systemd-analyze")


def _staged(tmp_path: Path, unit: str) -> Path:
    """The unit with ExecStart pointing at this checkout's reconciler (verify checks it)."""
    script = Path(sys.executable).parent / "reconciler"
    text = (
        (REPO / "systemd" / unit)
        .read_text()
        .replace("/opt/reconciler/venv/bin/reconciler", str(script))
    )
    staged = tmp_path / unit
    staged.write_text(text)
    return staged


def _need_analyze() -> str:
    if ANALYZE is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing; .ci/run installs the systemd package")
        pytest.skip("systemd-analyze is not installed")
    return ANALYZE


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies(tmp_path: Path, unit: str) -> None:
    analyze = _need_analyze()
    result = subprocess.run(
        [analyze, "verify", str(_staged(tmp_path, unit))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


@pytest.mark.parametrize("unit", UNITS)
def test_unit_exposure_is_low(tmp_path: Path, unit: str) -> None:
    analyze = _need_analyze()
    result = subprocess.run(
        [analyze, "security", "--offline=yes", str(_staged(tmp_path, unit))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next(ln for ln in result.stdout.splitlines() if "Overall exposure level" in ln)
    score = float(line.split(":")[1].split()[0])
    print(f"{unit}: {line.strip()}")
    assert score <= 3.0, line


def test_units_keep_the_promises() -> None:
    daemon = (REPO / "systemd" / "reconciler.service").read_text()
    api = (REPO / "systemd" / "reconciler-api.service").read_text()
    for text in (daemon, api):
        for key in (
            "Type=notify",
            "WatchdogSec=",
            "Restart=on-failure",
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/reconciler /etc/reconciler/desired",
            "PrivateTmp=yes",
            "NoNewPrivileges=yes",
            "ProtectHome=yes",
            "RestrictAddressFamilies=",
        ):
            assert key in text
    (exec_start,) = [line for line in daemon.splitlines() if line.startswith("ExecStart=")]
    assert "--site-users" in exec_start  # sites outlive a restart, each as its own user
    assert "--edge external" in daemon and "reconciler-edge.service" in daemon
    assert "--api-token-file" in api
    edge = (REPO / "systemd" / "reconciler-edge.service").read_text()
    for key in ("Type=notify", "Restart=always", "ProtectSystem=strict",
                "ReadWritePaths=/var/lib/reconciler\n", "NoNewPrivileges=yes",
                "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "reconciler edge --data"):  # fmt: skip
        assert key in edge, key


def test_installer_lays_out_files(tmp_path: Path) -> None:
    env = {**os.environ, "DESTDIR": str(tmp_path), "SKIP_SYSTEM": "1", "PYTHON": sys.executable}
    subprocess.run([str(REPO / "systemd" / "install.sh")], env=env, check=True, timeout=60)
    for path in ("etc/systemd/system/reconciler.service", "etc/systemd/system/reconciler-api.service",
                 "etc/systemd/system/reconciler-edge.service",
                 "etc/reconciler/desired", "var/lib/reconciler",
                 "etc/reconciler/reconciler.env", "opt/reconciler/README.md",
                 "etc/systemd/system/reconciler-site@.service",
                 "etc/polkit-1/rules.d/50-reconciler-sites.rules"):  # fmt: skip
        assert (tmp_path / path).exists(), path
    token = tmp_path / "etc/reconciler/api-token"
    assert len(token.read_text().strip()) == 64
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    first = token.read_text()
    subprocess.run([str(REPO / "systemd" / "install.sh")], env=env, check=True, timeout=60)
    assert token.read_text() == first  # a second run keeps the token
