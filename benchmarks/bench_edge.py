"""Edge figures, against a real `reconciler run` (daemon + API) and a real Caddy, loopback only.

1. Rollback: API call to the answer, and to the first 200 carrying the target's content, for a
   static site, a process site and (when an engine answers) a Docker site. Median and p99 of
   ROLLBACKS rollbacks each.
2. The cost of a configuration load to other sites: failed requests on an unrelated site
   while LOADS sites are added one by one (each one load).
3. Static throughput through the edge against a plain Caddy serving the same directory
   (`caddy file-server`, same binary, same run), with wrk.
4. SITES static sites: daemon start to all serving, edge and daemon RSS, processes per site,
   idle CPU of both over IDLE seconds after convergence.

Run: .venv/bin/python benchmarks/bench_edge.py [--sites 1000] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CADDY = str(Path(sys.executable).with_name("caddy"))
BUSYBOX = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p)), None)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fmt_ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:7.1f} ms   p99 {pct(values, 0.99) * 1000:7.1f} ms"


class Daemon:
    """`reconciler run` on a temp dir, with the edge on."""

    def __init__(self, root: Path, ports: str, internal: str, *extra: str) -> None:
        self.root = root
        self.desired = root / "desired"
        self.data = root / "data"
        self.desired.mkdir(parents=True, exist_ok=True)
        self.api_port = free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        args = [
            PYTHON, "-m", "reconciler", "run", "--listen", f"127.0.0.1:{self.api_port}",
            "--desired", str(self.desired), "--data", str(self.data), "--port-range", ports,
            "--internal-port-range", internal, "--log-level", "WARNING", *extra,
        ]  # fmt: skip
        self.log = open(root / "daemon.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.api}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise SystemExit("the daemon did not come up")

    def write(self, project: str, text: str) -> None:
        tmp = self.desired / f".{project}.yaml.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.desired / f"{project}.yaml")

    def status(self, project: str) -> dict[str, Any]:
        return httpx.get(f"{self.api}/api/projects/{project}/production", timeout=10).json()  # type: ignore[no-any-return]

    def wait(self, project: str, text: str, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(project)
            if status["status"] == "running" and status["port"]:
                try:
                    if text in httpx.get(f"http://127.0.0.1:{status['port']}/", timeout=2).text:
                        return status
                except httpx.HTTPError:
                    pass
            time.sleep(0.05)
        raise SystemExit(f"{project} did not serve {text!r}: {self.status(project)}")

    def edge_pid(self) -> int:
        return int(json.loads((self.data / "edge" / "caddy.json").read_text())["pid"])

    def stop(self) -> None:
        """Stop the daemon, then what outlives it by design: the edge and the instances."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.kill(self.edge_pid(), signal.SIGTERM)
        for record in (self.data / "production").glob("*/*/logs/instance.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                os.killpg(int(json.loads(record.read_text())["pid"]), signal.SIGTERM)


def site_yaml(source: Path, generation: int, *, version: str = "latest", extra: str = "") -> str:
    return (
        f"source: {source}\nproduction:\n  state: running\n  generation: {generation}\n"
        f"  version: {version}\nhealth:\n  interval: 0.2\n  timeout: 60\nkeep: 3\n{extra}"
    )


def rollbacks(daemon: Daemon, project: str, source: Path, extra: str, count: int) -> dict[str, Any]:
    html = source / ("site" if "docker" in extra else "dist") / "index.html"
    versions = {}
    for generation, text in ((1, "alpha"), (2, "beta")):
        html.write_text(text)
        daemon.write(project, site_yaml(source, generation, extra=extra))
        versions[text] = daemon.wait(project, text)["hash"]
    port = daemon.status(project)["port"]
    answers, served = [], []
    target = "alpha"
    api = client()
    for _ in range(count):
        seen = threading.Event()
        ready = threading.Event()
        result: dict[str, float] = {}

        def poll(
            expect: str = target,
            ready: threading.Event = ready,
            seen: threading.Event = seen,
            result: dict[str, float] = result,
        ) -> None:
            with client() as http:
                ready.set()
                while not seen.is_set():
                    try:
                        if http.get(f"http://127.0.0.1:{port}/").text == expect:
                            result["served"] = time.perf_counter()
                            return
                    except httpx.HTTPError:
                        pass

        poller = threading.Thread(target=poll)
        poller.start()
        ready.wait(5)
        started = time.perf_counter()
        response = api.post(
            f"{daemon.api}/api/projects/{project}/rollback-production",
            json={"toHash": versions[target]},
            timeout=120,
        )
        answered = time.perf_counter()
        poller.join(60)
        seen.set()
        if response.status_code != 200 or "served" not in result:
            raise SystemExit(f"rollback of {project} failed: {response.text}")
        answers.append(answered - started)
        served.append(result["served"] - started)
        target = "beta" if target == "alpha" else "alpha"
        time.sleep(0.3)  # let the replaced instance drain
    api.close()
    return {"answer": answers, "served": served}


def client() -> httpx.Client:
    """A loopback client made before the clock starts (building a TLS context costs ~40 ms)."""
    return httpx.Client(timeout=120, verify=False, trust_env=False)


def load_cost(daemon: Daemon, root: Path, loads: int) -> dict[str, Any]:
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
    for index in range(loads):
        (daemon.desired / f"extra{index}.yaml").unlink()
    return {"loads": loads, "requests": count[0], "failed": len(failures)}


def wrk(url: str, seconds: int) -> float:
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds}s", url], capture_output=True, text=True, check=True
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("Requests/sec:"))
    return float(line.split()[1])


