"""Figure 9, git push to serving: the quickstart's static site (examples/hello-site) kept in a
bare repository on this host, followed (``production.follow: true``); each round commits a
changed page, and the clock runs from just before ``git push`` until the site's stable
address answers with the new page through the edge. ``git push`` alone is timed too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import REPO, Daemon, summary

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com",
}  # fmt: skip


def _git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True)


def run(root: Path, *, pushes: int = 10) -> dict[str, Any]:
    bare = root / "hello.git"
    work = root / "work"
    _git("init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    shutil.copytree(REPO / "examples" / "hello-site", work)
    _git("init", "--quiet", "--initial-branch=main", str(work))
    _git("add", "-A", cwd=work)
    _git("commit", "--quiet", "-m", "hello site", cwd=work)
    _git("push", "--quiet", str(bare), "HEAD:main", cwd=work)
    daemon = Daemon(root / "daemon", "16400-16499", "16500-16599", "--drain", "0")
    page = work / "dist" / "index.html"
    original = page.read_text()
    served: list[float] = []
    push_only: list[float] = []
    try:
        daemon.write(
            "hello",
            f"source:\n  git: {bare}\n  ref: main\n"
            "production:\n  state: running\n  follow: true\nhealth:\n  interval: 0.2\n",
        )
        status = daemon.wait("hello", "Hello")
        url = f"http://127.0.0.1:{status['port']}/"
        with httpx.Client(timeout=5, trust_env=False) as http:
            for n in range(1, pushes + 1):
                marker = f"push number {n}"
                page.write_text(original.replace("</body>", f"<p>{marker}</p></body>"))
                _git("commit", "--quiet", "-am", marker, cwd=work)
                start = time.monotonic()
                _git("push", "--quiet", str(bare), "HEAD:main", cwd=work)
                pushed = time.monotonic()
                deadline = start + 60
                while time.monotonic() < deadline:
                    try:
                        if marker in http.get(url).text:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.002)
                else:
                    raise SystemExit(f"push {n} was not served within 60 s")
                served.append(time.monotonic() - start)
                push_only.append(pushed - start)
                time.sleep(0.3)
    finally:
        daemon.stop()
    return {"served": summary(served), "push": summary(push_only), "pushes": pushes}
