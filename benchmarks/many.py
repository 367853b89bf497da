"""Figure 12, many static sites on one daemon (10,000 in ``make bench``).

The first deploy of every site; then a cold start, as after a reboot (the daemon stopped, the
edge killed, both started again by ``reconciler run``): the time to every site serving again
on its stable URL, and to the first pass over every project; daemon and edge RSS; the idle
CPU of both over IDLE seconds once the first pass is done.

    python -m benchmarks.many [SITES] [IDLE]
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import Daemon, cpu_seconds, kill_edge, rss_mb, site_yaml
from benchmarks.scale import _resync, _serving


def _start(root: Path, sites: int) -> Daemon:
    span = max(2000, sites + 100)
    public, internal = f"10000-{9999 + span}", f"{10000 + span}-{10000 + span + 999}"
    return Daemon(root, public, internal, "--drain", "0", wait_ready=False)


def _first_pass(daemon: Daemon, before: int, timeout: float = 900) -> float:
    """Seconds from the daemon's start to its first pass over every project (logged; the
    log holds ``before`` such lines from earlier daemons)."""
    deadline = time.monotonic() + timeout
    while len(daemon.log_lines("full resync:")) <= before:
        if time.monotonic() > deadline:
            raise SystemExit("the first pass over every project did not end")
        time.sleep(0.5)
    return time.monotonic() - daemon.started


def run(root: Path, *, sites: int = 10000, idle: float = 60.0) -> dict[str, Any]:
    source = root / "static-src"
    (source / "dist").mkdir(parents=True)
    (source / "dist" / "index.html").write_text("one of many")
    (root / "many" / "desired").mkdir(parents=True)
    for index in range(sites):
        (root / "many" / "desired" / f"s{index:05d}.yaml").write_text(site_yaml(source, 1))
    daemon = _start(root / "many", sites)
    try:
        daemon.wait_api()
        ports, last = _serving(daemon, sites, time.monotonic() + 1800)
        first, first_s = len(ports), last - daemon.started
        daemon.proc.send_signal(signal.SIGTERM)  # the sites keep serving ...
        daemon.proc.wait(120)
        kill_edge(daemon)  # ... until the edge goes too: a reboot
        passes = len(daemon.log_lines("full resync:"))
        daemon.log.close()
        daemon = _start(root / "many", sites)
        daemon.wait_api()
        ports, last = _serving(daemon, sites, time.monotonic() + 900)
        serving, serving_s = len(ports), last - daemon.started
        passed_s = _first_pass(daemon, passes)
        me, edge = daemon.proc.pid, daemon.edge_pid()
        time.sleep(5)  # the pass's last writes settle
        before = {pid: cpu_seconds(pid) for pid in (me, edge)}
        time.sleep(idle)
        cpu = {pid: round((cpu_seconds(pid) - before[pid]) / idle * 100, 2) for pid in before}
        reloads = [_resync(daemon)["seconds"] for _ in range(3)]
        return {
            "sites": sites,
            "first_deploy": {"serving": first, "seconds": round(first_s, 1)},
            "cold_start": {
                "serving": serving,
                "all_serving_s": round(serving_s, 1),
                "first_pass_s": round(passed_s, 1),
            },
            "daemon_rss_mb": round(rss_mb(me), 1),
            "edge_rss_mb": round(rss_mb(edge), 1),
            "idle_cpu_pct": {"daemon": cpu[me], "edge": cpu[edge], "seconds": idle},
            "processes_per_site": 0 if _no_site_processes(me, edge) else "some",
            "reload_s": sorted(reloads),
        }
    finally:
        daemon.stop()


def _no_site_processes(*ours: int) -> bool:
    """Nothing runs for the static sites: no process beyond the daemon's own and the edge."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "many/data/production" in cmdline:
            return False
    return True


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    with tempfile.TemporaryDirectory(prefix="many-") as tmp:
        print(json.dumps(run(Path(tmp), sites=count, idle=seconds), indent=1))
