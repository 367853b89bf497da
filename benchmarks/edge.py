"""Figure 8, the edge: what a configuration load costs other sites (failed requests on an
unrelated site while LOADS sites are added one by one, each one load), and static throughput
through the edge against a plain Caddy serving the same directory (`caddy file-server`, same
binary, same run), with access logs on and off (wrk, loopback).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import CADDY, Daemon, free_port, site_yaml


def _load_cost(daemon: Daemon, root: Path, loads: int) -> dict[str, Any]:
    bystander = daemon.status("st")["port"]
    failures: list[str] = []
    count = [0]
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                try:
                    if client.get(f"http://127.0.0.1:{bystander}/").status_code != 200:
                        failures.append("status")
                except httpx.HTTPError as exc:
                    failures.append(type(exc).__name__)
                count[0] += 1

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    source = root / "extra-site"
    (source / "dist").mkdir(parents=True)
    (source / "dist" / "index.html").write_text("extra")
    try:
        for index in range(loads):
            daemon.write(f"extra{index}", site_yaml(source, 1))
            daemon.wait(f"extra{index}", "extra")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    return {"loads": loads, "requests": count[0], "failed": len(failures)}


def _wrk(url: str, seconds: int) -> float:
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds}s", url], capture_output=True, text=True, check=True
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("Requests/sec:"))
    return float(line.split()[1])


def _throughput(daemon: Daemon, seconds: int, rounds: int) -> dict[str, float]:
    port = daemon.status("st")["port"]
    current = daemon.data / "production" / "st" / "current" / "dist"
    plain_port = free_port()
    plain = subprocess.Popen(
        [CADDY, "file-server", "--root", str(current.resolve()), "--listen",
         f"127.0.0.1:{plain_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(daemon.root)},
    )  # fmt: skip
    try:
        time.sleep(1)
        ours, base = [], []
        for _ in range(rounds):  # interleaved, to share the machine's noise
            ours.append(_wrk(f"http://127.0.0.1:{port}/", seconds))
            base.append(_wrk(f"http://127.0.0.1:{plain_port}/", seconds))
    finally:
        plain.terminate()
        plain.wait(10)
    edge, baseline = statistics.median(ours), statistics.median(base)
    return {"edge_rps": edge, "plain_rps": baseline, "ratio": round(edge / baseline, 2)}


def run(root: Path, *, loads: int = 20, seconds: int = 10, rounds: int = 3) -> dict[str, Any]:
    static = root / "static"
    (static / "dist").mkdir(parents=True)
    (static / "dist" / "index.html").write_text("bystander")
    results: dict[str, Any] = {}
    runs = (
        ("access_logs_on", ("16200-16299", "16300-16399"), ()),
        ("access_logs_off", ("16400-16499", "16500-16599"), ("--access-logs", "off")),
    )
    for label, (ports, internal), extra in runs:
        # a short dir name: the edge's admin socket lives under it (unix sockets: 107 bytes)
        daemon = Daemon(root / label[-3:], ports, internal, "--drain", "0", *extra)
        try:
            daemon.write("st", site_yaml(static, 1))
            daemon.wait("st", "bystander")
            if label == "access_logs_on":
                results["load_cost"] = _load_cost(daemon, root, loads)
            if shutil.which("wrk"):
                results[f"throughput_{label}"] = _throughput(daemon, seconds, rounds)
        finally:
            daemon.stop()
    return results
