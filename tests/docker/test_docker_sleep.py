"""A Docker site sleeps like a process one: its container is removed while it sleeps, and the
first request starts one again and is served by it, through a real Caddy and engine."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from reconciler.core.kinds import EdgeMode
from tests.docker.conftest import make_project
from tests.docker.test_docker_daemon import _clean, _ours
from tests.integration.harness import desired_yaml, environment, wait_for
from tests.integration.test_edge_daemon import Loop

pytestmark = pytest.mark.docker


@pytest.mark.timeout(240)
def test_a_docker_site_sleeps_and_wakes(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    source = make_project(tmp_path / "src", "docker awake")
    project = f"dz{tmp_path.name[-6:].lower().replace('_', '')}"
    sleepy = "sleep:\n  after: 10s\n"
    with environment(tmp_path, runtime="docker", edge=EdgeMode.ON) as env:
        prefix = env.config().docker_prefix
        try:
            env.start()
            env.write(project, desired_yaml(source, runtime="docker", extra=sleepy))
            row = env.wait_serving(project, "docker awake", timeout=120)
            env.wait_status(project, "sleeping", timeout=40)
            wait_for(lambda: not _ours(docker_client, project), 20, "its container removed")

            loop = Loop(f"http://127.0.0.1:{row.productionPort}/").start(clients=3)
            wait_for(lambda: sum(loop.bodies.values()) >= 30, 60, "answers from the woken site")
            loop.finish()
            assert loop.failures == [], loop.failures[:5]
            assert set(loop.bodies) == {"docker awake"}
            assert env.status(project) == "running"
            assert len(_ours(docker_client, project)) == 1, "one container started"
        finally:
            _clean(env, docker_client, project, prefix)
