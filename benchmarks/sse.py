"""Figure 7, the event stream: from an event being recorded (its ``createdAt`` in the state
database, ms) to a client connected to ``GET /api/projects/<id>/production-stream``
receiving it. The client resumes from the last event id, so it gets every later event of
the project; each deploy records building, starting and ready.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import Daemon, site_yaml, summary
from reconciler.core.timeutil import parse_iso


def run(root: Path, *, deploys: int = 15) -> dict[str, Any]:
    source = root / "site"
    (source / "dist").mkdir(parents=True)
    (source / "dist" / "index.html").write_text("generation 1")
    daemon = Daemon(root / "daemon", "16000-16099", "16100-16199", "--drain", "0")
    received: dict[int, float] = {}
    stop = threading.Event()
    try:
        daemon.write("sse", site_yaml(source, 1))
        daemon.wait("sse", "generation 1")
        with daemon.db() as db:
            last = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])

        def listen() -> None:
            seen = last  # as a browser's EventSource does: resume after the last id seen
            with httpx.Client(timeout=httpx.Timeout(5, read=None)) as http:
                while not stop.is_set():
                    url = f"{daemon.api}/api/projects/sse/production-stream?lastEventId={seen}"
                    try:
                        with http.stream("GET", url) as response:
                            for line in response.iter_lines():
                                if line.startswith("id: "):
                                    event_id = int(line[4:])
                                    received.setdefault(event_id, time.time())
                                    seen = max(seen, event_id)
                                if stop.is_set():
                                    return
                    except httpx.HTTPError:
                        time.sleep(0.05)  # the daemon is stopping, or a reconnect

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        time.sleep(0.5)
        for generation in range(2, deploys + 2):
            (source / "dist" / "index.html").write_text(f"generation {generation}")
            daemon.write("sse", site_yaml(source, generation))
            daemon.wait("sse", f"generation {generation}")
            time.sleep(0.3)
        time.sleep(1)
        stop.set()
        with daemon.db() as db:
            rows = db.execute(
                "SELECT id, createdAt FROM events WHERE project = 'sse' AND id > ?", (last,)
            ).fetchall()
    finally:
        daemon.stop()
    delays = [
        max(0.0, received[event_id] - parse_iso(created).timestamp())
        for event_id, created in rows
        if event_id in received
    ]
    if not delays:
        raise SystemExit("the stream delivered no event")
    return {"events": len(rows), "received": len(delays), "record_to_client": summary(delays)}
