"""The daemon with the edge (a real Caddy): stable addresses, static sites without a process,
blue-green dynamic sites, zero failed requests across deploys and rollbacks, upgrade in place
from a data dir that ran without the edge, domains with Caddy's internal CA, access logs."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.core.kinds import EdgeMode
from reconciler.core.spec import ProjectId
from reconciler.edge import caddy, keeper
from tests.conftest import PYTHON, REPO, free_port
from tests.integration.harness import Env, desired_yaml, environment, get, make_site, wait_for
from tests.integration.test_truthful import SERVER

pytestmark = pytest.mark.timeout(180)

SERVE_DIST = "start:\n  command: exec python3 -m http.server $PORT --bind 127.0.0.1\n"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with environment(tmp_path, edge=EdgeMode.ON) as e:
        e.start()
        yield e


def unserved(port: int) -> bool:
    """The port serves no site: the edge (listening on the whole range) answers 503."""
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
    except httpx.HTTPError:
        return False
    return response.status_code == 503 and "no site is served here" in response.text


def test_a_static_site_keeps_its_address_through_everything(env: Env, tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", "one")
    env.write("www", desired_yaml(site, generation=1))
    first = env.wait_serving("www", "one")
    port = first.productionPort
    assert port is not None and first.productionUrl == f"http://localhost:{port}"
    assert env.instances("www") == [], "a static site needs no process"

    (site / "dist" / "index.html").write_text("two")
    env.write("www", desired_yaml(site, generation=2))
    second = env.wait_serving("www", "two")
    assert second.productionPort == port and second.productionHash != first.productionHash

    env.write("www", desired_yaml(site, generation=2, version=str(first.productionHash)))
    env.wait_serving("www", "one")
    assert env.row("www").productionPort == port  # type: ignore[union-attr]

    env.write("www", desired_yaml(site, generation=2, state="stopped"))
    stopped = env.wait_status("www", "stopped")
    assert (stopped.productionPort, stopped.productionUrl) == (None, None)
    wait_for(lambda: unserved(port), 10, "a stopped site's port serves nothing")

    env.write("www", desired_yaml(site, generation=2, version=str(first.productionHash)))
    assert env.wait_serving("www", "one").productionPort == port, "the same port after a stop"

    caddy = env.data / "edge" / "caddy.json"
    pid = int(__import__("json").loads(caddy.read_text())["pid"])
    os.kill(pid, 9)
    wait_for(lambda: get(f"http://127.0.0.1:{port}/") == "one", 20, "the edge restarted")

    (env.desired / "www.yaml").unlink()
    wait_for(lambda: env.db.site("www") is None, 20, "the port reservation released")
    assert not (env.data / "production" / "www" / "site.json").exists()
    assert unserved(port)


def test_a_release_without_its_health_path_never_goes_live(env: Env, tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", "good")
    env.write("www", desired_yaml(site, generation=1))
    good = env.wait_serving("www", "good")
    (site / "dist" / "index.html").unlink()
    (site / "dist" / "other.html").write_text("no index")
    env.write("www", desired_yaml(site, generation=2))
    failed = env.wait_status("www", "failed")
    assert "answered 404" in (failed.productionError or "")
    assert "checked through the edge" in (failed.productionError or "")
    assert (failed.productionHash, failed.productionPort) == (
        good.productionHash,
        good.productionPort,
    )
    assert get(f"http://127.0.0.1:{good.productionPort}/") == "good"


@dataclass
class Loop:
    """A bounded loopback request loop: counts answers by body, and every failure."""

    url: str
    bodies: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, clients: int = 2, limit: float = 120) -> Loop:
        for index in range(clients):
            thread = threading.Thread(target=self._run, args=(index % 2 == 0, limit))
            thread.start()
            self.threads.append(thread)
        return self

    def _run(self, keep_alive: bool, limit: float) -> None:
        deadline = time.monotonic() + limit
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    response = (
                        client.get(self.url) if keep_alive else httpx.get(self.url, timeout=5)
                    )
                    if response.status_code != 200:
                        self.failures.append(f"HTTP {response.status_code}: {response.text[:80]!r}")
                    else:
                        self.bodies[response.text] = self.bodies.get(response.text, 0) + 1
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.002)

    def finish(self) -> Loop:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        return self


@pytest.mark.parametrize("kind", ["static", "process"])
def test_zero_failed_requests_across_deploys_and_rollbacks(
    env: Env, tmp_path: Path, kind: str
) -> None:
    extra = (SERVE_DIST if kind == "process" else "") + "keep: 5\n"
    other = make_site(tmp_path / "other", "unrelated")
    env.write("other", desired_yaml(other, generation=1))
    other_row = env.wait_serving("other", "unrelated")
    site = make_site(tmp_path / "site", "version 1")
    env.write("www", desired_yaml(site, generation=1, extra=extra))
    row = env.wait_serving("www", "version 1")
    port = row.productionPort
    versions = {"version 1": str(row.productionHash)}
    main = Loop(f"http://127.0.0.1:{port}/").start()
    bystander = Loop(f"http://127.0.0.1:{other_row.productionPort}/").start()
    try:
        generation = 1
        for number in range(2, 5):  # three deploys
            generation += 1
            (site / "dist" / "index.html").write_text(f"version {number}")
            env.write("www", desired_yaml(site, generation=generation, extra=extra))
            deployed = env.wait_serving("www", f"version {number}")
            versions[f"version {number}"] = str(deployed.productionHash)
        for number in (3, 1, 4):  # three rollbacks among kept versions
            pin = versions[f"version {number}"]
            env.write("www", desired_yaml(site, generation=generation, version=pin, extra=extra))
            env.wait_serving("www", f"version {number}")
    finally:
        main.finish()
        bystander.finish()
    assert main.failures == [], main.failures[:5]
    assert bystander.failures == [], bystander.failures[:5]
    assert set(main.bodies) <= set(versions), f"a response from no single version: {main.bodies}"
    assert sum(main.bodies.values()) > 100 and set(bystander.bodies) == {"unrelated"}
    assert env.row("www").productionPort == port  # type: ignore[union-attr]


def test_a_dynamic_site_is_blue_green_and_answers_at_once(env: Env, tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", "blue")
    env.write("www", desired_yaml(site, generation=1, extra=SERVE_DIST))
    blue = env.wait_serving("www", "blue")
    slots = env.db.site("www").slots  # type: ignore[union-attr]
    assert slots is not None
    first = httpx.get(f"http://127.0.0.1:{blue.productionPort}/")
    assert first.headers["Reconciler-Slot"] == "a"
    (site / "dist" / "index.html").write_text("green")
    env.write("www", desired_yaml(site, generation=2, extra=SERVE_DIST))
    green = env.wait_serving("www", "green")
    assert httpx.get(f"http://127.0.0.1:{green.productionPort}/").headers["Reconciler-Slot"] == "b"
    # blue is kept running out of service for the rollback window: a rollback is a switch
    roles = {r.hash: r.role for r in env.db.instances("www")}
    assert roles == {blue.productionHash: "standby", green.productionHash: "active"}
    (kept,) = [i for i in env.instances("www") if i.hash == blue.productionHash]
    version = f'  version: "{blue.productionHash}"\n'
    text = desired_yaml(site, generation=2, extra=SERVE_DIST).replace(
        '  version: "latest"\n', version
    )
    env.write("www", text)
    back = env.wait_serving("www", "blue")
    assert httpx.get(f"http://127.0.0.1:{back.productionPort}/").headers["Reconciler-Slot"] == "a"
    (again,) = [i for i in env.instances("www") if i.hash == blue.productionHash]
    assert (again.pid, again.port) == (kept.pid, slots[0]), "the kept instance, not a new one"
    # a window of 1 s: the replaced instance stops when it ends
    env.write(
        "www", desired_yaml(site, generation=2, extra=SERVE_DIST + "rollback: {window: 1s}\n")
    )
    env.wait_serving("www", "green")
    wait_for(
        lambda: [i.hash for i in env.instances("www")] == [green.productionHash],
        10,
        "the blue instance stopped when its window ended",
    )


def test_upgrade_in_place_from_a_data_dir_without_the_edge(tmp_path: Path) -> None:
    """Sites started by a daemon with --edge off are taken over by one with the edge, with
    no moment where neither the old address nor the new one answers."""
    static = make_site(tmp_path / "static", "static site")
    dynamic = make_site(tmp_path / "dynamic", "dynamic site")
    with environment(tmp_path, edge=EdgeMode.OFF) as env:
        env.spawn()
        env.write("st", desired_yaml(static, generation=1))
        env.write("dy", desired_yaml(dynamic, generation=1, extra=SERVE_DIST))
        old = {p: env.wait_serving(p, text) for p, text in (("st", "static"), ("dy", "dynamic"))}
        assert env.terminate() == 0
        gaps: list[str] = []
        stop = threading.Event()

        def watch(project: str, text: str) -> None:
            old_url = f"http://127.0.0.1:{old[project].productionPort}/"
            while not stop.is_set():
                row = env.db.project(project)
                urls = {old_url, f"http://127.0.0.1:{row.productionPort}/" if row else old_url}
                if not any(text in (get(url) or "") for url in urls):
                    gaps.append(f"{project} answered on none of {sorted(urls)}")
                time.sleep(0.005)

        watchers = [
            threading.Thread(target=watch, args=(p, t))
            for p, t in (("st", "static"), ("dy", "dynamic"))
        ]
        for thread in watchers:
            thread.start()
        try:
            env.edge = EdgeMode.ON
            env.spawn()
            env.wait_ready(60)
            for project in ("st", "dy"):
                site = env.db.site(project)
                assert site is not None
                wait_for(
                    lambda p=project, s=site: env.row(p).productionPort == s.publicPort,  # type: ignore[union-attr,misc]
                    30,
                    f"{project} behind the edge",
                )
            wait_for(lambda: env.instances("st") == [], 20, "the static site's process retired")
        finally:
            stop.set()
            for thread in watchers:
                thread.join(10)
        assert gaps == [], gaps[:5]
        dy = env.db.site("dy")
        assert dy is not None and dy.slotA == old["dy"].productionPort, "adopted as slot a"
        assert get(f"http://127.0.0.1:{env.row('st').productionPort}/") == "static site"  # type: ignore[union-attr]


def test_domains_are_served_with_certificates_from_the_internal_ca(tmp_path: Path) -> None:
    https_port, http_port = free_port(), free_port()
    with environment(tmp_path, edge=EdgeMode.ON) as env:
        env.extra_config = {
            "domains_https_port": https_port,
            "domains_http_port": http_port,
            "domains_tls": "internal",
        }
        env.start()
        site = make_site(tmp_path / "site", "by name")
        env.write("www", desired_yaml(site, extra="domains: [www.example.test]\n"))
        row = env.wait_serving("www", "by name")
        assert row.productionUrl == f"https://www.example.test:{https_port}"
        root = env.data / "edge" / "storage" / "pki" / "authorities" / "local" / "root.crt"

        def by_name() -> str | None:
            trust = ssl.create_default_context(cafile=str(root))
            with httpx.Client(verify=trust, timeout=5) as client:
                response = client.get(
                    f"https://127.0.0.1:{https_port}/",
                    headers={"Host": "www.example.test"},
                    extensions={"sni_hostname": "www.example.test"},
                )
                return response.text if response.status_code == 200 else None

        assert wait_for(by_name, 30, "the site by its name, over HTTPS") == "by name"


def test_access_logs_through_the_cli(env: Env, tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", "logged")
    env.write("www", desired_yaml(site))
    env.write("api", desired_yaml(make_site(tmp_path / "other", "other")))
    row = env.wait_serving("www", "logged")
    other = env.wait_serving("api", "other")
    httpx.get(f"http://127.0.0.1:{other.productionPort}/?probe=another-site")
    httpx.get(f"http://127.0.0.1:{row.productionPort}/?probe=access-log-test")
    result = lambda: subprocess.run(  # noqa: E731
        [PYTHON, "-m", "reconciler", "logs", "www", "--log", "access",
         "--desired", str(env.desired), "--data", str(env.data)],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    out = wait_for(lambda: "access-log-test" in result().stdout and result(), 10, "the access log")
    assert out.returncode == 0 and f'"port":{row.productionPort}}}' in out.stdout
    assert "another-site" not in out.stdout, "only this site's lines"
    status = subprocess.run(
        [PYTHON, "-m", "reconciler", "status", "--desired", str(env.desired), "--data", str(env.data)],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "edge: up" in status.stdout, status.stdout
    assert ProjectId("www") in status.stdout


def test_an_external_edge_run_by_reconciler_edge(tmp_path: Path) -> None:
    """What the systemd units do: `reconciler edge` runs Caddy; the daemon (--edge external)
    only configures it, and says so when it is not there."""
    with environment(tmp_path, edge=EdgeMode.EXTERNAL) as env:
        env.desired.mkdir(parents=True)
        edge = subprocess.Popen(
            [PYTHON, "-m", "reconciler", "edge", "--data", str(env.data),
             "--internal-port-range", f"{env.first_port + 200}-{env.first_port + 399}"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(lambda: (env.data / "edge" / "admin.sock").exists(), 20, "the edge's socket")
            env.start()
            site = make_site(tmp_path / "site", "external edge")
            env.write("www", desired_yaml(site))
            row = env.wait_serving("www", "external edge")
            assert env.db.edge().mode == "external"  # type: ignore[union-attr]
            edge.terminate()
            edge.wait(10)
            wait_for(lambda: env.db.edge().status == "down", 20, "the edge reported down")  # type: ignore[union-attr]
            assert "reconciler-edge" in (env.db.edge().error or "")  # type: ignore[union-attr]
            assert get(f"http://127.0.0.1:{row.productionPort}/") is None, "not restarted by us"
        finally:
            if edge.poll() is None:
                edge.kill()
            edge.wait(10)


def test_a_lost_state_database_keeps_ports_and_serving(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", "survives")
    with environment(tmp_path, edge=EdgeMode.ON) as env:
        env.spawn()
        env.write("www", desired_yaml(site))
        before = env.wait_serving("www", "survives")
        assert env.terminate() == 0
        env.db.close()
        env._db = None
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            (env.data / name).unlink(missing_ok=True)
        loop = Loop(f"http://127.0.0.1:{before.productionPort}/").start(clients=1)
        try:
            env.spawn()
            env.wait_ready(60)
            after = env.wait_serving("www", "survives", timeout=60)
        finally:
            loop.finish()
        assert after.productionPort == before.productionPort, "site.json gave the port back"
        assert loop.failures == [], loop.failures[:5]
        assert set(loop.bodies) == {"survives"}


def test_an_app_file_cut_short_never_serves_its_source_as_files(env: Env, tmp_path: Path) -> None:
    """``production:`` first, then a write cut after ``build.output: .`` (its ``start:`` and
    ``health:`` lost): read only once it settles, and then the switch to files is a deploy
    like any other, checked before it goes live: ``/`` is not in the files, so the app
    keeps serving, and its source never does."""
    source = tmp_path / "app"
    source.mkdir()
    (source / "server.py").write_text(SERVER)
    text = (
        f"production:\n  state: running\n  generation: 1\nsource: {source}\nruntime: process\n"
        "env:\n  GREETING: the app\n"
        "build:\n  output: .\nstart:\n  command: exec python3 server.py\n"
        "health:\n  path: /\n  interval: 0.2\n"
    )
    env.write("www", text)
    row = env.wait_serving("www", "the app")
    answers: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                for path in ("/", "/server.py"):
                    try:
                        answers.append(
                            client.get(f"http://127.0.0.1:{row.productionPort}{path}").text
                        )
                    except httpx.HTTPError as exc:
                        answers.append(type(exc).__name__)

    poller = threading.Thread(target=loop)
    poller.start()
    try:
        cut = text[: text.index("start:")]
        (env.desired / "www.yaml").write_text(cut)
        failed = env.wait_status("www", "failed", timeout=30)
    finally:
        stop.set()
        poller.join(10)
    assert "GET / answered 404" in str(failed.productionError)
    assert failed.productionHash == row.productionHash
    others = [a for a in answers if a != "the app"]
    assert len(answers) > 20 and not others, f"{len(others)} of {len(answers)}: {others[:3]}"


def test_a_hung_edge_is_reported_and_restarted(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Caddy stopped (SIGSTOP): it still accepts connections and answers nothing. The daemon
    reports it down within the liveness deadline and restarts it; the site serves again.
    (The deadlines, 5 s and 10 s more, shortened to 1 s and 2 s: the same path, sooner.)"""
    monkeypatch.setattr(caddy, "ALIVE_TIMEOUT", 1.0)
    monkeypatch.setattr(keeper, "HUNG_AFTER", 2.0)
    site = make_site(tmp_path / "site", "steady")
    env.write("www", desired_yaml(site))
    row = env.wait_serving("www", "steady")
    edge = env.db.edge()
    assert edge is not None and edge.status == "up" and edge.pid is not None
    hung = edge.pid
    os.kill(hung, signal.SIGSTOP)
    try:
        down = wait_for(
            lambda: (e := env.db.edge()) is not None and e.status == "down" and e,
            20,
            "the hung edge reported down",
        )
        assert "has not answered" in str(down.error)
        again = wait_for(
            lambda: (e := env.db.edge()) is not None and e.status == "up" and e.pid != hung and e,
            40,
            "the edge restarted",
        )
        assert again.pid != hung
        assert get(f"http://127.0.0.1:{row.productionPort}/") == "steady"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)


