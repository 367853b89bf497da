"""The docker runtime: ``docker build`` of the source dir, one container per instance.

This module only composes the pieces: ``engine`` (the client), ``build`` and ``extract``
(image, then its dist), ``containers`` (instances), ``compose`` (the release's compose file),
``events`` (deaths as they happen) and ``labels`` (what we own).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from pathlib import PurePosixPath
from typing import Any

import docker.errors
import requests

from reconciler.core.errors import BuildFailed, StartFailed
from reconciler.core.kinds import RuntimeName
from reconciler.core.logfiles import DEFAULT_LIMITS, LogLimits
from reconciler.core.spec import Limits, ProjectId, ProjectSpec
from reconciler.runtimes.base import (
    BuildRequest,
    BuildResult,
    CpuMeter,
    Instance,
    OnChange,
    OutputTail,
    Usage,
)
from reconciler.runtimes.docker import containers
from reconciler.runtimes.docker.build import build_image
from reconciler.runtimes.docker.compose import write_compose
from reconciler.runtimes.docker.engine import Engine, engine_calls
from reconciler.runtimes.docker.events import watch_events
from reconciler.runtimes.docker.extract import extract_dist
from reconciler.runtimes.docker.labels import LABEL_HASH, LABEL_PROJECT
from reconciler.runtimes.sockets import ports_in_namespace
from reconciler.stores.releases import Release

logger = logging.getLogger(__name__)


class DockerRuntime:
    name = RuntimeName.DOCKER

    def __init__(
        self,
        *,
        image_prefix: str = "reconciler",
        bind_host: str = "127.0.0.1",
        base_url: str | None = None,
        log_limits: LogLimits = DEFAULT_LIMITS,
        limits: Limits = Limits(),  # noqa: B008 - frozen
        build_limits: Limits = Limits(),  # noqa: B008 - frozen
    ) -> None:
        self.image_prefix = image_prefix
        self.bind_host = bind_host
        self.log_limits = log_limits
        self.limits = limits
        self.build_limits = build_limits
        self._cpu = CpuMeter()
        self._exits: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self.engine = Engine(base_url)

    def close(self) -> None:
        self.engine.close()

    def ping(self) -> bool:
        return self.engine.ping()

    def image_tag(self, project_id: str, version: str) -> str:
        return f"{self.image_prefix}-{project_id}:{version}"

    # -- build -----------------------------------------------------------------------------

    def build(self, request: BuildRequest) -> BuildResult:
        output = request.spec.build_output(self.name)
        pure = PurePosixPath(output)
        if not pure.is_absolute() or ".." in pure.parts:
            raise BuildFailed(f"build.output {output!r} must be an absolute path in the image")
        if not (request.source / "Dockerfile").is_file():
            raise BuildFailed(f"Build failed: no Dockerfile in {request.source}")
        temp_tag = self.image_tag(request.project_id, f"build-{secrets.token_hex(4)}")
        request.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(request.log_dir / "build.log", "a", encoding="utf-8") as log:
                tail = OutputTail(request.on_line, log, request.log_limits)
                tail.add(f"$ docker build {request.source}")
                image_id = build_image(
                    self.engine, request, temp_tag, tail,
                    request.spec.build.limits.otherwise(self.build_limits),
                )  # fmt: skip
            dist = extract_dist(self.engine, image_id, output, request.work_dir)
        except BaseException:
            self._untag(temp_tag)
            raise
        return BuildResult(
            dist,
            {"runtime": self.name, "image": image_id, "output": output, "buildTag": temp_tag},
            identity=image_id,
        )

    def _untag(self, tag: str) -> None:
        with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
            self.engine.client.images.remove(tag, noprune=False)

    def finish_build(self, result: BuildResult, release: Release) -> None:
        image = str(result.details["image"])
        repo, version = self.image_tag(release.project_id, release.hash).rsplit(":", 1)
        with engine_calls():
            self.engine.client.images.get(image).tag(repo, version)
        self._untag(str(result.details["buildTag"]))

    # -- instances -------------------------------------------------------------------------

    def release_image(self, release: Release) -> Any:
        """The image of a built release; StartFailed when it is gone."""
        tag = self.image_tag(release.project_id, release.hash)
        with engine_calls():
            try:
                return self.engine.client.images.get(tag)
            except docker.errors.ImageNotFound:
                raise StartFailed(
                    f"Start failed: image {tag} is missing; deploy again to rebuild it"
                ) from None

    def start(self, release: Release, spec: ProjectSpec, *, port: int, config: str) -> Instance:
        tag = self.image_tag(release.project_id, release.hash)
        image = self.release_image(release)
        with engine_calls():
            cport = containers.container_port(spec, image)
            container = containers.run_container(
                self.engine,
                project_id=release.project_id,
                version=release.hash,
                image=image,
                spec=spec,
                bind_host=self.bind_host,
                port=port,
                cport=cport,
                config=config,
                log_limits=self.log_limits,
                limits=spec.limits.otherwise(self.limits),
            )
        write_compose(
            release,
            image_tag=tag,
            image_id=str(image.id),
            bind_host=self.bind_host,
            container_port=cport,
            port=port,
            spec=spec,
            config=config,
        )
        return containers.started_instance(
            release.project_id, release.hash, port, container, config
        )

    def alive(self, instance: Instance) -> bool:
        return containers.is_running(self.engine, instance)

    def foreign(self, instance: Instance) -> str | None:
        return None  # the engine maps the port to the container alone

    def wrong_port(self, instance: Instance) -> str | None:
        with engine_calls():
            container = containers.find(self.engine, instance)
            if container is None:
                return None
            pid = int(container.attrs.get("State", {}).get("Pid") or 0)
            bindings = container.attrs.get("HostConfig", {}).get("PortBindings") or {}
        wanted = {int(key.split("/")[0]) for key in bindings}
        ports = ports_in_namespace(pid) if pid > 0 else set()
        if not ports or not wanted or wanted & ports:
            return None
        port = min(ports)
        return (
            f"the app listens on port {', '.join(map(str, sorted(ports)))} in its container, "
            f"not on {', '.join(map(str, sorted(wanted)))} (start.port, or the image's EXPOSE); "
            f"set start.port: {port}, or make the app listen on $PORT"
        )

    def usage(self, instance: Instance) -> Usage | None:
        """The container's memory (less its page cache) and CPU, from one-shot stats."""
        with engine_calls():
            container = containers.find(self.engine, instance)
            if container is None:
                return None
            try:
                stats = container.stats(stream=False, one_shot=True)
            except docker.errors.APIError:
                return None
        memory_stats = stats.get("memory_stats") or {}
        usage = memory_stats.get("usage")
        cache = (memory_stats.get("stats") or {}).get("inactive_file") or (
            memory_stats.get("stats") or {}
        ).get("total_inactive_file", 0)
        memory = int(usage) - int(cache) if usage is not None else None
        total = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
        cpu = self._cpu.percent(str(container.id), int(total) / 1e9) if total else None
        return Usage(memory, cpu)

    def describe_exit(self, instance: Instance) -> str:
        return containers.describe_exit(self.engine, instance)

    def stop(self, instance: Instance, *, timeout: float = 10) -> None:
        containers.stop_container(self.engine, instance, timeout=timeout)

    def observe(self, project_id: ProjectId) -> list[Instance]:
        return containers.running_instances(self.engine, project_id)

    def remove_version(self, project_id: ProjectId, version: str) -> None:
        tag = self.image_tag(project_id, version)
        with engine_calls():
            try:
                self.engine.client.images.remove(tag)
            except docker.errors.ImageNotFound:
                return
            except docker.errors.APIError as exc:
                logger.warning("could not remove image %s: %s", tag, exc)

    def watch(self, changed: OnChange, stop: threading.Event) -> None:
        watch_events(self.engine, changed, stop, record=self._record)

    def _record(self, event: dict[str, Any]) -> None:
        """Keep what the engine says of our containers that it will restart by itself."""
        attrs = (event.get("Actor") or {}).get("Attributes") or {}
        project, version = attrs.get(LABEL_PROJECT), attrs.get(LABEL_HASH)
        if event.get("Action") == "oom" and project and version:
            with self._lock:
                self._exits.setdefault(project, []).append(
                    f"the container of {version} was killed for using more memory than its "
                    "limit (out of memory); Docker starts it again"
                )

    def exits(self, project_id: ProjectId) -> list[str]:
        with self._lock:
            return self._exits.pop(project_id, [])
