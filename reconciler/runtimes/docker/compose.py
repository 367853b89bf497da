"""``docker-compose.production.yml`` in a release: the same service, described for humans and
for ``docker compose`` (reconciler itself runs the container)."""

from __future__ import annotations

import yaml

from reconciler.core.fileio import atomic_write
from reconciler.core.spec import ProjectSpec
from reconciler.runtimes.docker.labels import (
    SERVICE,
    compose_project,
    container_name,
    instance_labels,
)
from reconciler.stores.releases import Release

COMPOSE_FILE = "docker-compose.production.yml"


def write_compose(
    release: Release,
    *,
    image_tag: str,
    image_id: str,
    bind_host: str,
    container_port: int,
    port: int,
    spec: ProjectSpec,
    config: str,
) -> None:
    labels = instance_labels(release.project_id, release.hash, port, config)
    name = container_name(release.project_id, release.hash, config)
    document = {
        "name": compose_project(release.project_id, release.hash),
        "services": {
            SERVICE: {
                "image": image_tag,
                "container_name": name,
                "restart": "unless-stopped",
                "ports": [f"{bind_host}:{port}:{container_port}"],
                "environment": {**spec.plain_env, "PORT": str(container_port)},
                "labels": {
                    k: v for k, v in labels.items() if not k.startswith("com.docker.compose")
                },
            }
        },
    }
    header = f"# Written by reconciler for image {image_id}; reconciler runs this service.\n"
    text = header + yaml.safe_dump(document, sort_keys=False)
    atomic_write(release.path / COMPOSE_FILE, text.encode())
