"""A health path that keeps answering 4xx is a wrong path, told after a short grace, not a
start that waits out the whole health timeout."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.core.errors import StartFailed
from reconciler.core.spec import Health, ProjectId, ProjectSpec
from reconciler.runtimes.base import WRONG_PATH_GRACE, WRONG_PORT_GRACE, Clock, wait_ready
from reconciler.runtimes.process.runtime import ProcessRuntime
from reconciler.stores.releases import ReleaseStore
from tests.conftest import PYTHON, free_port


class App(http.server.BaseHTTPRequestHandler):
    """Answers 404 on every path until ``ready`` is set, then 200 on /up."""

    ready = threading.Event()

    def do_GET(self) -> None:
        ok = self.ready.is_set() and self.path == "/up"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def app() -> Iterator[tuple[int, threading.Event]]:
    ready = threading.Event()
    handler = type("Handler", (App,), {"ready": ready})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], ready
    server.shutdown()
    server.server_close()


def fake_clock(on_sleep: object = None) -> tuple[Clock, list[float]]:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
        if callable(on_sleep):
            on_sleep(now[0])

    return Clock(monotonic=lambda: now[0], sleep=sleep), now


def test_a_path_answering_404_fails_after_the_grace_naming_health_path(
    app: tuple[int, threading.Event],
) -> None:
    port, _ready = app
    clock, now = fake_clock()
    with pytest.raises(StartFailed) as info:
        wait_ready(f"http://127.0.0.1:{port}/helth", Health(path="/helth", timeout=300),
                   alive=lambda: True, why_dead=str, clock=clock)  # fmt: skip
    message = str(info.value)
    assert "answered HTTP 404 for 10 seconds (last: HTTP 404)" in message
    assert "is health.path right? It is '/helth'" in message
    assert WRONG_PATH_GRACE <= now[0] < WRONG_PATH_GRACE + 1, "not the 300 s timeout"


def test_an_app_whose_path_answers_404_while_it_starts_is_waited_for(
    app: tuple[int, threading.Event],
) -> None:
    port, ready = app
    clock, _now = fake_clock(lambda t: ready.set() if t > WRONG_PATH_GRACE - 2 else None)
    wait_ready(f"http://127.0.0.1:{port}/up", Health(path="/up", timeout=300),
               alive=lambda: True, why_dead=str, clock=clock)  # fmt: skip


def test_an_app_that_ignores_its_port_is_told_which_port_it_listens_on(tmp_path: Path) -> None:
    """A start command that listens on a port of its own instead of $PORT fails within
    seconds, naming both ports, instead of waiting out the health timeout."""
    store = ReleaseStore(tmp_path / "production")
    staging = store.begin(ProjectId("app"))
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "index.html").write_text("hi")
    release = store.commit(staging, dist=tmp_path / "dist")
    own = free_port()
    spec = ProjectSpec.model_validate(
        {"source": "x", "start": {"command": f"exec {PYTHON} -m http.server {own} --bind 127.0.0.1"},
         "health": {"timeout": 120}}
    )  # fmt: skip
    runtime = ProcessRuntime(store)
    port = free_port()
    instance = runtime.start(release, spec, port=port, config="c0ffee00")
    started = time.monotonic()
    try:
        with pytest.raises(StartFailed) as info:
            wait_ready(f"http://127.0.0.1:{port}/", spec.health, alive=lambda: True,
                       why_dead=str, wrong_port=lambda: runtime.wrong_port(instance))  # fmt: skip
    finally:
        runtime.stop(instance, timeout=2)
    assert f"the app listens on port {own} but not on {port}, the port in its $PORT" in str(
        info.value
    )
    assert time.monotonic() - started < WRONG_PORT_GRACE + 10, "not the 120 s timeout"
