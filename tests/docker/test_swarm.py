"""The swarm runtime on a real single-node swarm, through the real edge: rollouts Swarm carries
out (start-first, health-gated, rolled back on failure), the edge following the tasks, and the
service kept as desired (adoption, a service removed or scaled by hand, foreign services)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from reconciler.core.kinds import EdgeMode
from reconciler.core.spec import ProjectId
from tests.docker.conftest import make_project
from tests.integration.harness import Env, environment, get, wait_for
from tests.integration.test_edge_daemon import Loop

pytestmark = pytest.mark.docker

# a graceful app: asked to stop, it stops accepting at once (the listener exits) and finishes
# what it is serving (busybox httpd serves each connection in a child); a PID 1 without
# handlers would instead serve on until it is killed, hiding an edge that routes to it late
STOP = "trap 'kill $server; sleep 0.5; exit 0' TERM"
SERVE = "/bin/busybox httpd -f -p 8080 -h /app/dist & server=$!; wait"
DOCKERFILE = f"""\
FROM scratch
COPY busybox /bin/busybox
COPY busybox /bin/wget
COPY site /app/dist
EXPOSE 8080
ENTRYPOINT ["/bin/busybox", "sh", "-c", "{STOP}; {SERVE}"]
"""
BROKEN = """\
FROM scratch
COPY busybox /bin/busybox
COPY busybox /bin/wget
COPY site /app/dist
EXPOSE 8080
ENTRYPOINT ["/bin/busybox", "sh", "-c", "echo this version cannot start >&2; exit 3"]
"""


@pytest.fixture(scope="session")
def swarm(docker_client: docker.DockerClient) -> Iterator[docker.DockerClient]:
    """A swarm manager: the engine's own when it is one, else a single-node swarm made for
    the tests and left again after them (the engine is left as it was found)."""
    state = (docker_client.info().get("Swarm") or {}).get("LocalNodeState")
    made = False
    if state != "active":
        if os.environ.get("CI") == "true" and state not in ("inactive", None):
            pytest.fail(f"the engine's swarm state is {state!r}")
        subprocess.run(
            ["docker", "swarm", "init"],
            check=True,
            capture_output=True,
        )
        made = True
    yield docker_client
    if made:
        subprocess.run(["docker", "swarm", "leave", "--force"], check=False, capture_output=True)


def swarm_yaml(
    source: Path,
    *,
    generation: int = 1,
    version: str = "latest",
    replicas: int = 2,
    state: str = "running",
) -> str:
    return (
        f"source: {source}\nruntime: swarm\n"
        f'production:\n  state: {state}\n  version: "{version}"\n  generation: {generation}\n'
        "health:\n  timeout: 20\n  interval: 0.3\n"
        f"deploy:\n  replicas: {replicas}\nkeep: 3\n"
    )


def service(client: docker.DockerClient, project: str) -> Any | None:
    try:
        return client.services.get(f"doce_prod_{project}")
    except docker.errors.NotFound:
        return None


def running_tasks(client: docker.DockerClient, project: str) -> list[dict[str, Any]]:
    found = service(client, project)
    if found is None:
        return []
    return [
        t
        for t in found.tasks(filters={"desired-state": "running"})
        if t["Status"]["State"] == "running"
    ]


def task_versions(client: docker.DockerClient, project: str) -> list[str]:
    return sorted(
        t["Spec"]["ContainerSpec"]["Labels"]["reconciler.hash"]
        for t in running_tasks(client, project)
    )


class Routes:
    """Every distinct set of addresses the edge routes the project to, polled in a thread."""

    def __init__(self, env: Env, project: str) -> None:
        self.releases = env.releases()
        self.project = project
        self.seen: list[tuple[str, ...]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def start(self) -> Routes:
        self.thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while not self.done.is_set() and time.monotonic() < deadline:
            now = self.releases.routed_tasks(ProjectId(self.project))
            if not self.seen or self.seen[-1] != now:
                self.seen.append(now)
            time.sleep(0.01)

    def finish(self) -> list[tuple[str, ...]]:
        self.done.set()
        self.thread.join(10)
        return self.seen


def cleanup(client: docker.DockerClient, project: str, env: Env | None = None) -> None:
    if env is not None:
        env.stop()
        if env.proc is not None:
            env.kill9()
    for item in client.services.list():
        if item.name == f"doce_prod_{project}":
            item.remove()
    wait_for(
        lambda: (
            not client.containers.list(
                all=True, filters={"label": f"reconciler.service-of={project}"}
            )
        ),
        60,
        "the test's task containers gone",
    )
    for image in client.images.list():
        for tag in image.tags:
            if f"-{project}:" in tag:
                client.images.remove(tag, force=True)


@pytest.mark.timeout(420)
def test_rollouts_by_swarm_through_the_edge(tmp_path: Path, swarm: docker.DockerClient) -> None:
    """Deploy (2 replicas), a rolling update with zero failed requests, a broken version
    rolled back by Swarm while the old tasks serve, and a pin rollback: all through the
    project's one stable address."""
    project = f"sw{tmp_path.name[-6:].lower().replace('_', '')}"
    source = make_project(tmp_path / "src", "swarm one", DOCKERFILE)
    with environment(tmp_path, runtime="swarm", edge=EdgeMode.ON) as env:
        try:
            env.start()
            env.write(project, swarm_yaml(source))
            first = env.wait_serving(project, "swarm one", timeout=120)
            assert first.productionReplicas == "2/2"
            assert task_versions(swarm, project) == [first.productionHash] * 2
            found = service(swarm, project)
            assert found is not None
            spec = found.attrs["Spec"]
            assert spec["UpdateConfig"]["Order"] == "start-first"
            assert spec["UpdateConfig"]["FailureAction"] == "rollback"
            assert spec["UpdateConfig"]["Parallelism"] == 1
            assert spec["Labels"]["reconciler.managed-by"] == "reconciler"
            assert spec["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Test"][:2] == [
                "CMD",
                "wget",
            ]
            port = first.productionPort
            site = env.db.site(project)
            assert site is not None and site.publicPort == port
            assert len(env.releases().routed_tasks(project)) == 2  # the edge routes to both

            # a rolling update under load: never a failed request, and the edge follows the
            # tasks one by one (not only once the rollout is over)
            loop = Loop(f"http://127.0.0.1:{port}/").start(clients=2, limit=120)
            routes = Routes(env, project).start()
            (source / "site" / "index.html").write_text("swarm two")
            env.write(project, swarm_yaml(source, generation=2))
            second = env.wait_serving(project, "swarm two", timeout=120)
            time.sleep(1)
            loop.finish()
            seen = routes.finish()
            assert len(seen) >= 3, seen  # old tasks, old and new together, new tasks
            assert env.releases().current(project) == second.productionHash
            progress = [
                str(e.payload().get("message"))
                for e in env.db.events_after(project, 0)
                if e.type == "production.starting"
            ]
            assert f"Rollout of {second.productionHash}: 2/2 tasks healthy" in progress, progress
            assert loop.failures == [], loop.failures[:5]
            assert set(loop.bodies) <= {"swarm one", "swarm two"}
            assert loop.bodies.get("swarm two", 0) > 0
            assert second.productionPort == port  # the address never moved
            wait_for(
                lambda: task_versions(swarm, project) == [second.productionHash] * 2,
                30,
                "only the new version's tasks run",
            )

            # a version that cannot start: Swarm rolls it back, the old tasks never stop serving
            (source / "Dockerfile").write_text(BROKEN)
            loop = Loop(f"http://127.0.0.1:{port}/").start(clients=2, limit=120)
            env.write(project, swarm_yaml(source, generation=3))
            failed = env.wait_status(project, "failed", timeout=120)
            time.sleep(0.5)
            loop.finish()
            error = str(failed.productionError)
            assert "Swarm rolled the service back" in error, error
            assert "non-zero exit (3)" in error, error
            assert "this version cannot start" in error, error  # the task's own output
            assert f"version {second.productionHash} keeps serving" in error, error
            assert loop.failures == [], loop.failures[:5]
            assert set(loop.bodies) == {"swarm two"}
            assert failed.productionHash == second.productionHash
            assert task_versions(swarm, project) == [second.productionHash] * 2

            # rollback: a pin is a rollout to the kept image
            (source / "Dockerfile").write_text(DOCKERFILE)
            loop = Loop(f"http://127.0.0.1:{port}/").start(clients=2, limit=120)
            env.write(project, swarm_yaml(source, generation=3, version=first.productionHash))
            pinned = env.wait_serving(project, "swarm one", timeout=120)
            loop.finish()
            assert pinned.productionHash == first.productionHash
            assert loop.failures == [], loop.failures[:5]
            wait_for(
                lambda: task_versions(swarm, project) == [first.productionHash] * 2,
                30,
                "the pinned version's tasks run",
            )
            assert get(f"http://127.0.0.1:{port}/") == "swarm one"

            # stopped: the service goes, the edge closes the port
            env.write(project, swarm_yaml(source, generation=3, state="stopped"))
            env.wait_status(project, "stopped", timeout=60)
            wait_for(lambda: service(swarm, project) is None, 30, "the service removed")
            assert get(f"http://127.0.0.1:{port}/") is None
        finally:
            cleanup(swarm, project, env)


