"""Daemon reaction figures (process runtime, watcher on):

- time from a desired-file write to the build job starting (median of 20 writes)
- time from a pin (rollback) write to the pinned version answering on its URL (median of 10)

Run: .venv/bin/python benchmarks/bench_daemon.py
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from reconciler.config import Config
from reconciler.daemon import Daemon
from reconciler.ports import PortRange
from reconciler.releases import ReleaseStore
from reconciler.runtimes.process import ProcessRuntime
from reconciler.spec import ProjectId


def write(desired: Path, text: str) -> None:
    tmp = desired / ".bench.yaml.tmp"
    tmp.write_text(text)
    os.replace(tmp, desired / "bench.yaml")


def spec(site: Path, generation: int, version: str = "latest") -> str:
    return (
        f"source: {site}\nproduction:\n  state: running\n  version: {version}\n"
        f"  generation: {generation}\nhealth:\n  interval: 0.1\n"
    )


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        site = root / "site"
        (site / "dist").mkdir(parents=True)
        desired = root / "desired"
        desired.mkdir()
        config = Config(
            desired_dir=desired, data_dir=root / "data", port_range=PortRange(47000, 47199)
        )
        daemon = Daemon(config)
        daemon.start()
        db = daemon.db
        try:
            to_build = []
            for generation in range(1, 21):
                (site / "dist" / "index.html").write_text(f"gen {generation}")
                before = max((j.id for j in db.jobs("bench", limit=1)), default=0)
                start = time.perf_counter()
                write(desired, spec(site, generation))
                while True:
                    jobs = [
                        j
                        for j in db.jobs("bench", limit=5)
                        if j.id > before and j.type == "production.build"
                    ]
                    if jobs:
                        to_build.append(time.perf_counter() - start)
                        break
                    time.sleep(0.001)
                while (
                    (row := db.project("bench")) is None
                    or row.observedGeneration != generation
                    or row.productionStatus != "running"
                ):
                    time.sleep(0.005)
            versions = [
                v.hash for v in ReleaseStore(config.releases_dir).history(ProjectId("bench"))
            ]
            pins = []
            a, b = versions[0], versions[1]
            for i in range(10):
                target = b if i % 2 == 0 else a
                expected = (
                    config.releases_dir / "bench" / target / "dist" / "index.html"
                ).read_text()
                start = time.perf_counter()
                write(desired, spec(site, 20, target))
                while True:
                    row = db.project("bench")
                    if row and row.productionHash == target and row.productionPort:
                        try:
                            if (
                                httpx.get(f"http://127.0.0.1:{row.productionPort}/", timeout=1).text
                                == expected
                            ):
                                pins.append(time.perf_counter() - start)
                                break
                        except httpx.HTTPError:
                            pass
                    time.sleep(0.002)
        finally:
            daemon.shutdown()
            runtime = ProcessRuntime(ReleaseStore(config.releases_dir))
            for instance in runtime.observe(ProjectId("bench")):
                runtime.stop(instance, timeout=2)
        print(
            f"file write -> build job started: median {statistics.median(to_build) * 1000:.0f} ms "
            f"(min {min(to_build) * 1000:.0f}, max {max(to_build) * 1000:.0f}, n={len(to_build)}; "
            f"includes the {config.debounce * 1000:.0f} ms debounce)"
        )
        print(
            f"pin write -> pinned version answering: median {statistics.median(pins) * 1000:.0f} ms "
            f"(min {min(pins) * 1000:.0f}, max {max(pins) * 1000:.0f}, n={len(pins)})"
        )


if __name__ == "__main__":
    sys.exit(main())
