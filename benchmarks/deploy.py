"""Figure 2, deploy overhead: a prebuilt dist of 2,000 files / 20 MB, no build command.

Ours: the API's deploy call to the stable URL serving the new content, with the phases broken
out from the state database's job rows and the daemon's staging log line. Baseline, in the
same run and interleaved with ours: ``baseline_deploy.sh`` (``sha256sum`` of every file,
``cp -a`` into a new dir, a temp symlink and ``mv -T``, curl until the new content answers)
in front of a plain Caddy serving the ``current`` symlink.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import CADDY, Daemon, client, free_port, site_yaml, summary
from reconciler.core.timeutil import parse_iso

BASELINE = Path(__file__).with_name("baseline_deploy.sh")
STAGED = re.compile(r"staged (\w+): .* copy\+hash ([\d.]+) s, sync ([\d.]+) s")


def make_dist(dist: Path, files: int, size: int) -> None:
    for i in range(files):
        path = dist / f"d{i % 20:02d}" / f"f{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


def _phases(daemon: Daemon, project: str, generation: int, api_start: float) -> dict[str, float]:
    with daemon.db() as db:
        rows = db.execute(
            "SELECT j.type, j.startedAt, j.finishedAt FROM jobs j JOIN deployments d "
            "ON j.deployment = d.id WHERE d.project = ? AND d.generation = ? ORDER BY j.id",
            (project, generation),
        ).fetchall()
    times = {t: (parse_iso(s).timestamp(), parse_iso(f).timestamp()) for t, s, f in rows if s and f}
    phases: dict[str, float] = {}
    build = times.get("production.build")
    if build:
        phases["to_build_start"] = build[0] - api_start
        phases["build"] = build[1] - build[0]
    start = times.get("production.start")
    if start:
        phases["start_switch"] = start[1] - start[0]
    ready = times.get("production.waitReady")
    if ready:
        phases["first_healthy_probe"] = ready[1] - ready[0]
    return phases


def _serve_wait(http: Any, url: str, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http.get(url).text == text:
                return
        except Exception:  # not up yet
            continue
    raise SystemExit(f"{url} never served {text!r}")


def run(root: Path, *, deploys: int = 10, files: int = 2000, size: int = 10_000) -> dict[str, Any]:
    source = root / "site"
    make_dist(source / "dist", files - 1, size)
    index = source / "dist" / "index.html"
    index.write_text("generation 1")
    daemon = Daemon(root / "daemon", "15400-15499", "15500-15599", "--drain", "0")
    baseline_dir = root / "baseline"
    baseline_dir.mkdir()
    plain_port = free_port()
    (baseline_dir / "current").symlink_to("none")
    plain = subprocess.Popen(
        [CADDY, "file-server", "--root", str(baseline_dir / "current"), "--listen",
         f"127.0.0.1:{plain_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(root)},
    )  # fmt: skip
    ours: list[float] = []
    base: list[float] = []
    phases: dict[str, list[float]] = {}
    try:
        daemon.write("big", site_yaml(source, 1))
        url = daemon.wait("big", "generation 1", timeout=300)["url"]
        url = f"http://127.0.0.1:{daemon.status('big')['port']}/"
        http = client()
        for generation in range(2, deploys + 2):
            text = f"generation {generation}"
            index.write_text(text)
            start = time.time()
            response = http.post(f"{daemon.api}/api/projects/big/deploy", json={})
            if response.status_code != 200:
                raise SystemExit(f"deploy failed: {response.text}")
            _serve_wait(http, url, text)
            ours.append(time.time() - start)
            for name, value in _phases(daemon, "big", generation, start).items():
                phases.setdefault(name, []).append(value)
            # the hand baseline, same dist, right after (to share the machine's noise)
            started = time.perf_counter()
            subprocess.run(
                [str(BASELINE), str(source / "dist"), str(baseline_dir),
                 f"http://127.0.0.1:{plain_port}/index.html", text],
                check=True, timeout=120,
            )  # fmt: skip
            base.append(time.perf_counter() - started)
            time.sleep(0.2)
        http.close()
        staged = [STAGED.search(line) for line in daemon.log_lines(" staged ")]
        copy = [float(m.group(2)) for m in staged if m]
        sync = [float(m.group(3)) for m in staged if m]
    finally:
        daemon.stop()
        plain.terminate()
        plain.wait(10)
    result: dict[str, Any] = {
        "files": files,
        "mb": round(files * size / 1e6, 1),
        "ours": summary(ours),
        "baseline": summary(base),
        "ratio": round(statistics.median(ours) / statistics.median(base), 2),
        "phases": {k: summary(v) for k, v in phases.items()},
    }
    if copy:
        result["phases"]["copy_hash"] = summary(copy[-deploys:])
        result["phases"]["sync"] = summary(sync[-deploys:])
    return result