@pytest.mark.timeout(420)
def test_adoption_drift_and_foreign_services(tmp_path: Path, swarm: docker.DockerClient) -> None:
    """A daemon killed with -9 adopts the service with no new rollout; a service scaled by
    hand is scaled back and one removed by hand comes back; services without our labels are
    never touched, and one holding the project's name is refused, not removed."""
    project = f"sw{tmp_path.name[-6:].lower().replace('_', '')}"
    source = make_project(tmp_path / "src", "adopted", DOCKERFILE)
    foreign = swarm.services.create(
        "reconciler-never-pulled:none",
        name=f"foreign_{project}",
        labels={"reconciler.project": project},  # the project's label, without managed-by
        mode=docker.types.ServiceMode("replicated", replicas=0),
    )
    foreign.reload()
    foreign_version = foreign.attrs["Version"]["Index"]
    with environment(tmp_path, runtime="swarm", edge=EdgeMode.ON) as env:
        try:
            env.spawn()
            env.wait_ready(60)
            env.write(project, swarm_yaml(source))
            first = env.wait_serving(project, "adopted", timeout=120)
            found = service(swarm, project)
            assert found is not None
            version = found.attrs["Version"]["Index"]
            port = first.productionPort

            # kill -9 and start again: adopted as it runs, no rollout, never unreachable
            env.kill9()
            assert get(f"http://127.0.0.1:{port}/") == "adopted"  # the edge outlives it
            env.spawn()
            env.wait_ready(60)
            assert get(f"http://127.0.0.1:{port}/") == "adopted"
            again = service(swarm, project)
            assert again is not None and again.attrs["Version"]["Index"] == version
            row = env.row(project)
            assert row is not None and row.productionHash == first.productionHash
            assert row.productionStatus == "running"

            # scaled by hand: put back to the desired replicas
            again.scale(5)
            wait_for(
                lambda: (
                    (s := service(swarm, project)) is not None
                    and s.attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 2
                    and len(running_tasks(swarm, project)) == 2
                ),
                60,
                "the service scaled back to 2",
            )

            # removed by hand: it comes back, and the address serves again
            again.remove()
            wait_for(
                lambda: (s := service(swarm, project)) is not None and s.id != again.id,
                60,
                "the service created again",
            )
            wait_for(lambda: get(f"http://127.0.0.1:{port}/") == "adopted", 60, "serving again")
            wait_for(lambda: env.status(project) == "running", 30, "running again")
            assert env.row(project).productionReplicas == "2/2"  # type: ignore[union-attr]

            # the foreign service was never touched
            foreign.reload()
            assert foreign.attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 0
            assert foreign.attrs["Version"]["Index"] == foreign_version

            # a service that holds the project's name without our labels is refused
            other = f"{project}x"
            squatter = swarm.services.create(
                "reconciler-never-pulled:none",
                name=f"doce_prod_{other}",
                mode=docker.types.ServiceMode("replicated", replicas=0),
            )
            try:
                env.write(other, swarm_yaml(source, replicas=1))
                failed = env.wait_status(other, "failed", timeout=120)
                assert "is not managed by reconciler" in str(failed.productionError)
                squatter.reload()
                assert squatter.attrs["Spec"].get("Labels", {}) == {}
            finally:
                squatter.remove()
                cleanup(swarm, other)
        finally:
            foreign.remove()
            cleanup(swarm, project, env)


