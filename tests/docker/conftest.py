from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
import requests

from reconciler.runtimes.docker import DockerRuntime

BUSYBOX = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p)), None)
DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
COPY site /app/dist
EXPOSE 8080
ENTRYPOINT ["/bin/busybox", "httpd", "-f", "-v", "-p", "8080", "-h", "/app/dist"]
"""


def _engine() -> docker.DockerClient | None:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
        return client
    except (docker.errors.DockerException, requests.RequestException):
        return None


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = _engine()
    if client is None or BUSYBOX is None:
        why = "no Docker engine answers" if client is None else "busybox-static is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; under CI=true the Docker tests must run (.ci/run starts dockerd)")
        pytest.skip(why)
    yield client
    client.close()


@pytest.fixture
def prefix() -> str:
    return f"rtest{uuid.uuid4().hex[:6]}"


@pytest.fixture
def docker_runtime(docker_client: docker.DockerClient, prefix: str) -> Iterator[DockerRuntime]:
    runtime = DockerRuntime(image_prefix=prefix)
    yield runtime
    runtime.close()
    for container in docker_client.containers.list(
        all=True, filters={"label": "reconciler.managed-by=reconciler"}
    ):
        if any(prefix in tag for tag in (container.image.tags or [])) or container.name.startswith(
            "doce_prod_"
        ):
            container.remove(force=True)
    for image in docker_client.images.list():
        for tag in image.tags:
            if tag.startswith(prefix):
                docker_client.images.remove(tag, force=True)


def make_project(root: Path, html: str = "hello from docker", dockerfile: str = DOCKERFILE) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    assert BUSYBOX is not None
    shutil.copy(BUSYBOX, root / "busybox")
    (root / "site").mkdir(exist_ok=True)
    (root / "site" / "index.html").write_text(html)
    (root / "Dockerfile").write_text(dockerfile)
    return root
