"""The docker runtime (see ``runtime``)."""

from reconciler.runtimes.docker.labels import container_name
from reconciler.runtimes.docker.runtime import DockerRuntime

__all__ = ["DockerRuntime", "container_name"]
