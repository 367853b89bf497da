"""Figure 8, the edge: what sites coming and going cost other sites (failed requests on two
bystander sites, a static and an app, from keep-alive and fresh-connection loops, while
SITES sites are added one by one and then removed one by one; and how many configuration
loads that took), and static throughput through the edge against a plain Caddy serving the
same directory with the same access logging (same binary, same run), logs on and off (wrk,
loopback).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import CADDY, PYTHON, Daemon, Loops, free_port, site_yaml


def _churn_cost(daemon: Daemon, root: Path, sites: int) -> dict[str, Any]:
    bystanders = [daemon.status(name)["port"] for name in ("st", "app")]
    source = root / "extra-site"
    (source / "dist").mkdir(parents=True, exist_ok=True)
    (source / "dist" / "index.html").write_text("extra")
    loads_before = len(daemon.log_lines("edge: loaded"))
    started = time.monotonic()
    with Loops(bystanders) as loops:
        for index in range(sites):
            daemon.write(f"extra{index}", site_yaml(source, 1))
            daemon.wait(f"extra{index}", "extra")
        for index in range(sites):
            port = daemon.status(f"extra{index}")["port"]
            (daemon.desired / f"extra{index}.yaml").unlink()
            _wait_unserved(port)
    return {
        "sites": sites,
        **loops.figures(),
        "loads": len(daemon.log_lines("edge: loaded")) - loads_before,
        "seconds": round(time.monotonic() - started, 1),
    }


def _wait_unserved(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 503:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"port {port} still serves a removed site")


def _wrk(url: str, seconds: int) -> float:
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds}s", url], capture_output=True, text=True, check=True
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("Requests/sec:"))
    return float(line.split()[1])


def _plain(root: Path, port: int, where: Path, logs: bool) -> dict[str, Any]:
    """A plain Caddy serving ``root``, with a JSON access log to a file like the edge's."""
    server: dict[str, Any] = {
        "listen": [f"127.0.0.1:{port}"],
        "routes": [{"handle": [{"handler": "file_server", "root": str(root)}]}],
    }
    config: dict[str, Any] = {
        "admin": {"disabled": True},
        "apps": {"http": {"servers": {"plain": server}}},
    }
    if logs:
        server["logs"] = {}
        writer = {"output": "file", "filename": str(where / "plain-access.log")}
        config["logging"] = {"logs": {"access": {"writer": writer, "encoder": {"format": "json"},
                                                 "include": ["http.log.access"]}}}  # fmt: skip
    return config


def _throughput(daemon: Daemon, seconds: int, rounds: int, logs: bool) -> dict[str, float]:
    port = daemon.status("st")["port"]
    current = daemon.data / "production" / "st" / "current" / "dist"
    plain_port = free_port()
    config = daemon.root / "plain.json"
    config.write_text(json.dumps(_plain(current.resolve(), plain_port, daemon.root, logs)))
    plain = subprocess.Popen(
        [CADDY, "run", "--config", str(config)],
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


def run(root: Path, *, sites: int = 100, seconds: int = 10, rounds: int = 3) -> dict[str, Any]:
    static = root / "static"
    (static / "dist").mkdir(parents=True)
    (static / "dist" / "index.html").write_text("bystander")
    results: dict[str, Any] = {}
    runs = (
        ("access_logs_on", ("16200-16399", "16400-16599"), ()),
        ("access_logs_off", ("16600-16799", "16800-16999"), ("--access-logs", "off")),
    )
    app = root / "app"
    (app / "dist").mkdir(parents=True)
    (app / "dist" / "index.html").write_text("bystander app")
    start = f"start:\n  command: exec {PYTHON} -m http.server $PORT\n"
    for label, (ports, internal), extra in runs:
        # a short dir name: the edge's admin socket lives under it (unix sockets: 107 bytes)
        daemon = Daemon(root / label[-3:], ports, internal, "--drain", "0", *extra)
        try:
            daemon.write("st", site_yaml(static, 1))
            daemon.write("app", site_yaml(app, 1, extra=start))
            daemon.wait("st", "bystander")
            daemon.wait("app", "bystander app")
            if label == "access_logs_on":
                results["churn_cost"] = _churn_cost(daemon, root, sites)
            if shutil.which("wrk"):
                results[f"throughput_{label}"] = _throughput(
                    daemon, seconds, rounds, label == "access_logs_on"
                )
        finally:
            daemon.stop()
    return results
