"""Figure 5, scale: SITES static sites and APPS process sites on one daemon.

From daemon start to every site serving on its stable URL; daemon and edge RSS; idle CPU of
both over IDLE seconds after convergence; one full resync (SIGHUP; the daemon logs how long
it took to observe and plan every project); ``GET /api/projects/<id>/production`` and
``GET /api/projects`` p50/p99 under 16 concurrent clients (wrk, loopback).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import (
    BUSYBOX,
    PYTHON,
    REPO,
    Daemon,
    cpu_seconds,
    free_port,
    kill_edge,
    kill_sites,
    rss_mb,
    site_yaml,
)
from reconciler.api.server import SPARE_THREADS

RESYNC = re.compile(r"full resync: (\d+) projects? in ([\d.]+) s(?: \((\d+) unchanged)?")
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk_latency(url: str, seconds: int, connections: int = 16) -> dict[str, Any]:
    """p50/p99 in ms and requests/s from ``wrk --latency``, after a warm-up run whose figures
    are dropped (the server's threads and caches start cold): 2 s, or as long as the run when
    that is shorter (the smoke run)."""
    gzip = ["-H", "Accept-Encoding: gzip"]  # as browsers, curl --compressed and httpx send
    warm = min(2, seconds)
    subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{warm}s", *gzip, url],
        capture_output=True, check=False,
    )  # fmt: skip
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s",
         *gzip, url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found: dict[str, Any] = {"clients": connections}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            value = re.fullmatch(r"([\d.]+)(us|ms|s)", parts[1])
            if value:
                key = "p50_ms" if parts[0] == "50%" else "p99_ms"
                found[key] = round(float(value.group(1)) * UNITS[value.group(2)], 2)
        elif line.startswith("Requests/sec:"):
            found["requests_per_s"] = float(parts[1])
        elif "Non-2xx" in line or "Socket errors" in line:
            found.setdefault("errors", []).append(line.strip())
    return found


def _serving(daemon: Daemon, count: int, deadline: float) -> tuple[dict[str, int], float]:
    """Every site's stable URL, each asked as soon as the database says it runs (read straight
    from it: polling the API costs the daemon) until it answers 200; the ports and the moment
    the last one first did. Four askers: one pass over 1,200 URLs in a row took 2-3 s, a lag
    the figure would have counted."""
    ports: dict[str, int] = {}
    confirmed: set[int] = set()
    last = time.monotonic()
    with httpx.Client(timeout=5) as http, ThreadPoolExecutor(4) as pool:

        def answers(port: int) -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return http.get(f"http://127.0.0.1:{port}/").status_code == 200
            return False

        while len(confirmed) < count and time.monotonic() < deadline:
            with daemon.db() as db:
                ports = dict(
                    db.execute(
                        "SELECT id, productionPort FROM projects WHERE productionStatus = "
                        "'running' AND productionPort IS NOT NULL"
                    ).fetchall()
                )
            pending = sorted(set(ports.values()) - confirmed)
            for port, ok in zip(pending, pool.map(answers, pending), strict=True):
                if ok:
                    confirmed.add(port)
                    last = time.monotonic()
            time.sleep(0.2)
    return ports, last


def _resync(daemon: Daemon, timeout: float = 120) -> dict[str, float]:
    before = len(daemon.log_lines("full resync:"))
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = daemon.log_lines("full resync:")
        if len(lines) > before:
            match = RESYNC.search(lines[-1])
            if match:
                return {"projects": int(match.group(1)), "seconds": float(match.group(2)),
                        "skipped": int(match.group(3) or 0)}  # fmt: skip
        time.sleep(0.1)
    raise SystemExit("no full resync was logged after SIGHUP")


def _api_latency(daemon: Daemon, project: str, seconds: int) -> dict[str, Any]:
    """wrk against the API in the daemon's process (``reconciler run``, waitress), against a
    separate ``reconciler api`` on the same dirs (how the systemd units run it: granian), the
    same app on waitress in a process of its own (the server it replaced), and the floor: a
    one-route Flask app on waitress with as many threads."""
    port = free_port()
    api = subprocess.Popen(
        [PYTHON, "-m", "reconciler", "api", "--desired", str(daemon.desired), "--data",
         str(daemon.data), "--listen", f"127.0.0.1:{port}", "--log-level", "WARNING"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    waitress_port = free_port()
    waitress = subprocess.Popen(
        [PYTHON, "-m", "benchmarks.api_waitress", str(daemon.desired), str(daemon.data),
         str(waitress_port)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    floor_port = free_port()
    floor = subprocess.Popen(
        [PYTHON, str(Path(__file__).with_name("floor_app.py")), str(floor_port),
         str(64 + SPARE_THREADS)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        results: dict[str, Any] = {}
        servers = (("separate", f"http://127.0.0.1:{port}"), ("in_run", daemon.api),
                   ("waitress", f"http://127.0.0.1:{waitress_port}"))  # fmt: skip
        for label, base in servers:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/api/projects", timeout=30).status_code == 200:
                        break  # also fills its cache
                time.sleep(0.2)
            if seconds > 1:  # every worker's cache (the smoke run's warm-up does with one)
                for path in (f"/api/projects/{project}/production", "/api/projects"):
                    wrk_latency(f"{base}{path}", 1 if seconds <= 2 else 2)
            results[label] = {
                "production": wrk_latency(f"{base}/api/projects/{project}/production", seconds),
                "projects": wrk_latency(f"{base}/api/projects", seconds),
            }
        results["floor"] = wrk_latency(f"http://127.0.0.1:{floor_port}/", seconds)
        return results
    finally:
        for proc in (api, waitress, floor):
            proc.terminate()
            proc.wait(10)


def _reboot(
    daemon: Daemon, public: str, internal: str, count: int
) -> tuple[Daemon, dict[str, Any]]:
    """A cold start, as after a reboot: the daemon stopped, the edge and every site's process
    killed, ``reconciler run`` again on the same dirs: the seconds to every site serving
    (no build: each release is there; the edge brought up once, the apps started again)."""
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.proc.wait(120)
    kill_edge(daemon)
    killed = kill_sites(daemon.data)
    daemon.log.close()
    again = Daemon(daemon.root, public, internal, "--drain", "0", wait_ready=False)
    again.wait_api()
    ports, last = _serving(again, count, time.monotonic() + 900)
    return again, {"serving": len(ports), "all_serving_s": round(last - again.started, 1),
                   "processes_killed": killed}  # fmt: skip


def run(
    root: Path, *, sites: int = 1000, apps: int = 200, idle: int = 30, api_seconds: int = 10
) -> dict[str, Any]:
    static = root / "static-src"
    (static / "dist").mkdir(parents=True)
    (static / "dist" / "index.html").write_text("one of many")
    app = root / "app-src"
    (app / "dist").mkdir(parents=True)
    (app / "dist" / "index.html").write_text("an app")
    if BUSYBOX:
        shutil.copy(BUSYBOX, app / "dist" / "busybox")
        start = "exec ./busybox httpd -f -p 127.0.0.1:$PORT -h ."
    else:
        start = f"exec {PYTHON} -m http.server $PORT --bind 127.0.0.1"
    desired = root / "scale" / "desired"
    desired.mkdir(parents=True)
    for index in range(sites):
        (desired / f"s{index:05d}.yaml").write_text(site_yaml(static, 1))
    for index in range(apps):
        (desired / f"p{index:03d}.yaml").write_text(
            site_yaml(app, 1, extra=f"start:\n  command: {start}\n")
        )
    started = time.monotonic()
    span = max(2000, sites + apps + 100)  # public ports (below the internal range)
    public = f"10000-{9999 + span}"
    internal = f"{10000 + span}-{10000 + span + 2 * apps + 999}"
    daemon = Daemon(root / "scale", public, internal, "--drain", "0", wait_ready=False)
    try:
        daemon.wait_api()
        ports, last = _serving(daemon, sites + apps, time.monotonic() + 900)
        all_serving = last - started
        edge, me = daemon.edge_pid(), daemon.proc.pid
        time.sleep(min(15, idle))  # the first timers after convergence (usage, samples) pass
        cpu = {pid: cpu_seconds(pid) for pid in (edge, me)}
        time.sleep(idle)
        idle_cpu = {pid: round((cpu_seconds(pid) - cpu[pid]) / idle * 100, 2) for pid in (edge, me)}
        resyncs = [_resync(daemon) for _ in range(3)]
        api = _api_latency(daemon, f"s{sites // 2:05d}", api_seconds) if shutil.which("wrk") else {}
        rss = {"daemon": round(rss_mb(me), 1), "edge": round(rss_mb(edge), 1)}
        daemon, reboot = _reboot(daemon, public, internal, sites + apps)
        return {
            "static_sites": sites,
            "process_sites": apps,
            "serving": len(ports),
            "all_serving_s": round(all_serving, 1),
            "cold_start": reboot,
            "daemon_rss_mb": rss["daemon"],
            "edge_rss_mb": rss["edge"],
            "idle_cpu_pct": {"daemon": idle_cpu[me], "edge": idle_cpu[edge], "seconds": idle},
            "full_resync_s": sorted(r["seconds"] for r in resyncs),
            "api": api,
        }
    finally:
        daemon.stop()
