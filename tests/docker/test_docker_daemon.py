"""The main GitOps flow with the Docker runtime against the real engine."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from reconciler.core.kinds import EdgeMode
from tests.docker.conftest import make_project
from tests.integration.gitrepo import Repo, git
from tests.integration.harness import Env, desired_yaml, environment, get, wait_for
from tests.integration.test_edge_daemon import Loop
from tests.integration.test_git_sources import git_yaml, serving

pytestmark = pytest.mark.docker


def _ours(client: docker.DockerClient, project: str) -> list[str]:
    return [
        c.name
        for c in client.containers.list(
            all=True,
            filters={
                "label": ["reconciler.managed-by=reconciler", f"reconciler.project={project}"]
            },
        )
    ]


def _clean(env: Env, client: docker.DockerClient, project: str, prefix: str) -> None:
    """Stop the daemon; remove the project's containers and the images of this test."""
    env.stop()
    for name in _ours(client, project):
        client.containers.get(name).remove(force=True)
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(prefix):
                client.images.remove(tag, force=True)


def _versions(client: docker.DockerClient, project: str) -> list[str]:
    """Our containers' names without the config suffix (`doce_prod_<id>_<hash>`)."""
    names = _ours(client, project)
    assert all(n.count("_") == 4 for n in names), names
    return [n.rsplit("_", 1)[0] for n in names]


@pytest.mark.parametrize("edge", [EdgeMode.OFF, EdgeMode.ON])
@pytest.mark.timeout(240)
def test_docker_flow_by_file_edits(
    tmp_path: Path, docker_client: docker.DockerClient, edge: EdgeMode
) -> None:
    source = make_project(tmp_path / "src", "docker one")
    project = f"dk{tmp_path.name[-6:].lower().replace('_', '')}"
    keep2 = "keep: 2\nrollback: {window: off}\n"  # replaced containers go once drained
    with environment(tmp_path, runtime="docker", edge=edge) as env:
        prefix = env.config().docker_prefix
        try:
            env.start()
            env.write(project, desired_yaml(source, runtime="docker", extra=keep2))
            first = env.wait_serving(project, "docker one", timeout=120)
            assert _versions(docker_client, project) == [
                f"doce_prod_{project}_{first.productionHash}"
            ]

            (source / "site" / "index.html").write_text("docker two")
            env.write(project, desired_yaml(source, runtime="docker", generation=2, extra=keep2))
            second = env.wait_serving(project, "docker two", timeout=120)
            wait_for(
                lambda: (
                    _versions(docker_client, project)
                    == [f"doce_prod_{project}_{second.productionHash}"]
                ),
                20,
                "old container removed",
            )
            if edge == EdgeMode.OFF:
                assert get(f"http://127.0.0.1:{first.productionPort}/") is None
            else:
                assert second.productionPort == first.productionPort, "a stable address"

            # rollback by pin: the kept image starts again, no rebuild
            env.write(
                project,
                desired_yaml(
                    source,
                    runtime="docker",
                    generation=2,
                    version=str(first.productionHash),
                    extra=keep2,
                ),
            )
            env.wait_serving(project, "docker one", timeout=60)
            wait_for(
                lambda: (
                    _versions(docker_client, project)
                    == [f"doce_prod_{project}_{first.productionHash}"]
                ),
                20,
                "rolled back",
            )

            # forward to a third version; keep: 2 keeps it and v1 (last active), prunes v2 + image
            (source / "site" / "index.html").write_text("docker three")
            env.write(project, desired_yaml(source, runtime="docker", generation=3, extra=keep2))
            third = env.wait_serving(project, "docker three", timeout=120)
            wait_for(
                lambda: (
                    sorted(
                        t
                        for i in docker_client.images.list()
                        for t in i.tags
                        if t.startswith(f"{prefix}-{project}:")
                    )
                    == sorted(
                        f"{prefix}-{project}:{h}"
                        for h in (first.productionHash, third.productionHash)
                    )
                ),
                20,
                "images of pruned versions removed",
            )

            # a removed container is put back
            (name,) = [
                n
                for n in _ours(docker_client, project)
                if n.startswith(f"doce_prod_{project}_{third.productionHash}_")
            ]
            docker_client.containers.get(name).remove(force=True)
            env.wait_serving(project, "docker three", timeout=60)
            wait_for(lambda: len(_ours(docker_client, project)) == 1, 30, "container restored")

            env.write(
                project,
                desired_yaml(source, runtime="docker", generation=3, state="stopped", extra=keep2),
            )
            env.wait_status(project, "stopped", timeout=60)
            wait_for(
                lambda: _versions(docker_client, project) == [], 20, "container removed on stop"
            )
        finally:
            _clean(env, docker_client, project, prefix)


