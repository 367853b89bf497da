"""Figure 3, rollback: the API's rollback call to its answer, and to the first 200 carrying the
target's content on the stable URL, for a static site (served by the edge), a process site
(within its rollback window: the replaced instance still runs, and after it, with the window
off: the instance starts again) and (when an engine answers) a Docker site. Two versions,
rolled back and forth.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import BUSYBOX, PYTHON, Daemon, client, docker_ok, site_yaml, summary

# the interpreter by its path: a version manager's `python3` shim on PATH (pyenv's runs a
# dozen bash scripts) would add 100+ ms to every start and measure the shim, not the rollback
PROCESS = f"start:\n  command: exec {PYTHON} -m http.server $PORT --bind 127.0.0.1\n"
POLL_GAP = 0.002  # the poller's pause between requests: it must not take a core of two
DOCKERFILE = (
    "FROM scratch\nCOPY busybox /bin/busybox\nCOPY site /app/dist\nEXPOSE 8080\n"
    'ENTRYPOINT ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/app/dist"]\n'
)


def _rollbacks(
    daemon: Daemon, project: str, source: Path, extra: str, count: int
) -> dict[str, Any]:
    html = source / ("site" if "docker" in extra else "dist") / "index.html"
    versions = {}
    for generation, text in ((1, "alpha"), (2, "beta")):
        html.write_text(text)
        daemon.write(project, site_yaml(source, generation, extra=extra))
        versions[text] = daemon.wait(project, text, timeout=300)["hash"]
    port = daemon.status(project)["port"]
    answers, served = [], []
    target = "alpha"
    api = client()
    for _ in range(count):
        seen = threading.Event()
        ready = threading.Event()
        result: dict[str, float] = {}

        def poll(expect: str = target, ready: threading.Event = ready,
                 seen: threading.Event = seen, result: dict[str, float] = result) -> None:  # fmt: skip
            with client() as http:
                ready.set()
                while not seen.is_set():
                    try:
                        if http.get(f"http://127.0.0.1:{port}/").text == expect:
                            result["served"] = time.perf_counter()
                            return
                    except Exception:  # between two instances
                        pass
                    time.sleep(POLL_GAP)

        poller = threading.Thread(target=poll)
        poller.start()
        ready.wait(5)
        started = time.perf_counter()
        response = api.post(
            f"{daemon.api}/api/projects/{project}/rollback-production",
            json={"toHash": versions[target]},
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
    return {"answer": summary(answers), "served": summary(served)}


def run(root: Path, *, count: int = 20) -> dict[str, Any]:
    results: dict[str, Any] = {}
    daemon = Daemon(root / "daemon", "15800-15899", "15900-15999", "--drain", "0.2")
    try:
        static = root / "static"
        (static / "dist").mkdir(parents=True)
        results["static"] = _rollbacks(daemon, "st", static, "", count)
        process = root / "process"
        (process / "dist").mkdir(parents=True)
        results["process"] = _rollbacks(daemon, "pr", process, PROCESS, count)
        cold = root / "process-cold"
        (cold / "dist").mkdir(parents=True)
        no_window = PROCESS + "rollback: {window: off}\n"
        results["process_after_window"] = _rollbacks(daemon, "pc", cold, no_window, count)
        if BUSYBOX and docker_ok():
            docker_src = root / "docker"
            (docker_src / "site").mkdir(parents=True)
            shutil.copy(BUSYBOX, docker_src / "busybox")
            (docker_src / "Dockerfile").write_text(DOCKERFILE)
            daemon.docker_projects.append("dk")
            results["docker"] = _rollbacks(daemon, "dk", docker_src, "runtime: docker\n", count)
        else:
            results["docker"] = {"skipped": "no Docker engine or no static busybox"}
    finally:
        daemon.stop()
    return results