def test_a_static_sites_dotfiles_are_not_served_but_well_known(env: Env, tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", "home")
    dist = site / "dist"
    for path, text in ((".env", "SECRET=1"), (".git/config", "[remote]"),
                       ("assets/.hidden", "hid"), (".well-known/security.txt", "Contact: x")):  # fmt: skip
        (dist / path).parent.mkdir(parents=True, exist_ok=True)
        (dist / path).write_text(text)
    env.write("www", desired_yaml(site))
    row = env.wait_serving("www", "home")
    base = f"http://127.0.0.1:{row.productionPort}"
    for path in ("/.env", "/.git/config", "/assets/.hidden", "/%2eenv", "/assets/%2Ehidden"):
        answer = httpx.get(base + path)
        assert answer.status_code == 404 and "SECRET" not in answer.text, path
    assert httpx.get(base + "/.well-known/security.txt").text == "Contact: x"
    assert httpx.get(base + "/").text == "home"
    # the check route served the release only while it was checked, and never its dotfiles
    assert env.daemon is not None and env.daemon.edge is not None
    check = f"http://127.0.0.1:{env.daemon.edge.settings.control_port}/www/preview/dist"
    assert not (env.data / "production" / "www" / "preview").is_symlink()
    assert httpx.get(check + "/index.html").status_code == 404
    env.releases().preview(ProjectId("www"), str(row.productionHash))  # as during a check
    assert httpx.get(check + "/index.html").text == "home"
    for path in ("/.env", "/.git/config", "/assets/.hidden", "/%2eenv"):
        answer = httpx.get(check + path)
        assert answer.status_code == 404 and "SECRET" not in answer.text, path
    assert httpx.get(check + "/.well-known/security.txt").text == "Contact: x"


def test_an_app_turned_static_on_purpose_switches_once_and_stays(env: Env, tmp_path: Path) -> None:
    """The same release, its start command dropped on purpose: a checked switch to its files,
    the app drained and stopped, and nothing more (no activation after it)."""
    site = make_site(tmp_path / "site", "as files")
    (site / "dist" / "server.py").write_text(SERVER)
    app = desired_yaml(site, extra="env:\n  GREETING: as an app\n" + "start:\n  command: "
                       "exec python3 server.py\n")  # fmt: skip
    env.write("www", app)

    def app_serves() -> Any:
        row = env.row("www")
        answer = (
            get(f"http://127.0.0.1:{row.productionPort}/") if row and row.productionPort else None
        )
        return row if answer == "as an app" else None

    row = wait_for(app_serves, 30, "the app serving")
    env.write("www", desired_yaml(site))
    files = env.wait_serving("www", "as files")
    assert files.productionPort == row.productionPort
    wait_for(lambda: env.instances("www") == [], 15, "the app stopped")
    settled = len(env.db.deployments("www"))
    time.sleep(2)
    env.resync_and_wait("www")
    assert len(env.db.deployments("www")) == settled, "no activation after the switch"
    assert get(f"http://127.0.0.1:{row.productionPort}/") == "as files"


def test_a_version_that_dies_after_it_went_live_falls_back_to_the_kept_one(
    env: Env, tmp_path: Path
) -> None:
    """A new version passes its health check, goes live, then dies within the rollback
    window: the instance it replaced (kept running for the window) serves again at once, with
    no start; the deploy is failed and the dead version is not started again until an edit."""
    site = make_site(tmp_path / "site", "v1")
    env.write("www", desired_yaml(site, generation=1, extra=SERVE_DIST))
    v1 = env.wait_serving("www", "v1")
    (kept,) = env.instances("www")
    (site / "dist" / "index.html").write_text("v2")
    dies = "start:\n  command: exec timeout 8 python3 -m http.server $PORT --bind 127.0.0.1\n"
    env.write("www", desired_yaml(site, generation=2, extra=dies))
    v2 = env.wait_serving("www", "v2")
    assert v2.productionHash != v1.productionHash
    row = env.wait_status("www", "failed", timeout=30)
    assert (row.productionHash, row.productionPort) == (v1.productionHash, v1.productionPort)
    assert row.productionError is not None and "went live, then stopped running" in (
        row.productionError
    )
    assert f"{v1.productionHash}, the version it replaced" in row.productionError
    assert get(f"http://127.0.0.1:{row.productionPort}/") == "v1"
    time.sleep(2)  # the dead version is not put back: the deploy failed
    (again,) = env.instances("www")
    assert (again.hash, again.pid) == (v1.productionHash, kept.pid), "the kept one, no start"
    assert {r.hash: r.role for r in env.db.instances("www")} == {v1.productionHash: "active"}
    assert env.status("www") == "failed"
    latest = env.db.latest_deployment("www")
    assert latest is not None and (latest.kind, latest.state) == ("deploy", "failed")
    # the version that serves dies too: it is put back, and the deploy stays failed
    error = env.row("www").productionError  # type: ignore[union-attr]
    os.kill(kept.pid, signal.SIGKILL)  # type: ignore[arg-type]
    wait_for(
        lambda: (
            [(i.hash, i.pid != kept.pid) for i in env.instances("www")]
            == [(v1.productionHash, True)]
        ),
        30,
        "v1 started again",
    )
    wait_for(lambda: get(f"http://127.0.0.1:{v1.productionPort}/") == "v1", 10, "v1 serves")
    row = env.wait_status("www", "failed")
    assert (row.productionHash, row.productionError) == (v1.productionHash, error)
    # an edit tries again: a v2 that lives is deployed
    env.write("www", desired_yaml(site, generation=3, extra=SERVE_DIST))
    fixed = env.wait_serving("www", "v2")
    assert fixed.productionStatus == "running" and fixed.productionError is None