def throughput(daemon: Daemon, seconds: int) -> dict[str, float]:
    if shutil.which("wrk") is None:
        return {}
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
        for _ in range(3):  # interleaved, to share the machine's noise
            ours.append(wrk(f"http://127.0.0.1:{port}/", seconds))
            base.append(wrk(f"http://127.0.0.1:{plain_port}/", seconds))
    finally:
        plain.terminate()
        plain.wait(10)
    return {"edge": statistics.median(ours), "plain": statistics.median(base)}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def many_sites(root: Path, count: int, idle: int) -> dict[str, Any]:
    source = root / "many-site"
    (source / "dist").mkdir(parents=True)
    (source / "dist" / "index.html").write_text("one of many")
    desired = root / "many" / "desired"
    desired.mkdir(parents=True)
    for index in range(count):
        (desired / f"s{index:04d}.yaml").write_text(site_yaml(source, 1))
    started = time.monotonic()
    daemon = Daemon(root / "many", "10000-11999", "12000-13999")  # below the ephemeral range
    try:
        ports: dict[str, int] = {}
        deadline = time.monotonic() + 600
        while len(ports) < count and time.monotonic() < deadline:
            # read the state database directly: polling the API's listing of every project
            # would cost the daemon (same process) more than what is measured
            with contextlib.closing(sqlite3.connect(daemon.data / "state.db", timeout=30)) as db:
                ports = dict(
                    db.execute(
                        "SELECT id, productionPort FROM projects "
                        "WHERE productionStatus = 'running' AND productionPort IS NOT NULL"
                    ).fetchall()
                )
            time.sleep(0.5)
        all_serving = None
        with httpx.Client(timeout=5) as client:
            pending = set(ports.values())
            while pending and time.monotonic() < deadline:
                pending = {
                    port for port in pending
                    if client.get(f"http://127.0.0.1:{port}/").status_code != 200
                }  # fmt: skip
            all_serving = time.monotonic() - started
        edge, me = daemon.edge_pid(), daemon.proc.pid
        per_site = subprocess.run(
            ["pgrep", "-fc", "reconciler.static"], capture_output=True, text=True, check=False
        ).stdout.strip()
        time.sleep(5)  # let the first resync settle
        cpu = {pid: cpu_seconds(pid) for pid in (edge, me)}
        time.sleep(idle)
        idle_cpu = {pid: (cpu_seconds(pid) - cpu[pid]) / idle * 100 for pid in (edge, me)}
        return {
            "sites": count,
            "serving": len(ports),
            "all_serving_s": all_serving,
            "edge_rss_mb": rss_mb(edge),
            "daemon_rss_mb": rss_mb(me),
            "static_processes": int(per_site or 0),
            "edge_idle_cpu_pct": idle_cpu[edge],
            "daemon_idle_cpu_pct": idle_cpu[me],
        }
    finally:
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--rollbacks", type=int, default=10)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--idle", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.sites, args.rollbacks, args.loads, args.idle = 50, 3, 3, 5
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        daemon = Daemon(root / "main", "14000-14199", "14200-14399", "--drain", "0.2")
        try:
            static = root / "static"
            (static / "dist").mkdir(parents=True)
            results["rollback_static"] = rollbacks(daemon, "st", static, "", args.rollbacks)
            process = root / "process"
            (process / "dist").mkdir(parents=True)
            serve = "start:\n  command: exec python3 -m http.server $PORT --bind 127.0.0.1\n"
            results["rollback_process"] = rollbacks(daemon, "pr", process, serve, args.rollbacks)
            if BUSYBOX and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
                docker_src = root / "docker"
                (docker_src / "site").mkdir(parents=True)
                shutil.copy(BUSYBOX, docker_src / "busybox")
                (docker_src / "Dockerfile").write_text(
                    "FROM scratch\nCOPY busybox /bin/busybox\nCOPY site /app/dist\nEXPOSE 8080\n"
                    'ENTRYPOINT ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/app/dist"]\n'
                )
                results["rollback_docker"] = rollbacks(
                    daemon, "dk", docker_src, "runtime: docker\n", args.rollbacks
                )
            results["load_cost"] = load_cost(daemon, root, args.loads)
            results["throughput"] = throughput(daemon, 5 if args.quick else 10)
            quiet = Daemon(root / "quiet", "14400-14499", "14500-14599", "--access-logs", "off")
            try:
                quiet.write("st", site_yaml(static, 1))
                quiet.wait("st", "beta")
                results["throughput_no_access_logs"] = throughput(quiet, 5 if args.quick else 10)
            finally:
                quiet.stop()
        finally:
            daemon.stop()
            subprocess.run(["docker", "rm", "-f", *subprocess.run(
                ["docker", "ps", "-aq", "--filter", "label=reconciler.project=dk"],
                capture_output=True, text=True, check=False).stdout.split()],
                capture_output=True, check=False)  # fmt: skip
        results["many"] = many_sites(root, args.sites, args.idle)
    print("\nrollback (API call -> answer / -> first 200 with the target's content)")
    for kind in ("static", "process", "docker"):
        figures = results.get(f"rollback_{kind}")
        if figures:
            print(f"  {kind:8} answer  {fmt_ms(figures['answer'])}")
            print(f"  {kind:8} served  {fmt_ms(figures['served'])}")
    cost = results["load_cost"]
    print(
        f"\nconfig loads: {cost['loads']} loads, {cost['requests']} requests to an unrelated "
        f"site, {cost['failed']} failed"
    )
    for key, label in (("throughput", "access logs on"), ("throughput_no_access_logs", "off")):
        tp = results.get(key)
        if tp:
            print(
                f"static throughput ({label}): edge {tp['edge']:.0f} req/s, plain caddy "
                f"{tp['plain']:.0f} req/s, ratio {tp['edge'] / tp['plain']:.2f}"
            )
    many = results["many"]
    print(
        f"\n{many['sites']} static sites: all serving {many['all_serving_s']:.1f} s after "
        f"start; edge RSS {many['edge_rss_mb']:.0f} MB, daemon RSS {many['daemon_rss_mb']:.0f} "
        f"MB; {many['static_processes']} per-site processes; idle CPU edge "
        f"{many['edge_idle_cpu_pct']:.2f} %, daemon {many['daemon_idle_cpu_pct']:.2f} %"
    )
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / f"edge-{time.strftime('%Y-%m-%d')}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
