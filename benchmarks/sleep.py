"""Figure 13, sleeping sites (idle dynamic sites stopped, woken by their first request).

1. Wake: a Flask app on gunicorn (its guide's shape, with ``sleep.after: 10s``) is let fall
   asleep, then asked once: the time from that request to its first byte, over WAKES wakes.
2. Many: SITES small dynamic sites (a Python app each) with ``sleep.after: 10s``, then ROUNDS
   rounds of AWAKE sites under a request loop each (the next round takes the next AWAKE):
   every request answered or not, each site's first answer (a wake), the daemon's and the
   edge's RSS, the processes left for sleeping sites (none expected).

    python -m benchmarks.sleep [WAKES] [SITES] [AWAKE] [ROUNDS]
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import PYTHON, Daemon, rss_mb, summary

FLASK_APP = (
    'from flask import Flask\n\napp = Flask(__name__)\n\n\n@app.route("/")\n'
    'def hello():\n    return "<p>Hello from a sleeper</p>"\n'
)
SMALL_APP = (
    "import http.server, os\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.send_header('Content-Length', '5')\n"
    "        self.end_headers(); self.wfile.write(b'awake')\n"
    "    def log_message(self, *args): pass\n"
    "http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H)"
    ".serve_forever()\n"
)
AFTER = 10  # sleep.after, seconds: the least a desired file may ask for


def _status(daemon: Daemon, project: str) -> str:
    return str(daemon.status(project).get("status"))


def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"sleep: timed out waiting for {what}")
        time.sleep(0.1)


def wakes(root: Path, count: int) -> dict[str, Any]:
    app = root / "flask"
    app.mkdir(parents=True)
    (app / "app.py").write_text(FLASK_APP)
    (app / "requirements.txt").write_text("flask\ngunicorn\n")
    (app / "Procfile").write_text("web: gunicorn app:app\n")  # the build and start are found
    daemon = Daemon(root / "w", "26200-26219", "26220-26259")
    try:
        daemon.write("flask", (
            f"source: {app}\nproduction:\n  state: running\n  generation: 1\n"
            f"health:\n  timeout: 300\nsleep:\n  after: {AFTER}s\n"
        ))  # fmt: skip
        port = daemon.wait("flask", "sleeper", timeout=600)["port"]
        seconds = []
        for _ in range(count):
            _until(lambda: _status(daemon, "flask") == "sleeping", 120, "the app to sleep")
            started = time.monotonic()
            with httpx.stream("GET", f"http://127.0.0.1:{port}/", timeout=60) as response:
                next(response.iter_raw(1))
                seconds.append(time.monotonic() - started)
                assert response.status_code == 200, response.status_code
            print(f"sleep: wake {len(seconds)}: {seconds[-1] * 1000:.0f} ms", flush=True)
        return summary(seconds, "ms")
    finally:
        daemon.stop()


def many(root: Path, sites: int, awake: int, rounds: int, seconds: float) -> dict[str, Any]:
    app = root / "small"
    app.mkdir(parents=True)
    (app / "app.py").write_text(SMALL_APP)
    daemon = Daemon(root / "m", f"14000-{14000 + sites + 99}",
                    f"{16000}-{16000 + 2 * sites + 199}", "--drain", "0.2")  # fmt: skip
    names = [f"d{i:04d}" for i in range(sites)]
    try:
        started = time.monotonic()
        for name in names:
            daemon.write(name, (
                f"source: {app}\nproduction:\n  state: running\n  generation: 1\n"
                f"build:\n  output: .\nstart:\n  command: exec {PYTHON} app.py\n"
                f"sleep:\n  after: {AFTER}s\n"
            ))  # fmt: skip
        ports = _ports(daemon, names, 1800)
        deployed = time.monotonic() - started
        print(f"sleep: {sites} dynamic sites deployed in {deployed:.0f} s", flush=True)
        _until(lambda: _count(daemon, "sleeping") == sites, 600, "every site asleep")
        firsts: list[float] = []
        answered, failed = 0, []
        for index in range(rounds):
            chosen = names[index * awake % sites :][:awake]
            got = _round([ports[n] for n in chosen], seconds)
            firsts += got["firsts"]
            answered += got["answered"]
            failed += got["failed"]
            print(f"sleep: round {index + 1}: {got['answered']} answered, "
                  f"{len(got['failed'])} failed", flush=True)  # fmt: skip
        daemon_rss, edge_rss = rss_mb(daemon.proc.pid), rss_mb(daemon.edge_pid())
        _until(lambda: _count(daemon, "sleeping") == sites, 120, "every site asleep again")
        deadline = time.monotonic() + 30  # the last ones drain and stop in the background
        while _site_processes(root / "m") and time.monotonic() < deadline:
            time.sleep(0.5)
        return {
            "sites": sites,
            "awake_at_once": awake,
            "rounds": rounds,
            "first_deploy_s": round(deployed, 1),
            "requests": answered + len(failed),
            "failed": len(failed),
            "failures": failed[:5],
            "first_answer": summary(firsts, "ms"),
            "daemon_rss_mb": round(daemon_rss, 1),
            "edge_rss_mb": round(edge_rss, 1),
            "processes_of_sleeping_sites": _site_processes(root / "m"),
        }
    finally:
        daemon.stop()


def _ports(daemon: Daemon, names: list[str], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with daemon.db() as db:
            rows = db.execute(
                "SELECT id, productionPort FROM projects WHERE productionStatus IN "
                "('running', 'sleeping') AND productionPort IS NOT NULL"
            ).fetchall()
        if len(rows) == len(names):
            return {str(name): int(port) for name, port in rows}
        time.sleep(1)
    raise SystemExit("sleep: not every site was deployed")


def _count(daemon: Daemon, status: str) -> int:
    with daemon.db() as db:
        row = db.execute("SELECT count(*) FROM projects WHERE productionStatus = ?", (status,))
        return int(row.fetchone()[0])


def _round(ports: list[int], seconds: float) -> dict[str, Any]:
    """A request loop per site for ``seconds``: its first answer's time, every failure."""
    firsts: list[float] = []
    failed: list[str] = []
    answered = [0]
    lock = threading.Lock()

    def loop(port: int) -> None:
        deadline = time.monotonic() + seconds
        first = True
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    got = client.get(f"http://127.0.0.1:{port}/")
                    ok = got.status_code == 200 and got.text == "awake"
                except httpx.HTTPError as exc:
                    ok, got = False, exc  # type: ignore[assignment]
                with lock:
                    if ok:
                        answered[0] += 1
                        if first:
                            firsts.append(time.monotonic() - sent)
                    else:
                        failed.append(f"{port}: {got!r}"[:160])
                first = False
                time.sleep(0.05)

    threads = [threading.Thread(target=loop, args=(port,)) for port in ports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"firsts": firsts, "answered": answered[0], "failed": failed}


def _site_processes(root: Path) -> int:
    """Processes whose command line names a release of this run (sleeping: none)."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = str((entry / "cwd").resolve())
        except OSError:
            continue
        if "app.py" in cmdline and str(root) in cwd:
            count += 1
    return count


def run(
    root: Path, *, wakes_count: int = 10, sites: int = 1000, awake: int = 50, rounds: int = 4,
    seconds: float = 15.0, together: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Both parts, one after the other; ``together`` (the smoke run, whose figures are not
    measurements) runs them at once, so their waits for sleep overlap."""
    if not together:
        return {
            "wake": wakes(root, wakes_count),
            "many": many(root, sites, awake, rounds, seconds),
        }
    with ThreadPoolExecutor(2) as pool:
        wake = pool.submit(wakes, root, wakes_count)
        lots = pool.submit(many, root, sites, awake, rounds, seconds)
        return {"wake": wake.result(), "many": lots.result()}


if __name__ == "__main__":
    values = [int(a) for a in sys.argv[1:5]]
    names = ("wakes_count", "sites", "awake", "rounds")
    with tempfile.TemporaryDirectory(prefix="sleep-") as tmp:
        print(json.dumps(run(Path(tmp), **dict(zip(names, values, strict=False))), indent=1))
