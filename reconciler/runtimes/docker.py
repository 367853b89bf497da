"""The docker runtime: ``docker build`` of the source dir, one container per instance.

Ownership is by label only: containers carry ``reconciler.managed-by=reconciler`` plus the
project and hash; anything without those labels is never touched, whatever its name. The
dist to hash is copied out of the built image through the archive API and extracted with
tarfile's ``data`` filter (no absolute paths, no ``..``, no links leaving the folder, no
device files).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import docker
import docker.errors
import requests
import yaml

from reconciler.desired import atomic_write
from reconciler.errors import BuildFailed, Cancelled, StartFailed, TransientError
from reconciler.releases import Release
from reconciler.runtimes.base import (
    BuildRequest,
    BuildResult,
    Instance,
    OutputTail,
    describe_seconds,
    with_tail,
)
from reconciler.spec import ProjectId, ProjectSpec, check_project_id, is_hash8
from reconciler.timeutil import utcnow

logger = logging.getLogger(__name__)

MANAGED_BY = "reconciler.managed-by"
MANAGER = "reconciler"
LABEL_PROJECT = "reconciler.project"
LABEL_HASH = "reconciler.hash"
LABEL_PORT = "reconciler.port"
COMPOSE_FILE = "docker-compose.production.yml"
SERVICE = "web"


def container_name(project_id: str, version: str) -> str:
    return f"doce_prod_{project_id}_{version}"


def _unreachable(exc: Exception) -> TransientError:
    return TransientError(
        f"Docker engine unreachable: {exc}. Docker projects wait and retry; process projects "
        "keep running",
        delay=5,
    )


@contextlib.contextmanager
def _engine() -> Iterator[None]:
    """Map connection failures to TransientError; let API errors through."""
    try:
        yield
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise _unreachable(exc) from None
    except docker.errors.DockerException as exc:
        if isinstance(exc, docker.errors.APIError):
            raise
        raise _unreachable(exc) from None


class _BuildAPI(docker.APIClient):  # type: ignore[misc]
    """An APIClient that keeps the build's streaming response, so a cancel can cut it."""

    response: requests.Response | None = None

    def _stream_helper(self, response: requests.Response, decode: bool = False) -> Any:
        self.response = response
        return super()._stream_helper(response, decode)

    def abort(self) -> None:
        response = self.response
        if response is None:
            return
        with contextlib.suppress(Exception):
            raw = response.raw._fp.fp.raw
            sock = getattr(raw, "_sock", raw)
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            response.close()


