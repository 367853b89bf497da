"""The dashboard's samples from the edge's access log: counted per site as the log grows, a
row only when a site's figures moved, and the quiet stretch closed with a row of its last
figures so that the charts' rates stay exact."""

from __future__ import annotations

import json
import time
from pathlib import Path

from reconciler.daemon.samples import Sampler
from reconciler.readside.timeline import series
from reconciler.stores.state import StateDB


def line(port: int, status: int, duration: float, *, header: str = "") -> str:
    request = {"host": f"127.0.0.1:{port}", "headers": {"X-Note": [header]}}
    return json.dumps(
        {"logger": "http.log.access", "request": request, "duration": duration,
         "status": status, "port": str(port)},
        separators=(",", ":"),  # as Caddy writes it
    )  # fmt: skip


def test_counts_come_from_the_log_and_idle_sites_write_nothing(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    with db.write() as conn:
        for project, port in (("www", 3001), ("api", 3002)):
            conn.execute(
                "INSERT INTO sites (project, publicPort, reservedAt) VALUES (?, ?, 'x')",
                (project, port),
            )
    log = tmp_path / "access.log"
    log.write_text(line(3001, 200, 0.5) + "\n")  # before the sampler: not news
    now = [time.time() - 3600]
    sampler = Sampler(db, None, clock=lambda: now[0], access_log=log)
    assert sampler.tick() == 0, "nothing asked since it started"

    with log.open("a") as out:
        out.write(line(3001, 200, 0.25) + "\n")
        out.write(line(3001, 502, 0.75) + "\n")
        # a header that mimics the fields is escaped inside its string: not counted as them
        out.write(line(3002, 200, 0.5, header='","status":500,"duration":9') + "\n")
        out.write(line(3999, 200, 0.5) + "\n")  # a port no site has
    sampler.tally()
    now[0] += 60
    assert sampler.tick() == 2
    assert sampler.traffic is not None and b"p3999" not in sampler.traffic.tallies()
    (www,) = db.samples("www", since=0)
    assert (www.requests, www.errors, www.seconds) == (2, 1, 1.0)
    (api,) = db.samples("api", since=0)
    assert (api.requests, api.errors, api.seconds) == (1, 0, 0.5)

    for _ in range(3):  # three quiet minutes: no rows
        now[0] += 60
        assert sampler.tick() == 0
    with log.open("a") as out:
        out.write(line(3001, 200, 0.1) + "\n")
    now[0] += 60
    assert sampler.tick() == 2, "the last quiet minute, then the new figures"
    rows = db.samples("www", since=0)
    assert [r.requests for r in rows] == [2, 2, 3]
    rates = series(db, "www", window=1e9).requestsPerSecond
    assert rates == [0.0, round(1 / 60, 3)], "zero over the quiet stretch, then one a minute"
    sampler.close()
