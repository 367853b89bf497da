"""Figure 11, upgrading the edge in place: a Caddy running the configuration earlier versions
loaded (a server per site, on its own port) is taken over by the edge manager, which loads
the one configuration that names no site, while keep-alive and fresh-connection loops run
against the sites; failed requests are counted.

    python -m benchmarks.upgrade [SITES]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import Loops
from reconciler.core.kinds import EdgeMode, ServeMode
from reconciler.core.spec import ProjectId
from reconciler.edge.caddy import CaddyAdmin, CaddyProcess, Paths, default_binary
from reconciler.edge.config import EdgeSettings, Site, bootstrap_config
from reconciler.edge.manager import Edge
from reconciler.stores.state import StateDB


def earlier_config(settings: EdgeSettings, ports: dict[str, int]) -> dict[str, Any]:
    """What earlier versions loaded: a server per static site on its port."""
    servers = {
        f"site-{name}": {
            "listen": [f"127.0.0.1:{port}"],
            "automatic_https": {"disable": True},
            "routes": [{"handle": [{"handler": "file_server",
                                    "root": str(settings.releases / name / "current" / "dist")}]}],
        }
        for name, port in ports.items()
    }  # fmt: skip
    config = bootstrap_config(settings)
    config["apps"] = {"http": {"servers": servers}}
    return config


def run(root: Path, *, sites: int = 5, seconds: float = 3.0) -> dict[str, Any]:
    binary = default_binary()
    assert binary is not None
    paths = Paths(root / "edge")
    first = 18000
    settings = EdgeSettings(
        admin_socket=paths.socket, storage=paths.storage, log_file=paths.log,
        access_log=paths.access_log, releases=root / "production", bind_host="127.0.0.1",
        control_port=17999, routes=root / "edge" / "routes", port_range=(first, first + 99),
    )  # fmt: skip
    ports = {f"s{i}": first + i for i in range(sites)}
    for name in ports:
        dist = root / "production" / name / "aaaaaaaa" / "dist"
        dist.mkdir(parents=True)
        (dist / "index.html").write_text(name)
        (root / "production" / name / "current").symlink_to("aaaaaaaa")
    process, admin = CaddyProcess(binary, paths), CaddyAdmin(paths.socket)
    process.write_bootstrap(bootstrap_config(settings))
    process.start(admin)
    admin.load(earlier_config(settings, ports))
    db = StateDB(root / "state.db")
    edge = Edge(settings, mode=EdgeMode.ON, admin=admin, process=process, db=db)
    try:
        with Loops(list(ports.values())) as loops:
            time.sleep(seconds / 2)
            edge.seed([Site(ProjectId(n), p, ServeMode.STATIC) for n, p in ports.items()])
            edge.start()  # adopts the running Caddy, loads the one configuration
            time.sleep(seconds / 2)
    finally:
        edge.stop()
        process.kill()
        db.close()
    return {"sites": sites, **loops.figures(), "loads": edge.loads}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="upgrade-") as tmp:
        count = int(sys.argv[1]) if len(sys.argv) > 1 else 5
        print(json.dumps(run(Path(tmp), sites=count), indent=1))
