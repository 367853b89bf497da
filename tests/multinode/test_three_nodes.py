"""The swarm runtime on a real three-node swarm (``tests/multinode/cluster.py``): the daemon
and its edge in the root namespace, the manager it talks to on node 1, images pushed to the
swarm's own registry. Replicas spread over the nodes; a rolling update and a rollback with a
request loop through the edge and no failed request; placement constraints honoured; a node
drained by hand; a node lost while serving. Run by ``make multinode`` (root; it makes
namespaces, a bridge and three engines, and removes them after).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.core.kinds import EdgeMode
from tests.conftest import PYTHON, REPO
from tests.docker.conftest import BUSYBOX, make_project
from tests.docker.test_swarm import DOCKERFILE
from tests.integration.harness import Env, environment, get, wait_for
from tests.integration.test_edge_daemon import Loop
from tests.multinode.cluster import Cluster, Node

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("MULTINODE") != "1", reason="makes a three-node swarm: make multinode"
    ),
    pytest.mark.timeout(600),
]
P = "shop"
FIGURES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _figures() -> Iterator[None]:
    yield
    for line in FIGURES:
        print(f"\nmultinode: {line}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    if os.geteuid() != 0 or BUSYBOX is None:
        pytest.fail("make multinode needs root and busybox-static")
    # a short root: the engines' containerd sockets live under it (a socket path has 108 bytes)
    made = Cluster(Path(tempfile.mkdtemp(prefix="rcmn-", dir="/tmp")))
    try:
        yield made.up()
    finally:
        made.down()
        shutil.rmtree(made.base, ignore_errors=True)


@pytest.fixture
def env(tmp_path: Path, cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    monkeypatch.setenv("DOCKER_HOST", cluster.nodes[0].host)  # the daemon's manager: node 1
    extra = {"swarm_registry": f"{cluster.registry}/sites"}
    with environment(tmp_path / "run", edge=EdgeMode.ON, runtime="swarm",
                     extra_config=extra) as made:  # fmt: skip
        made.start()
        yield made


def desired(source: Path, *, generation: int = 1, version: str = "latest", replicas: int = 3,
            constraints: tuple[str, ...] = ()) -> str:  # fmt: skip
    text = (
        f"source: {source}\nruntime: swarm\n"
        f'production:\n  state: running\n  version: "{version}"\n  generation: {generation}\n'
        "health:\n  timeout: 30\n  interval: 0.3\n"
        f"deploy:\n  replicas: {replicas}\n"
    )
    if constraints:
        text += "  placement:\n    constraints:\n" + "".join(
            f"      - '{c}'\n" for c in constraints
        )
    return text + "keep: 3\n"


def tasks(node: Node, project: str = P) -> list[dict[str, Any]]:
    """The project's running tasks, as the swarm (asked through ``node``) sees them."""
    client = node.client()
    try:
        service = client.services.get(f"doce_prod_{project}")
        return [
            t
            for t in service.tasks(filters={"desired-state": "running"})
            if t["Status"]["State"] == "running"
        ]
    finally:
        client.close()


def hostnames(node: Node) -> dict[str, str]:
    client = node.client()
    try:
        return {n.id: n.attrs["Description"]["Hostname"] for n in client.nodes.list()}
    finally:
        client.close()


def placed(cluster: Cluster, project: str = P) -> list[str]:
    """The hostnames the project's running tasks are on, sorted."""
    names = hostnames(cluster.manager())
    return sorted(names[t["NodeID"]] for t in tasks(cluster.manager(), project))


def serving(env: Env, text: str, replicas: int, cluster: Cluster) -> Any:
    def check() -> Any:
        row = env.row(P)
        if row is None or row.productionStatus != "running":
            return None
        if len(placed(cluster)) != replicas or row.productionReplicas != f"{replicas}/{replicas}":
            return None
        return row if get(f"http://127.0.0.1:{row.productionPort}/") == text else None

    return wait_for(check, 240, f"{text!r} on {replicas} tasks")


def test_replicas_spread_and_a_rolling_update_and_rollback_fail_nothing(
    env: Env, cluster: Cluster, tmp_path: Path
) -> None:
    source = make_project(tmp_path / "src", "one", DOCKERFILE)
    env.write(P, desired(source))
    row = serving(env, "one", 3, cluster)
    first = str(row.productionHash)
    assert placed(cluster) == ["rcn1", "rcn2", "rcn3"], "one task on each node"
    loop = Loop(f"http://127.0.0.1:{row.productionPort}/").start(clients=2, limit=400)
    try:
        started = time.monotonic()
        (source / "site" / "index.html").write_text("two")
        env.write(P, desired(source, generation=2))
        serving(env, "two", 3, cluster)
        update = time.monotonic() - started
        started = time.monotonic()
        env.write(P, desired(source, generation=2, version=first))
        serving(env, "one", 3, cluster)
        rollback = time.monotonic() - started
    finally:
        loop.finish()
    requests = sum(loop.bodies.values())
    FIGURES.append(f"rolling update over 3 nodes {update:.1f} s, rollback {rollback:.1f} s: "
                   f"{requests} requests through the edge, {len(loop.failures)} failed")  # fmt: skip
    assert loop.failures == [], loop.failures[:5]
    assert set(loop.bodies) <= {"one", "two"} and requests > 100


def test_placement_constraints_are_honoured(env: Env, cluster: Cluster, tmp_path: Path) -> None:
    source = make_project(tmp_path / "src", "placed", DOCKERFILE)
    env.write(P, desired(source, replicas=2, constraints=("node.hostname!=rcn1",)))
    serving(env, "placed", 2, cluster)
    assert set(placed(cluster)) <= {"rcn2", "rcn3"}


