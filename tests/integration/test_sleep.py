"""Idle dynamic sites sleep and wake on their first request, through a real Caddy and real
processes: a wake under a request loop fails no request; many sites sleep at once and wake
together; the daemon's own health polling keeps no site awake; a wake that fails is a 503
with Retry-After, not a hang."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reconciler.api.app import create_app
from reconciler.core.kinds import EdgeMode
from tests.integration.harness import Env, desired_yaml, environment, wait_for

pytestmark = pytest.mark.timeout(240)

APP = """
import http.server, os, sys
if os.path.exists(os.path.join(os.path.dirname(__file__), "broken")):
    sys.exit("this version cannot start any more")
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = f"{os.environ['WORD']} from {os.getpid()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with environment(tmp_path, edge=EdgeMode.ON, extra_config={"wake_timeout": 15}) as e:
        e.start()
        yield e


def app_yaml(root: Path, word: str, after: str = "10s") -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "app.py").write_text(APP)
    extra = (
        "build:\n  command: mkdir -p dist && cp app.py dist/\n"
        "start:\n  command: exec python3 app.py\n"
        f"env:\n  WORD: {word}\nsleep:\n  after: {after}\n"
    )
    return desired_yaml(root, extra=extra)


def answer(port: int, method: str = "GET") -> httpx.Response:
    return httpx.request(method, f"http://127.0.0.1:{port}/", timeout=20, content=b"x" * 100)


def test_an_idle_site_sleeps_and_its_requests_wake_it(env: Env, tmp_path: Path) -> None:
    env.write("web", app_yaml(tmp_path / "web", "hello"))
    row = env.wait_serving("web", "hello", timeout=60)
    port, first_pid = row.productionPort, answer(row.productionPort).text.split()[-1]
    assert port is not None
    for _ in range(13):  # a request a second for longer than sleep.after keeps it awake
        assert answer(port).status_code == 200
        time.sleep(1)
    assert env.status("web") == "running"
    # the daemon polls its health all along (every 0.5 s here): that keeps nothing awake
    slept = env.wait_status("web", "sleeping", timeout=40)
    scraped = create_app(env.config()).test_client().get("/metrics").get_data(as_text=True)
    assert 'reconciler_projects{status="sleeping"} 1.0' in scraped
    assert slept.productionPort == port and slept.productionHash == row.productionHash
    wait_for(lambda: not env.instances("web"), 10, "its process gone")
    wait_for(lambda: not env.db.instances("web"), 10, "no instance recorded while it sleeps")

    failures: list[str] = []
    answered: list[str] = []
    stop = threading.Event()

    def loop(method: str) -> None:
        while not stop.is_set():
            try:
                got = answer(port, method)
                if got.status_code != 200:
                    failures.append(f"{method} {got.status_code} {got.text[-200:]}")
                else:
                    answered.append(got.text)
            except httpx.HTTPError as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=loop, args=(m,)) for m in ("GET", "GET", "POST", "GET")]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    wait_for(lambda: len(answered) >= 50, 30, "the woken site answering")
    woke_in = time.monotonic() - started
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == [], failures[:5]
    assert all(text.startswith("hello from ") for text in answered)
    assert len({text.split()[-1] for text in answered}) == 1, "one start, whatever the requests"
    assert answered[0].split()[-1] != first_pid, "a new process"
    assert env.status("web") == "running"
    assert woke_in < 15
    woke = env.db.latest_deployment("web")
    assert woke is not None and woke.kind == "wake" and woke.state == "succeeded"
    assert env.daemon is not None
    text = env.daemon.metrics.exposition().decode()
    assert 'reconciler_wakes_total{result="succeeded"} 1.0' in text
    assert "reconciler_wake_duration_seconds_count 1.0" in text


def test_many_sites_sleep_at_once_and_wake_together(env: Env, tmp_path: Path) -> None:
    names = [f"s{i}" for i in range(4)]
    for name in names:
        env.write(name, app_yaml(tmp_path / name, name))
    ports = {name: env.wait_serving(name, name, timeout=60).productionPort for name in names}
    for name in names:
        env.wait_status(name, "sleeping", timeout=40)
    wait_for(lambda: all(not env.instances(n) for n in names), 10, "every process gone")
    results: dict[str, int] = {}

    def hit(name: str) -> None:
        results[name] = answer(int(ports[name] or 0)).status_code

    threads = [threading.Thread(target=hit, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == dict.fromkeys(names, 200)
    assert {env.status(n) for n in names} == {"running"}


def test_a_wake_that_fails_answers_503_with_retry_after(env: Env, tmp_path: Path) -> None:
    env.write("bad", app_yaml(tmp_path / "bad", "soon broken"))
    row = env.wait_serving("bad", "soon broken", timeout=60)
    env.wait_status("bad", "sleeping", timeout=40)
    release = env.data / "production" / "bad" / str(row.productionHash) / "dist"
    (release / "broken").write_text("")  # the kept version can no longer start
    got = answer(int(row.productionPort or 0))
    assert got.status_code == 503, got.text
    assert got.headers.get("Retry-After") == "5"
    assert "could not be woken" in got.text and "exited with code 1" in got.text
    failed = env.db.latest_deployment("bad")
    assert failed is not None and failed.kind == "wake" and failed.state == "failed"
    again = answer(int(row.productionPort or 0))  # later requests say so too, at once
    assert again.status_code == 503 and "exited with code 1" in again.text
    assert env.status("bad") == "failed", "reported like any other failure"


def test_a_sleeping_site_whose_waker_is_gone_answers_503(env: Env, tmp_path: Path) -> None:
    """The daemon down past the edge's retry window: a clear 503 to try again, not a 502."""
    env.write("nap", app_yaml(tmp_path / "nap", "napping"))
    row = env.wait_serving("nap", "napping", timeout=60)
    env.wait_status("nap", "sleeping", timeout=40)
    assert env.daemon is not None and env.daemon.wakers is not None
    env.daemon.wakers.stop()  # its socket goes, as when the daemon stops
    started = time.monotonic()
    got = answer(int(row.productionPort or 0))
    assert got.status_code == 503 and got.headers.get("Retry-After") == "5"
    assert "cannot be woken right now" in got.text
    assert time.monotonic() - started >= 10, "the edge waited for the waker first"
