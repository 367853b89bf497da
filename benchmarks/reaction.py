"""Figure 1, reaction: a desired-file write to the build job starting.

Three ways in: an atomic rename (editors, git), an in-place write (truncate, write, close), and
with the watcher off (the periodic resync alone, ``--resync-interval 1``). Each write bumps the
generation of a one-file static site; the next write waits until the previous one converged.
The job's ``startedAt`` (ms) is compared with the wall clock taken just before the write.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.harness import Daemon, site_yaml, summary
from reconciler.core.timeutil import parse_iso


def _started_after(
    daemon: Daemon, project: str, after_id: int, timeout: float = 60
) -> tuple[int, float]:
    deadline = time.monotonic() + timeout
    with daemon.db() as db:
        while time.monotonic() < deadline:
            row = db.execute(
                "SELECT id, startedAt FROM jobs WHERE project = ? AND id > ? AND type = "
                "'production.build' AND startedAt IS NOT NULL ORDER BY id LIMIT 1",
                (project, after_id),
            ).fetchone()
            if row:
                return int(row[0]), parse_iso(row[1]).timestamp()
            time.sleep(0.005)
    raise SystemExit(f"{project}: no build job started within {timeout} s")


def _last_job(daemon: Daemon, project: str) -> int:
    with daemon.db() as db:
        row = db.execute("SELECT max(id) FROM jobs WHERE project = ?", (project,)).fetchone()
    return int(row[0] or 0)


def _converged(daemon: Daemon, project: str, generation: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with daemon.db() as db:
        while time.monotonic() < deadline:
            row = db.execute(
                "SELECT observedGeneration, productionStatus FROM projects WHERE id = ?",
                (project,),
            ).fetchone()
            open_ = db.execute(
                "SELECT count(*) FROM deployments WHERE project = ? AND finishedAt IS NULL",
                (project,),
            ).fetchone()[0]
            if row and row[0] == generation and row[1] == "running" and not open_:
                return
            time.sleep(0.01)
    raise SystemExit(f"{project}: generation {generation} did not converge")


def _series(daemon: Daemon, root: Path, project: str, writes: int, how: str) -> list[float]:
    site = root / f"{project}-src"
    (site / "dist").mkdir(parents=True, exist_ok=True)
    samples = []
    target = daemon.desired / f"{project}.yaml"
    for generation in range(1, writes + 2):
        (site / "dist" / "index.html").write_text(f"generation {generation}")
        before = _last_job(daemon, project)
        text = site_yaml(site, generation)
        start = time.time()
        if how == "in-place" and target.exists():
            with open(target, "w") as fh:  # truncate, write, close: one file, no rename
                fh.write(text)
        else:
            daemon.write(project, text)
        _id, started = _started_after(daemon, project, before)
        if generation > 1:  # the first one also creates the project's dirs and site
            samples.append(max(0.0, started - start))
        _converged(daemon, project, generation)
        time.sleep(0.05)
    return samples


def run(root: Path, *, writes: int = 50, fallback_writes: int = 10) -> dict[str, Any]:
    results: dict[str, Any] = {}
    daemon = Daemon(root / "watch", "15000-15099", "15100-15199", "--drain", "0")
    try:
        results["rename"] = summary(_series(daemon, root, "rename", writes, "rename"))
        results["in_place"] = summary(_series(daemon, root, "inplace", writes, "in-place"))
    finally:
        daemon.stop()
    polled = Daemon(
        root / "poll", "15200-15299", "15300-15399", "--drain", "0", "--no-watch",
        "--resync-interval", "1",
    )  # fmt: skip
    try:
        results["watcher_off"] = summary(_series(polled, root, "polled", fallback_writes, "rename"))
        results["watcher_off"]["resync_interval_s"] = 1
    finally:
        polled.stop()
    return results