@pytest.mark.timeout(300)
def test_docker_zero_failed_requests_through_the_edge(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    source = make_project(tmp_path / "src", "docker 1")
    other = tmp_path / "other" / "dist"
    other.mkdir(parents=True)
    (other / "index.html").write_text("unrelated")
    project = f"dz{tmp_path.name[-6:].lower().replace('_', '')}"
    keep = "keep: 5\nrollback: {window: off}\n"  # replaced containers go once drained
    with environment(tmp_path, runtime="docker", edge=EdgeMode.ON) as env:
        prefix = env.config().docker_prefix
        try:
            env.start()
            env.write("other", desired_yaml(other.parent, runtime="process"))
            bystander_row = env.wait_serving("other", "unrelated")
            env.write(project, desired_yaml(source, runtime="docker", extra=keep))
            row = env.wait_serving(project, "docker 1", timeout=120)
            versions = {"docker 1": str(row.productionHash)}
            main = Loop(f"http://127.0.0.1:{row.productionPort}/").start()
            bystander = Loop(f"http://127.0.0.1:{bystander_row.productionPort}/").start()
            try:
                for number in (2, 3):
                    (source / "site" / "index.html").write_text(f"docker {number}")
                    env.write(
                        project,
                        desired_yaml(source, runtime="docker", generation=number, extra=keep),
                    )
                    done = env.wait_serving(project, f"docker {number}", timeout=120)
                    versions[f"docker {number}"] = str(done.productionHash)
                for number in (1, 3):
                    env.write(
                        project,
                        desired_yaml(source, runtime="docker", generation=3,
                                     version=versions[f"docker {number}"], extra=keep),
                    )  # fmt: skip
                    env.wait_serving(project, f"docker {number}", timeout=60)
            finally:
                main.finish()
                bystander.finish()
            assert main.failures == [], main.failures[:5]
            assert bystander.failures == [], bystander.failures[:5]
            assert set(main.bodies) <= set(versions) and sum(main.bodies.values()) > 50
            wait_for(lambda: len(_ours(docker_client, project)) == 1, 30, "old containers drained")
        finally:
            _clean(env, docker_client, project, prefix)


@pytest.mark.timeout(240)
def test_docker_builds_each_pushed_commit_of_a_followed_branch(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """A git source on the Docker runtime: the image is built from a clean checkout of each
    pushed commit (the Dockerfile and the busybox binary are committed files)."""
    repo = Repo(tmp_path / "repo")
    make_project(repo.work, "docker commit one")
    git("add", "-A", cwd=repo.work)  # the files make_project wrote
    first = repo.commit({}, "the site")
    repo.push()
    project = f"dg{tmp_path.name[-6:].lower().replace('_', '')}"
    with environment(tmp_path, runtime="docker", edge=EdgeMode.ON) as env:
        prefix = env.config().docker_prefix
        try:
            env.start()
            env.write(project, git_yaml(repo.remote).replace("runtime: process", "runtime: docker"))
            assert serving(env, project, "docker commit one", timeout=120) == first
            second = repo.commit({"site/index.html": "docker commit two"}, "second page")
            repo.push()
            assert serving(env, project, "docker commit two", timeout=120) == second
        finally:
            _clean(env, docker_client, project, prefix)


@pytest.mark.timeout(240)
def test_an_app_that_only_a_dockerfile_builds_takes_the_docker_runtime(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """A desired file that names no runtime, on a daemon whose default is the process
    runtime: the Dockerfile says how, the docker runtime builds and runs it, and the status
    says why."""
    source = make_project(tmp_path / "src", "found by its dockerfile")
    project = f"df{tmp_path.name[-6:].lower().replace('_', '')}"
    with environment(tmp_path, runtime="process") as env:
        prefix = env.config().docker_prefix
        try:
            env.start()
            env.write(project, f"source: {source}\nproduction:\n  state: running\n")
            row = env.wait_serving(project, "found by its dockerfile", timeout=120)
            assert _versions(docker_client, project) == [
                f"doce_prod_{project}_{row.productionHash}"
            ]
            app = env.releases().app_of(project, row.productionHash)  # type: ignore[arg-type]
            assert app is not None and app["kind"] == "docker" and app["seen"] == ["Dockerfile"]
        finally:
            _clean(env, docker_client, project, prefix)


def _running(client: docker.DockerClient, project: str) -> dict[str, str]:
    """The project's running containers: version -> container id."""
    filters = {"label": ["reconciler.managed-by=reconciler", f"reconciler.project={project}"]}
    return {
        c.labels["reconciler.hash"]: c.id
        for c in client.containers.list(filters=filters)  # running ones only
    }


@pytest.mark.timeout(240)
def test_a_container_that_dies_after_it_went_live_falls_back_to_the_kept_one(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """The new version's container is killed (as the kernel's OOM killer would) within the
    rollback window: the kept container of the version before serves again, as it ran; the
    deploy is failed and nothing starts the dead version again."""
    source = make_project(tmp_path / "src", "docker 1")
    project = f"df{tmp_path.name[-6:].lower().replace('_', '')}"
    with environment(tmp_path, runtime="docker", edge=EdgeMode.ON) as env:
        prefix = env.config().docker_prefix
        try:
            env.start()
            env.write(project, desired_yaml(source, runtime="docker"))
            first = env.wait_serving(project, "docker 1", timeout=120)
            (source / "site" / "index.html").write_text("docker 2")
            env.write(project, desired_yaml(source, runtime="docker", generation=2))
            second = env.wait_serving(project, "docker 2", timeout=120)
            running = _running(docker_client, project)
            assert set(running) == {first.productionHash, second.productionHash}
            docker_client.containers.get(running[str(second.productionHash)]).kill()
            row = env.wait_status(project, "failed", timeout=60)
            assert (row.productionHash, row.productionPort) == (
                first.productionHash,
                first.productionPort,
            )
            assert "went live, then stopped running" in str(row.productionError)
            assert get(f"http://127.0.0.1:{row.productionPort}/") == "docker 1"
            kept = running[str(first.productionHash)]
            wait_for(
                lambda: _running(docker_client, project) == {first.productionHash: kept},
                10,
                "only the kept container runs",
            )
        finally:
            _clean(env, docker_client, project, prefix)
