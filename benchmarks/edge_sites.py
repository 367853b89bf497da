"""The edge alone at many static sites (no daemon): the route files of SITES sites and the
one configuration loaded, the time until every site is served, the edge's RSS, descriptors
and idle CPU. What figure 5 (the daemon with its sites) does not separate out.

    python -m benchmarks.edge_sites [SITES]      # 10000 by default
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import cpu_seconds, rss_mb
from reconciler.core.kinds import EdgeMode, ServeMode
from reconciler.core.spec import ProjectId
from reconciler.edge.caddy import CaddyAdmin, CaddyProcess, Paths, default_binary
from reconciler.edge.config import EdgeSettings, Site
from reconciler.edge.manager import Edge
from reconciler.stores.state import StateDB

FIRST = 20000  # the range: FIRST .. FIRST + SITES - 1 (below Linux's ephemeral ports)


def run(root: Path, *, sites: int = 10000, idle: float = 20.0) -> dict[str, Any]:
    binary = default_binary()
    assert binary is not None
    paths = Paths(root / "edge")
    settings = EdgeSettings(
        admin_socket=paths.socket, storage=paths.storage, log_file=paths.log,
        access_log=paths.access_log, releases=root / "production", bind_host="127.0.0.1",
        control_port=FIRST - 1, routes=root / "edge" / "routes",
        port_range=(FIRST, FIRST + sites - 1),
    )  # fmt: skip
    for index in range(sites):
        project = root / "production" / f"s{index}"
        (project / "aaaaaaaa" / "dist").mkdir(parents=True)
        (project / "aaaaaaaa" / "dist" / "index.html").write_text(f"site {index}")
        (project / "current").symlink_to("aaaaaaaa")
    db = StateDB(root / "state.db")
    process = CaddyProcess(binary, paths)
    edge = Edge(settings, mode=EdgeMode.ON, admin=CaddyAdmin(paths.socket), process=process, db=db)
    try:
        started = time.monotonic()
        edge.seed([Site(ProjectId(f"s{i}"), FIRST + i, ServeMode.STATIC) for i in range(sites)])
        edge.start()
        with httpx.Client(timeout=5) as client:
            served = sum(
                client.get(f"http://127.0.0.1:{FIRST + i}/").text == f"site {i}"
                for i in range(sites)
            )
        serving_s = time.monotonic() - started
        pid = process.pid()
        assert pid is not None
        before = cpu_seconds(pid)
        time.sleep(idle)
        return {
            "sites": sites,
            "served": served,
            "all_serving_s": round(serving_s, 1),
            "loads": edge.loads,
            "edge_rss_mb": round(rss_mb(pid), 1),
            "descriptors": len(os.listdir(f"/proc/{pid}/fd")),
            "idle_cpu_pct": round((cpu_seconds(pid) - before) / idle * 100, 2),
        }
    finally:
        edge.stop()
        process.kill()
        db.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="edge-sites-", dir="/var/tmp") as tmp:
        count = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
        print(json.dumps(run(Path(tmp), sites=count), indent=1))
