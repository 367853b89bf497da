"""Limits without systemd or Docker (the quickstart): the maxima a desired file may not exceed,
memory caps on builds and instances (prlimit's address-space limit), the disk quota of a
project's releases, what a serving instance uses, and why an instance ended."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

from reconciler.core.spec import Limits
from reconciler.runtimes.process.runtime import NICE, limited
from tests.integration.harness import Env, desired_yaml, environment, get, make_site, wait_for

SERVER = f"exec {sys.executable} -m http.server $PORT --bind 127.0.0.1"
HOG = f"{sys.executable} -c 'x = bytearray(300 * 2**20)'"


def dynamic(
    site: Path, *, generation: int = 1, command: str = SERVER, extra: str = "", build: str = ""
) -> str:
    return desired_yaml(
        site,
        generation=generation,
        extra=f"build:\n  output: dist\n{build}start:\n  command: {command!r}\n{extra}",
    )


def wait_error(env: Env, project: str, text: str) -> str:
    def check() -> str | None:
        row = env.row(project)
        error = row.productionError if row is not None else None
        return (
            error
            if row is not None and row.productionStatus == "failed" and error and (text in error)
            else None
        )

    return str(wait_for(check, 60, f"{project} to fail with {text!r}"))


def test_the_wrapper_caps_address_space_and_priority() -> None:
    argv = limited(["true"], Limits(memory=64 << 20, cpu=0.5, pids=64))
    assert argv[0].endswith("prlimit") and f"--as={64 << 20}" in argv and "--nproc=64" in argv
    assert argv[argv.index("--") + 1].endswith("nice") and str(NICE) in argv
    assert argv[-1] == "true"
    assert limited(["true"], Limits()) == ["true"]


def test_a_file_over_the_maxima_fails_and_the_old_version_keeps_serving(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", "small")
    maxima = Limits.parse("memory=256M,cpu=1,disk=100M")
    with environment(tmp_path, extra_config={"max_limits": maxima}) as env:
        env.start()
        env.write("www", dynamic(site, extra="limits:\n  memory: 128M\n"))
        first = env.wait_serving("www", "small")
        env.write("www", dynamic(site, generation=2, extra="limits:\n  memory: 1G\n"))
        failed = env.wait_status("www", "failed")
        error = str(failed.productionError)
        assert "limits.memory 1G is over this host's maximum 256M" in error, error
        assert f"version {first.productionHash} keeps serving" in error
        assert get(f"http://127.0.0.1:{first.productionPort}/") == "small"
        env.write("www", dynamic(site, generation=3, build="  limits:\n    cpu: 4\n"))
        wait_error(env, "www", "build.limits.cpu 4 is over this host's maximum 1")


def test_memory_caps_builds_and_instances_and_the_others_keep_serving(tmp_path: Path) -> None:
    other = make_site(tmp_path / "other", "unharmed")
    hog = make_site(tmp_path / "hog", "hog")
    with environment(tmp_path, extra_config={"limits": Limits.parse("memory=96M")}) as env:
        env.start()
        env.write("other", dynamic(other))
        serving = env.wait_serving("other", "unharmed")
        # an instance that asks for more memory than its limit cannot get it (the default)
        env.write("hog", dynamic(hog, command=f"{HOG} && {SERVER}"))
        failed = env.wait_status("hog", "failed", timeout=60)
        assert "MemoryError" in str(failed.productionError), failed.productionError
        # a build over its own limit fails with the build's output
        build = f"build:\n  command: {HOG!r}\n  limits:\n    memory: 64M\n"
        env.write("hog", desired_yaml(hog, generation=2, extra=build))
        error = wait_error(env, "hog", "Build failed")
        assert "MemoryError" in error, error
        # the file's own limit wins over the default: with room, the same app runs
        env.write("hog", dynamic(hog, generation=3, command=f"{HOG} && {SERVER}",
                                 extra="limits:\n  memory: 1G\n"))  # fmt: skip
        env.wait_serving("hog", "hog", timeout=60)
        assert get(f"http://127.0.0.1:{serving.productionPort}/") == "unharmed"


def test_the_disk_quota_stops_a_build_and_the_old_version_keeps_serving(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", "fits")
    with environment(tmp_path) as env:
        env.start()
        env.write("www", desired_yaml(site, extra="limits:\n  disk: 2M\n"))
        first = env.wait_serving("www", "fits")
        (site / "dist" / "big.bin").write_bytes(os.urandom(3 << 20))
        env.write("www", desired_yaml(site, generation=2, extra="limits:\n  disk: 2M\n"))
        failed = env.wait_status("www", "failed")
        error = str(failed.productionError)
        assert "Disk quota: the build output is larger than" in error, error
        assert f"version {first.productionHash} keeps serving" in error
        assert get(f"http://127.0.0.1:{first.productionPort}/") == "fits"
        assert [r.hash for r in env.releases().versions("www")] == [first.productionHash]  # type: ignore[arg-type]


def test_usage_is_sampled_and_an_ended_instance_says_why(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", "measured")
    with environment(tmp_path) as env:
        daemon = env.start()
        env.write("app", dynamic(site))
        row = env.wait_serving("app", "measured")
        assert daemon.controller.sample_usage() == 1
        assert daemon.controller.sample_usage() == 1  # the second sample has a CPU figure
        (active,) = [i for i in env.db.instances("app") if i.role == "active"]
        assert active.memory is not None and active.memory > 5 << 20
        assert active.cpu is not None and active.usageAt is not None
        assert active.pid is not None
        os.kill(active.pid, signal.SIGKILL)
        wait_for(
            lambda: [e for e in env.db.events_after("app", 0) if e.type == "production.exited"],
            30,
            "the exit reported",
        )
        (ended,) = [e for e in env.db.events_after("app", 0) if e.type == "production.exited"]
        assert "exited with code -9" in ended.payload()["message"], ended.payload()
        again = env.wait_serving("app", "measured", timeout=30)
        assert again.productionHash == row.productionHash  # the same version, started again


def test_kept_releases_over_the_quota_refuse_the_next_build(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", "big")
    (site / "dist" / "big.bin").write_bytes(os.urandom(3 << 20))
    with environment(tmp_path) as env:
        env.start()
        env.write("www", desired_yaml(site))
        first = env.wait_serving("www", "big")
        env.write("www", desired_yaml(site, generation=2, extra="limits:\n  disk: 2M\n"))
        failed = env.wait_status("www", "failed")
        error = str(failed.productionError)
        assert re.search(r"Disk quota: the releases of www take 3\d{3}K of its 2M \(limits", error)
        assert f"version {first.productionHash} keeps serving" in error, error
        assert get(f"http://127.0.0.1:{first.productionPort}/") == "big"