class DockerRuntime:
    name = "docker"

    def __init__(
        self,
        *,
        image_prefix: str = "reconciler",
        bind_host: str = "127.0.0.1",
        base_url: str | None = None,
    ) -> None:
        self.image_prefix = image_prefix
        self.bind_host = bind_host
        self.base_url = base_url
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    # -- engine ----------------------------------------------------------------------------

    def _kwargs(self) -> dict[str, Any]:
        if self.base_url:
            return {"base_url": self.base_url}
        return dict(docker.utils.kwargs_from_env())

    @property
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                kwargs = self._kwargs()
                base_url = str(kwargs.get("base_url") or "unix:///var/run/docker.sock")
                if base_url.startswith("unix://") and not os.path.exists(base_url[7:]):
                    raise _unreachable(OSError(f"no socket at {base_url[7:]}"))
                client = docker.DockerClient(timeout=60, **kwargs)
                try:
                    with _engine():
                        client.ping()
                except BaseException:
                    client.close()
                    raise
                self._client = client
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def ping(self) -> bool:
        try:
            with _engine():
                self.client.ping()
            return True
        except (TransientError, docker.errors.APIError):
            with self._lock:
                self._client = None
            return False

    def image_tag(self, project_id: str, version: str) -> str:
        return f"{self.image_prefix}-{project_id}:{version}"

    def _labels(self, project_id: str, version: str, port: int | None = None) -> dict[str, str]:
        labels = {
            MANAGED_BY: MANAGER,
            LABEL_PROJECT: project_id,
            LABEL_HASH: version,
            "com.docker.compose.project": container_name(project_id, version),
            "com.docker.compose.service": SERVICE,
            "com.docker.compose.oneoff": "False",
            "com.docker.compose.container-number": "1",
        }
        if port is not None:
            labels[LABEL_PORT] = str(port)
        return labels

    @staticmethod
    def _owned(container: Any, project_id: str | None = None) -> bool:
        labels = container.labels or {}
        if labels.get(MANAGED_BY) != MANAGER:
            return False
        return project_id is None or labels.get(LABEL_PROJECT) == project_id

    # -- build -----------------------------------------------------------------------------

    def build(self, request: BuildRequest) -> BuildResult:
        spec = request.spec
        project_id = check_project_id(request.project_id)
        output = spec.build_output(self.name)
        if not PurePosixPath(output).is_absolute() or ".." in PurePosixPath(output).parts:
            raise BuildFailed(f"build.output {output!r} must be an absolute path in the image")
        if not (request.source / "Dockerfile").is_file():
            raise BuildFailed(f"Build failed: no Dockerfile in {request.source}")
        temp_tag = self.image_tag(project_id, f"build-{secrets.token_hex(4)}")
        request.log_dir.mkdir(parents=True, exist_ok=True)
        with _engine():
            self.client  # noqa: B018 - fail fast with a clear message when the engine is down
            api = _BuildAPI(timeout=None, version="auto", **self._kwargs())
        try:
            with open(request.log_dir / "build.log", "a", encoding="utf-8") as log:
                tail = OutputTail(request.on_line, log)
                tail.add(f"$ docker build {request.source}")
                image_id = self._stream_build(api, request, temp_tag, tail)
            dist = self._extract(image_id, output, request.work_dir)
        except BaseException:
            self._untag(temp_tag)
            raise
        finally:
            api.close()
        return BuildResult(
            dist,
            {"runtime": self.name, "image": image_id, "output": output, "buildTag": temp_tag},
        )

    def _stream_build(
        self, api: _BuildAPI, request: BuildRequest, tag: str, tail: OutputTail
    ) -> str:
        spec = request.spec
        outcome: dict[str, Any] = {}

        def consume() -> None:
            try:
                stream = api.build(
                    path=str(request.source),
                    tag=tag,
                    rm=True,
                    forcerm=True,
                    decode=True,
                    buildargs=dict(spec.env) or None,
                    labels={"reconciler.image-of": request.project_id},
                )
                for chunk in stream:
                    if "stream" in chunk:
                        tail.add(str(chunk["stream"]))
                    if "error" in chunk:
                        outcome["error"] = str(chunk["error"]).strip()
                    aux = chunk.get("aux")
                    if isinstance(aux, dict) and "ID" in aux:
                        outcome["image"] = aux["ID"]
            except Exception as exc:
                outcome["exception"] = exc

        thread = threading.Thread(
            target=consume, name=f"docker-build-{request.project_id}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + spec.build.timeout
        reason = None
        while thread.is_alive():
            if request.cancel.wait(0.05):
                reason = "cancelled"
            elif time.monotonic() > deadline:
                reason = "timeout"
            if reason:
                api.abort()
                thread.join(5)
                break
        if reason == "cancelled":
            raise Cancelled("docker build cancelled")
        if reason == "timeout":
            raise BuildFailed(
                with_tail(
                    f"Build failed: docker build timed out after "
                    f"{describe_seconds(spec.build.timeout)}",
                    tail.text(),
                )
            )
        exc = outcome.get("exception")
        if isinstance(
            exc, requests.exceptions.ConnectionError | docker.errors.DockerException
        ) and not isinstance(exc, docker.errors.APIError):
            raise _unreachable(exc)
        if exc is not None:
            raise BuildFailed(with_tail(f"Build failed: docker build: {exc}", tail.text()))
        if "error" in outcome:
            raise BuildFailed(with_tail(f"Build failed: {outcome['error']}", tail.text()))
        with _engine():
            image = self.client.images.get(tag)
        return str(image.id)

    def _extract(self, image_id: str, output: str, work_dir: Path) -> Path:
        """Copy ``output`` out of the image into ``work_dir/dist`` (safely)."""
        work_dir.mkdir(parents=True, exist_ok=True)
        archive = work_dir / "dist.tar"
        with _engine():
            container = self.client.containers.create(
                image_id,
                entrypoint=["/reconciler-extract-only"],
                labels={MANAGED_BY: MANAGER, "reconciler.role": "extract"},
            )
        try:
            with _engine():
                try:
                    bits, _stat = container.get_archive(output)
                except docker.errors.NotFound:
                    raise BuildFailed(
                        f"Build failed: build.output {output} does not exist in the built image"
                    ) from None
                with open(archive, "wb") as fh:
                    for chunk in bits:
                        fh.write(chunk)
        finally:
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                container.remove(force=True)
        dist = work_dir / "dist"
        dist.mkdir()
        top = PurePosixPath(output).name
        try:
            with tarfile.open(archive) as tar:
                members = []
                for member in tar.getmembers():
                    parts = PurePosixPath(member.name).parts
                    if not parts or parts[0] != top:
                        raise BuildFailed(f"unexpected entry {member.name!r} in the image archive")
                    if len(parts) == 1:
                        if not member.isdir():
                            raise BuildFailed(f"build.output {output} is not a directory")
                        continue
                    member.name = str(PurePosixPath(*parts[1:]))
                    if member.islnk():
                        link = PurePosixPath(member.linkname).parts
                        if not link or link[0] != top:
                            raise BuildFailed(f"hard link {member.name} leaves {output}")
                        member.linkname = str(PurePosixPath(*link[1:]))
                    members.append(member)
                tar.extractall(dist, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise BuildFailed(f"Build failed: refusing {output} from the image: {exc}") from None
        except tarfile.TarError as exc:
            raise BuildFailed(f"Build failed: bad archive of {output}: {exc}") from None
        finally:
            archive.unlink(missing_ok=True)
        return dist

    def _untag(self, tag: str) -> None:
        with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
            self.client.images.remove(tag, noprune=False)

    def finish_build(self, result: BuildResult, release: Release) -> None:
        image = str(result.details["image"])
        repo, version = self.image_tag(release.project_id, release.hash).rsplit(":", 1)
        with _engine():
            self.client.images.get(image).tag(repo, version)
        self._untag(str(result.details["buildTag"]))

    # -- instances -------------------------------------------------------------------------

    def _container_port(self, spec: ProjectSpec, image: Any) -> int:
        if spec.start.port is not None:
            return spec.start.port
        exposed = (image.attrs.get("Config") or {}).get("ExposedPorts") or {}
        for key in sorted(exposed):
            number, _, proto = key.partition("/")
            if proto in ("", "tcp") and number.isdigit():
                return int(number)
        return 3000

    def start(self, release: Release, spec: ProjectSpec, *, port: int) -> Instance:
        project_id = release.project_id
        name = container_name(project_id, release.hash)
        tag = self.image_tag(project_id, release.hash)
        with _engine():
            try:
                image = self.client.images.get(tag)
            except docker.errors.ImageNotFound:
                raise StartFailed(
                    f"Start failed: image {tag} is missing; deploy again to rebuild it"
                ) from None
            self._clear_name(name, project_id)
            cport = self._container_port(spec, image)
            try:
                container = self.client.containers.create(
                    image.id,
                    name=name,
                    labels=self._labels(project_id, release.hash, port),
                    environment={**spec.env, "PORT": str(cport)},
                    ports={f"{cport}/tcp": (self.bind_host, port)},
                    restart_policy={"Name": "unless-stopped"},
                    detach=True,
                )
            except docker.errors.APIError as exc:
                raise StartFailed(
                    f"Start failed: cannot create {name}: {exc.explanation}"
                ) from None
            try:
                container.start()
            except docker.errors.APIError as exc:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True)
                text = str(exc.explanation or exc)
                if "port is already allocated" in text or "address already in use" in text:
                    raise TransientError(
                        f"Port {port} is already in use: {text}", delay=2
                    ) from None
                raise StartFailed(f"Start failed: {name}: {text}") from None
        self._write_compose(release, image.id, cport, port, spec)
        return Instance(
            project_id, release.hash, self.name, port, utcnow(), container_id=container.id
        )

    def _clear_name(self, name: str, project_id: str) -> None:
        try:
            existing = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        if not self._owned(existing, project_id):
            raise StartFailed(
                f"Start failed: a container named {name} exists and is not managed by "
                "reconciler; rename or remove it"
            )
        existing.remove(force=True)

    def _write_compose(
        self, release: Release, image_id: str, cport: int, port: int, spec: ProjectSpec
    ) -> None:
        labels = self._labels(release.project_id, release.hash, port)
        document = {
            "name": container_name(release.project_id, release.hash),
            "services": {
                SERVICE: {
                    "image": self.image_tag(release.project_id, release.hash),
                    "container_name": container_name(release.project_id, release.hash),
                    "restart": "unless-stopped",
                    "ports": [f"{self.bind_host}:{port}:{cport}"],
                    "environment": {**spec.env, "PORT": str(cport)},
                    "labels": {
                        k: v for k, v in labels.items() if not k.startswith("com.docker.compose")
                    },
                }
            },
        }
        header = f"# Written by reconciler for image {image_id}; reconciler runs this service.\n"
        text = header + yaml.safe_dump(document, sort_keys=False)
        atomic_write(release.path / COMPOSE_FILE, text.encode())

    def _container(self, instance: Instance) -> Any | None:
        ref = instance.container_id or container_name(instance.project_id, instance.hash)
        try:
            container = self.client.containers.get(ref)
        except docker.errors.NotFound:
            return None
        return container if self._owned(container, instance.project_id) else None

    def alive(self, instance: Instance) -> bool:
        with _engine():
            container = self._container(instance)
            return container is not None and container.status == "running"

    def describe_exit(self, instance: Instance) -> str:
        try:
            with _engine():
                container = self._container(instance)
                if container is None:
                    return f"Start failed: the container of {instance.hash} disappeared"
                state = container.attrs.get("State", {})
                restarts = int(container.attrs.get("RestartCount") or 0)
                logs = container.logs(tail=20).decode("utf-8", "replace").strip()
        except (TransientError, docker.errors.DockerException) as exc:
            return f"Start failed: the container of {instance.hash} stopped ({exc})"
        if state.get("Running") and not state.get("Restarting") and restarts:
            how = f"kept exiting (Docker restarted it {restarts} times)"
        else:
            how = f"exited with code {state.get('ExitCode')}"
        return with_tail(
            f"Start failed: the container of {instance.hash} {how} before it became ready", logs
        )

    def stop(self, instance: Instance, *, timeout: float = 10) -> None:
        with _engine():
            container = self._container(instance)
            if container is None:
                return
            logger.info("stopping container %s", container.name)
            with contextlib.suppress(docker.errors.NotFound):
                container.stop(timeout=max(1, int(timeout)))
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)

    def observe(self, project_id: ProjectId) -> list[Instance]:
        check_project_id(project_id)
        with _engine():
            containers = self.client.containers.list(
                all=True,
                filters={"label": [f"{MANAGED_BY}={MANAGER}", f"{LABEL_PROJECT}={project_id}"]},
            )
        found = []
        for container in containers:
            labels = container.labels or {}
            version = labels.get(LABEL_HASH, "")
            if not self._owned(container, project_id) or not is_hash8(version):
                continue
            if container.status != "running":
                continue
            port_text = labels.get(LABEL_PORT, "")
            found.append(
                Instance(
                    project_id,
                    version,
                    self.name,
                    int(port_text) if port_text.isdigit() else None,
                    str(container.attrs.get("State", {}).get("StartedAt", "")),
                    container_id=container.id,
                )
            )
        return found

    def remove_version(self, project_id: ProjectId, version: str) -> None:
        tag = self.image_tag(check_project_id(project_id), version)
        with _engine():
            try:
                self.client.images.remove(tag)
            except docker.errors.ImageNotFound:
                return
            except docker.errors.APIError as exc:
                logger.warning("could not remove image %s: %s", tag, exc)

    # -- engine events ---------------------------------------------------------------------

    def watch(
        self, notify: Callable[[ProjectId | None], None], stop: threading.Event
    ) -> threading.Thread:
        """Report our containers that die or disappear; ``notify(None)`` = re-list all.

        When dockerd restarts the event stream ends silently: reconnect, then re-list.
        """

        current: list[Any] = []

        def close_on_stop() -> None:
            stop.wait()
            for stream in list(current):
                with contextlib.suppress(Exception):
                    stream.close()

        def loop() -> None:
            delay = 0.5
            while not stop.is_set():
                client = None
                try:
                    client = docker.DockerClient(timeout=30, **self._kwargs())
                    events = client.events(
                        decode=True,
                        filters={"type": "container", "label": f"{MANAGED_BY}={MANAGER}"},
                    )
                    current[:] = [events]
                    if stop.is_set():
                        events.close()
                    notify(None)
                    delay = 0.5
                    for event in events:
                        if stop.is_set():
                            break
                        action = str(event.get("Action", ""))
                        attrs = (event.get("Actor") or {}).get("Attributes") or {}
                        project = attrs.get(LABEL_PROJECT)
                        if action in ("die", "destroy", "stop", "kill", "oom", "start") and project:
                            with contextlib.suppress(ValueError):
                                notify(check_project_id(project))
                    client.close()
                except Exception as exc:
                    logger.debug("docker events: %s", exc)
                if stop.wait(delay):
                    return
                delay = min(delay * 2, 10)

        threading.Thread(target=close_on_stop, name="docker-events-closer", daemon=True).start()
        thread = threading.Thread(target=loop, name="docker-events", daemon=True)
        thread.start()
        return thread
