"""Figure 4, ready detection: how long after an app first accepts a connection the deploy
reports it ready (the ``production.waitReady`` job's end, in ms).

The app (process runtime) sleeps a different time on each deploy before it listens, then
writes the wall-clock time it started listening to a file the benchmark reads.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.harness import PYTHON, Daemon, summary
from reconciler.core.timeutil import parse_iso

APP = """\
import http.server, os, time
time.sleep(float(os.environ["DELAY"]))
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])),
                                         http.server.SimpleHTTPRequestHandler)
with open(os.environ["MARK"], "w") as fh:  # bound and listening: connections are accepted
    fh.write(repr(time.time()))
server.serve_forever()
"""


def _yaml(source: Path, generation: int, delay: float, mark: Path) -> str:
    return (
        f"source: {source}\nproduction:\n  state: running\n  generation: {generation}\n"
        f"start:\n  command: exec {PYTHON} app.py\n"
        f"env:\n  DELAY: '{delay}'\n  MARK: {mark}\n"
        "health:\n  interval: 2\n  timeout: 60\nkeep: 3\n"
    )


def run(root: Path, *, deploys: int = 12) -> dict[str, Any]:
    source = root / "app"
    (source / "dist").mkdir(parents=True)
    (source / "dist" / "app.py").write_text(APP)
    daemon = Daemon(root / "daemon", "15600-15699", "15700-15799", "--drain", "0")
    samples = []
    try:
        for generation in range(1, deploys + 1):
            (source / "dist" / "index.html").write_text(f"generation {generation}")
            mark = root / f"listening-{generation}"
            delay = 0.2 + (generation % 6) * 0.37  # 0.2 .. 2.05 s: every phase of the probing
            daemon.write("app", _yaml(source, generation, delay, mark))
            deadline = time.monotonic() + 120
            finished = None
            while finished is None and time.monotonic() < deadline:
                with daemon.db() as db:
                    row = db.execute(
                        "SELECT j.finishedAt, j.state FROM jobs j JOIN deployments d ON "
                        "j.deployment = d.id WHERE d.project = 'app' AND d.generation = ? AND "
                        "j.type = 'production.waitReady' AND j.finishedAt IS NOT NULL",
                        (generation,),
                    ).fetchone()
                if row:
                    if row[1] != "succeeded":
                        raise SystemExit(f"generation {generation} did not get ready: {row}")
                    finished = parse_iso(row[0]).timestamp()
                time.sleep(0.02)
            if finished is None:
                raise SystemExit(f"generation {generation}: no readiness within 120 s")
            listening = float(mark.read_text())
            samples.append(max(0.0, finished - listening))
            daemon.wait("app", f"generation {generation}")
    finally:
        daemon.stop()
    return {"process": summary(samples)}
