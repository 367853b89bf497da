"""A real systemd to install into: a Debian root filesystem (``image.sh``, debootstrap) booted
with ``/lib/systemd/systemd`` as PID 1 in a container, the package installed from a wheelhouse
built on the host (nothing inside needs the network)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

IMAGE_TIMEOUT = 1800
BOOT_TIMEOUT = 90


def _fail_or_skip(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; under CI=true the systemd suite must run")
    pytest.skip(why)


@dataclass
class Machine:
    """A booted container, driven through ``docker exec``."""

    name: str

    def run(
        self, *argv: str, check: bool = True, timeout: float = 120, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        command = ["docker", "exec", *(["--user", user] if user else []), self.name, *argv]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def sh(self, script: str, **options: object) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-c", script, **options)  # type: ignore[arg-type]

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "--value", f"--property={prop}", unit).stdout.strip()

    def active(self, unit: str) -> str:
        return self.run("systemctl", "is-active", unit, check=False).stdout.strip()

    def wait(self, check: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():  # type: ignore[operator]
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def put(self, source: Path, target: str) -> None:
        subprocess.run(
            ["docker", "cp", str(source), f"{self.name}:{target}"], check=True, timeout=120
        )


def _wheelhouse(target: Path) -> Path:
    """The package and its dependencies as wheels (from the package registry, through pip's
    cache), for an offline install inside the machine."""
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(REPO / ".venv" / "bin" / "pip"), "wheel", "--quiet", "--wheel-dir", str(target),
         str(REPO)],
        check=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    return target


def _source_tarball(target: Path) -> Path:
    """The repository's tracked files (what a checkout of this commit holds)."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout.split(b"\0")
    with tarfile.open(target, "w") as tar:
        for name in files:
            if name and (REPO / name.decode()).exists():
                tar.add(REPO / name.decode(), arcname=f"reconciler/{name.decode()}")
    return target


@pytest.fixture(scope="session")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    if shutil.which("docker") is None:
        _fail_or_skip("docker is not installed")
    built = subprocess.run(
        [str(REPO / "tests" / "systemd" / "image.sh")],
        capture_output=True, text=True, timeout=IMAGE_TIMEOUT, check=False,
    )  # fmt: skip
    if built.returncode != 0:
        _fail_or_skip(f"the systemd image could not be built: {built.stderr[-2000:]}")
    image = built.stdout.strip().splitlines()[-1]
    work = tmp_path_factory.mktemp("systemd")
    wheels = _wheelhouse(work / "wheelhouse")
    tarball = _source_tarball(work / "source.tar")
    name = f"reconciler-systemd-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        # CAP_SYS_ADMIN and seccomp unconfined (not --privileged): systemd sets up the mount
        # namespaces and users the units ask for (ProtectSystem=, DynamicUser=, PrivateUsers=)
        # as PID 1 does on a real host; without them it skips what it cannot do in a container.
        # While this machine runs, the host's Docker engine (cgroup v1) hears no container's
        # oom event: the suite runs after tests/docker, and the machine goes at session end
        ["docker", "run", "-d", "--name", name, "-e", "container=docker", "--cgroupns=host",
         "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined",
         "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
         "--tmpfs", "/tmp", image, "/lib/systemd/systemd"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    box = Machine(name)
    try:
        box.wait(
            lambda: (
                box.run("systemctl", "is-system-running", check=False).stdout.strip()
                in ("running", "degraded")
            ),
            BOOT_TIMEOUT,
            "systemd to finish booting",
        )
        box.put(wheels, "/root/wheelhouse")
        box.put(tarball, "/root/source.tar")
        box.run("tar", "-C", "/root", "-xf", "/root/source.tar")
        yield box
    finally:
        logs = subprocess.run(
            ["docker", "exec", name, "journalctl", "--no-pager", "-n", "300"],
            capture_output=True, text=True, check=False, timeout=60,
        ).stdout  # fmt: skip
        artifacts = REPO / "artifacts" / "systemd"
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / "journal.txt").write_text(logs)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False, timeout=120)
