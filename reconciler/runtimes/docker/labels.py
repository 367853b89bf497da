"""Names and labels of what the docker runtime owns. Ownership is by label only: anything
without ``reconciler.managed-by=reconciler`` (and, for a project, its project label) is never
touched, whatever its name."""

from __future__ import annotations

from typing import Any

MANAGED_BY = "reconciler.managed-by"
MANAGER = "reconciler"
LABEL_PROJECT = "reconciler.project"
LABEL_HASH = "reconciler.hash"
LABEL_PORT = "reconciler.port"
LABEL_CONFIG = "reconciler.config"
LABEL_ROLE = "reconciler.role"
LABEL_IMAGE_OF = "reconciler.image-of"
SERVICE = "web"


def compose_project(project_id: str, version: str) -> str:
    """The compose project of a version's containers (``docker compose -p <it> ps``)."""
    return f"doce_prod_{project_id}_{version}"


def container_name(project_id: str, version: str, config: str | None = None) -> str:
    """``doce_prod_<id>_<hash8>``, and ``_<config>`` for the settings it runs with (two
    instances of one version, with old and new settings, run side by side in a switch)."""
    base = compose_project(project_id, version)
    return base if config is None else f"{base}_{config}"


def instance_labels(
    project_id: str, version: str, port: int | None = None, config: str | None = None
) -> dict[str, str]:
    """Our labels plus compose's, so ``docker compose -p <name> ps`` sees the container."""
    labels = {
        MANAGED_BY: MANAGER,
        LABEL_PROJECT: project_id,
        LABEL_HASH: version,
        "com.docker.compose.project": compose_project(project_id, version),
        "com.docker.compose.service": SERVICE,
        "com.docker.compose.oneoff": "False",
        "com.docker.compose.container-number": "1",
    }
    if port is not None:
        labels[LABEL_PORT] = str(port)
    if config is not None:
        labels[LABEL_CONFIG] = config
    return labels


def owned(container: Any, project_id: str | None = None) -> bool:
    labels = container.labels or {}
    if labels.get(MANAGED_BY) != MANAGER:
        return False
    return project_id is None or labels.get(LABEL_PROJECT) == project_id