def test_a_node_drained_by_hand_moves_its_tasks_and_fails_nothing(
    env: Env, cluster: Cluster, tmp_path: Path
) -> None:
    source = make_project(tmp_path / "src", "drained", DOCKERFILE)
    env.write(P, desired(source))
    row = serving(env, "drained", 3, cluster)
    loop = Loop(f"http://127.0.0.1:{row.productionPort}/").start(clients=2, limit=400)
    try:
        client = cluster.nodes[0].client()
        node = next(n for n in client.nodes.list() if n.attrs["Description"]["Hostname"] == "rcn2")
        spec = node.attrs["Spec"]
        node.update({**spec, "Availability": "drain"})
        client.close()
        wait_for(lambda: "rcn2" not in placed(cluster) and len(placed(cluster)) == 3, 120,
                 "the tasks moved off rcn2")  # fmt: skip
        serving(env, "drained", 3, cluster)
        time.sleep(2)  # the edge follows the moved tasks
    finally:
        loop.finish()
    FIGURES.append(f"rcn2 drained: tasks on {placed(cluster)}, {sum(loop.bodies.values())} "
                   f"requests, {len(loop.failures)} failed")  # fmt: skip
    assert loop.failures == [], loop.failures[:5]


def test_a_lost_node_has_its_tasks_rescheduled(env: Env, cluster: Cluster, tmp_path: Path) -> None:
    source = make_project(tmp_path / "src", "survives", DOCKERFILE)
    env.write(P, desired(source))
    row = serving(env, "survives", 3, cluster)
    loop = Loop(f"http://127.0.0.1:{row.productionPort}/").start(clients=2, limit=400)
    try:
        before = sum(loop.bodies.values())
        lost = time.monotonic()
        cluster.lose(cluster.nodes[2])
        wait_for(lambda: cluster.ready() == ["rcn1", "rcn2"], 120, "rcn3 seen down")
        down = time.monotonic() - lost
        serving(env, "survives", 3, cluster)
        back = time.monotonic() - lost
        time.sleep(2)
    finally:
        loop.finish()
    assert set(placed(cluster)) <= {"rcn1", "rcn2"}
    events = " ".join(str(e.data) for e in env.db.events_after(P, 0))
    FIGURES.append(
        f"rcn3 lost: seen down after {down:.1f} s, 3/3 replicas again after {back:.1f} s; "
        f"{sum(loop.bodies.values()) - before} requests during, {len(loop.failures)} failed"
    )
    assert "rcn3" in events, "the events say which node went away"
    assert len(loop.failures) <= 4, loop.failures[:8]  # at most those in flight to rcn3


def test_an_edge_on_another_node_serves_and_a_lost_node_loses_only_its_requests(
    env: Env, cluster: Cluster, tmp_path: Path
) -> None:
    """``reconciler edge-node`` on node 2 (in its namespace, through its own engine) serves
    the service at the port the daemon gave it: requests through either edge are answered,
    through a rolling update too; then node 2 is lost, edge and all: the daemon's edge
    loses nothing (node 2's tasks are taken out of its routes), node 2's edge is gone."""
    source = make_project(tmp_path / "src", "one", DOCKERFILE)
    env.write(P, desired(source))
    row = serving(env, "one", 3, cluster)
    second = cluster.nodes[1]
    first_port = env.first_port
    log = open(tmp_path / "edge-node.log", "wb")  # noqa: SIM115 - the process's
    node = subprocess.Popen(
        ["nsenter", f"--net=/var/run/netns/{second.name}", PYTHON, "-m", "reconciler",
         "edge-node", "--data", str(tmp_path / "edge-node"), "--bind-host", "0.0.0.0",
         "--port-range", f"{first_port}-{first_port + 199}",
         "--internal-port-range", f"{first_port + 200}-{first_port + 399}"],
        cwd=REPO, env={**os.environ, "DOCKER_HOST": second.host},
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    there = f"http://{second.addr}:{row.productionPort}/"
    try:
        wait_for(lambda: get(there) == "one", 60, "node 2's edge serves the service")
        here = Loop(f"http://127.0.0.1:{row.productionPort}/").start(clients=2, limit=400)
        away = Loop(there).start(clients=2, limit=400)
        (source / "site" / "index.html").write_text("two")
        env.write(P, desired(source, generation=2))
        serving(env, "two", 3, cluster)
        wait_for(lambda: get(there) == "two", 30, "node 2's edge follows the update")
        time.sleep(1)
        away.finish()
        steady = (sum(here.bodies.values()), len(here.failures))
        lost = time.monotonic()
        cluster.lose(second)
        wait_for(lambda: cluster.ready() == ["rcn1", "rcn3"], 120, "rcn2 seen down")
        serving(env, "two", 3, cluster)
        back = time.monotonic() - lost
        time.sleep(2)
        here.finish()
    finally:
        node.kill()
        node.wait(10)
    FIGURES.append(
        f"edge per node: {sum(away.bodies.values())} requests through node 2's edge during a "
        f"rolling update, {len(away.failures)} failed; through the daemon's edge "
        f"{steady[0]} then {sum(here.bodies.values()) - steady[0]} while node 2 was lost "
        f"(3/3 again after {back:.1f} s), {len(here.failures)} failed"
    )
    assert away.failures == [], away.failures[:5]
    assert steady[1] == 0, here.failures[:5]
    assert len(here.failures) <= 4, here.failures[:8]  # at most those in flight to node 2