def test_a_sleeping_service_scales_to_zero_and_back(
    tmp_path: Path, swarm: docker.DockerClient
) -> None:
    """Idle, the service is scaled to 0 (and left there: nothing puts it back); the first
    request scales it up again and is served, with the requests that came meanwhile."""
    project = f"sz{tmp_path.name[-6:].lower().replace('_', '')}"
    source = make_project(tmp_path / "src", "swarm awake", DOCKERFILE)
    with environment(tmp_path, runtime="swarm", edge=EdgeMode.ON) as env:
        try:
            env.start()
            env.write(project, swarm_yaml(source, replicas=2) + "sleep:\n  after: 10s\n")
            row = env.wait_serving(project, "swarm awake", timeout=120)
            env.wait_status(project, "sleeping", timeout=60)
            wait_for(lambda: not running_tasks(swarm, project), 30, "no task runs")
            found = service(swarm, project)
            assert found is not None, "the service stays"
            assert found.attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 0
            env.resync_and_wait(project)  # a reconcile leaves it asleep, at 0
            assert env.status(project) == "sleeping"

            loop = Loop(f"http://127.0.0.1:{row.productionPort}/").start(clients=3, limit=90)
            wait_for(lambda: sum(loop.bodies.values()) >= 30, 90, "the woken service answering")
            loop.finish()
            assert loop.failures == [], loop.failures[:5]
            assert set(loop.bodies) == {"swarm awake"}
            assert env.status(project) == "running"
            assert len(running_tasks(swarm, project)) == 2
        finally:
            env.stop()
            found = service(swarm, project)
            if found is not None:
                found.remove()
