"""Desired files cut short: real files (an app and a static site, ``production:`` first, as
operators write them) rewritten in place with only their first N lines, for every N, while
a request loop reads both sites through the edge; then written whole again. No request
fails, nothing is served that its file does not ask for (never the app's source), the status
says what is served, and each site is back as it was once its file is whole.
``make hostile`` cuts at every line (HOSTILE_FULL=1); ``make test`` at three per file.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from reconciler.core.kinds import EdgeMode
from tests.integration.harness import Env, environment, wait_for
from tests.integration.test_truthful import SERVER

FULL = os.environ.get("HOSTILE_FULL") == "1"

APP = """\
# The shop's API: a Python app behind the edge.
production:
  state: running
  version: latest
  generation: 1
source: {source}
runtime: process
build:
  command: mkdir -p out && cp server.py out/
  output: out
start:
  command: exec python3 server.py
env:
  GREETING: hello
health:
  path: /
  timeout: 20
  interval: 0.2
keep: 3
"""
DOCS = """\
# The docs site: static files built from the source.
production:
  state: running
  version: latest
  generation: 1
source: {source}
runtime: process
build:
  command: mkdir -p public && cp index.html public/
  output: public
health:
  path: /
  timeout: 20
keep: 2
"""


@dataclass
class Loop:
    """GETs both sites' / and the app's /server.py every 20 ms; keeps what went wrong."""

    urls: dict[str, str]
    allowed: dict[str, set[str]]
    requests: int = 0
    phase: str = ""
    wrong: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.done.is_set():
                for name, url in self.urls.items():
                    try:
                        answer = client.get(url)
                        body, status = answer.text, answer.status_code
                    except httpx.HTTPError as exc:
                        body, status = type(exc).__name__, 0
                    self.requests += 1
                    if status != 200 or body not in self.allowed[name]:
                        self.wrong.append(f"{self.phase}: {name}: {status} {body[:40]!r}")
                time.sleep(0.02)


@contextlib.contextmanager
def looping(loop: Loop) -> Iterator[Loop]:
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        yield loop
    finally:
        loop.done.set()
        thread.join(10)


def _cuts(text: str) -> list[int]:
    """Where a file is cut: after every line (HOSTILE_FULL), or at three places: nothing
    left, just after ``build.output`` (a dynamic site loses its start), one line short."""
    lines = text.count("\n")
    if FULL:
        return list(range(lines))
    output = text.split("\n").index(next(x for x in text.split("\n") if "output:" in x)) + 1
    return [0, output, lines - 1]


def _cut_in_place(path: Path, text: str, lines: int) -> None:
    """As an editor or a copy that died midway leaves it: the same file, truncated."""
    with open(path, "r+", encoding="utf-8") as fh:
        fh.truncate(0)
        fh.write("".join(text.splitlines(keepends=True)[:lines]))


def _agrees(env: Env, project: str, expected: set[str]) -> str | None:
    """A problem when the status does not say what is served."""
    row = env.row(project)
    if row is None or row.productionStatus not in ("running", "failed"):
        return f"{project}: status {row.productionStatus if row else None}"
    if row.productionPort is None or row.productionHash is None:
        return f"{project}: no address in a {row.productionStatus} status"
    try:
        body = httpx.get(f"http://127.0.0.1:{row.productionPort}/", timeout=5).text
    except httpx.HTTPError as exc:
        return f"{project}: {type(exc).__name__}"
    index = env.data / "production" / project / row.productionHash / "dist" / "index.html"
    if index.is_file() and index.read_text() != body:
        return f"{project}: serves {body!r}, its status names {row.productionHash}"
    if body not in expected:
        return f"{project}: serves {body!r}"
    if row.productionStatus == "failed" and not row.productionError:
        return f"{project}: failed, and not said why"
    return None


@pytest.mark.timeout(900)
def test_desired_files_cut_at_every_line(tmp_path: Path) -> None:
    app, docs = tmp_path / "app", tmp_path / "docs"
    app.mkdir()
    (app / "server.py").write_text(SERVER)
    docs.mkdir()
    (docs / "index.html").write_text("the docs")
    texts = {"app": APP.format(source=app), "docs": DOCS.format(source=docs)}
    with environment(tmp_path / "run", edge=EdgeMode.ON) as env:
        env.start()
        for name, text in texts.items():
            env.write(name, text)
        first = {name: env.wait_serving(name, "") for name in texts}
        wait_for(lambda: _agrees(env, "app", {"hello"}) is None, 30, "the app serves")
        base = {name: f"http://127.0.0.1:{row.productionPort}" for name, row in first.items()}
        loop = Loop(
            {"app": base["app"] + "/", "source": base["app"] + "/server.py",
             "docs": base["docs"] + "/"},
            {"app": {"hello", "unset"}, "source": {"hello", "unset"}, "docs": {"the docs"}},
        )  # fmt: skip
        problems: list[str] = []
        cuts = 0
        with looping(loop):
            for name, text in texts.items():
                path = env.desired / f"{name}.yaml"
                for lines in _cuts(text):
                    loop.phase = f"{name} cut at line {lines}"
                    _cut_in_place(path, text, lines)
                    time.sleep(2.5)  # past the settle time a shrunk file waits
                    env.resync_and_wait(name)
                    problem = _agrees(env, name, loop.allowed[name])
                    if problem:
                        problems.append(f"cut at line {lines}: {problem}")
                    loop.phase = f"{name} whole after a cut at line {lines}"
                    _cut_in_place(path, text, text.count("\n"))  # whole again
                    row = env.wait_serving(name, "", timeout=60)
                    if row.productionHash != first[name].productionHash:
                        problems.append(f"cut at line {lines}: {name} came back as another version")
                    cuts += 1
            wait_for(lambda: _agrees(env, "app", {"hello"}) is None, 30, "the app as it was")
        print(f"\nhostile files: {cuts} cuts, {loop.requests} requests, "
              f"{len(loop.wrong)} wrong answers, {len(problems)} disagreements")  # fmt: skip
        assert loop.wrong == [], "\n".join(loop.wrong)
        assert problems == []
