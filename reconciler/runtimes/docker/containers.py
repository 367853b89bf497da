"""Instances as containers: create and start, find, describe a death, stop and remove.

A container is named ``doce_prod_<id>_<hash8>`` and labelled with the project, hash and
published port. A failed start leaves no Created container behind; a name held by a container
we do not own is an error, never a removal.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

import docker.errors

from reconciler.core.errors import StartFailed, TransientError
from reconciler.core.kinds import RuntimeName
from reconciler.core.logfiles import DEFAULT_LIMITS, LogLimits
from reconciler.core.spec import Limits, ProjectId, ProjectSpec, is_hash8
from reconciler.core.timeutil import parse_iso, utcnow
from reconciler.runtimes.base import Instance, with_tail
from reconciler.runtimes.docker.engine import Engine, engine_calls
from reconciler.runtimes.docker.labels import (
    LABEL_CONFIG,
    LABEL_HASH,
    LABEL_PORT,
    LABEL_PROJECT,
    MANAGED_BY,
    MANAGER,
    container_name,
    instance_labels,
    owned,
)

logger = logging.getLogger(__name__)

# Docker keeps each container's output in json-file logs, rotated by size: bounded like ours.


def container_port(spec: ProjectSpec, image: Any) -> int:
    """The port the app listens on: ``start.port``, else the image's EXPOSE, else 3000."""
    if spec.start.port is not None:
        return spec.start.port
    exposed = (image.attrs.get("Config") or {}).get("ExposedPorts") or {}
    for key in sorted(exposed):
        number, _, proto = key.partition("/")
        if proto in ("", "tcp") and number.isdigit():
            return int(number)
    return 3000


TMP = "rw,noexec,nosuid,nodev,size=64m"  # every container's /tmp (the rest is read-only)


def volume_name(project_id: str, path: str) -> str:
    """The volume that keeps a declared writable path of a project, across its versions."""
    return f"reconciler-{project_id}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"


def writable_volumes(client: Any, project_id: ProjectId, paths: list[str]) -> dict[str, Any]:
    """A labelled volume per declared writable path (made on first use, kept after)."""
    volumes: dict[str, Any] = {}
    for path in paths:
        name = volume_name(project_id, path)
        try:
            client.volumes.get(name)
        except docker.errors.NotFound:
            client.volumes.create(
                name,
                labels={MANAGED_BY: MANAGER, LABEL_PROJECT: project_id, "reconciler.path": path},
            )
        volumes[name] = {"bind": path, "mode": "rw"}
    return volumes


def confinement(limits: Limits) -> dict[str, Any]:
    """What every container runs under: the limits, a read-only root with a small /tmp, no
    new privileges, no capabilities (ports above 1024 need none)."""
    options: dict[str, Any] = {
        "read_only": True,
        "tmpfs": {"/tmp": TMP},  # noqa: S108 - a path inside the container
        "security_opt": ["no-new-privileges"],
        "cap_drop": ["ALL"],
    }
    if limits.memory is not None:
        options["mem_limit"] = limits.memory
        options["memswap_limit"] = limits.memory  # no swap beyond it
    if limits.cpu is not None:
        options["nano_cpus"] = int(limits.cpu * 1e9)
    if limits.pids is not None:
        options["pids_limit"] = limits.pids
    return options


def run_container(
    engine: Engine,
    *,
    project_id: ProjectId,
    version: str,
    image: Any,
    spec: ProjectSpec,
    bind_host: str,
    port: int,
    cport: int,
    config: str,
    log_limits: LogLimits = DEFAULT_LIMITS,
    limits: Limits = Limits(),  # noqa: B008 - frozen
) -> Any:
    """Create and start the instance's container; remove it again if the start fails."""
    name = container_name(project_id, version, config)
    client = engine.client
    _clear_name(client, name, project_id)
    try:
        container = client.containers.create(
            image.id,
            name=name,
            labels=instance_labels(project_id, version, port, config),
            log_config={"type": "json-file", "config": log_limits.docker()},
            environment={**spec.plain_env, "PORT": str(cport)},
            ports={f"{cport}/tcp": (bind_host, port)},
            restart_policy={"Name": "unless-stopped"},
            volumes=writable_volumes(client, project_id, spec.start.writable),
            detach=True,
            **confinement(limits),
        )
    except docker.errors.APIError as exc:
        raise StartFailed(f"Start failed: cannot create {name}: {exc.explanation}") from None
    try:
        container.start()
    except docker.errors.APIError as exc:
        with contextlib.suppress(docker.errors.DockerException):
            container.remove(force=True)
        text = str(exc.explanation or exc)
        if "port is already allocated" in text or "address already in use" in text:
            raise TransientError(f"Port {port} is already in use: {text}", delay=2) from None
        raise StartFailed(f"Start failed: {name}: {text}") from None
    return container


def _clear_name(client: Any, name: str, project_id: ProjectId) -> None:
    try:
        existing = client.containers.get(name)
    except docker.errors.NotFound:
        return
    if not owned(existing, project_id):
        raise StartFailed(
            f"Start failed: a container named {name} exists and is not managed by "
            "reconciler; rename or remove it"
        )
    existing.remove(force=True)


def find(engine: Engine, instance: Instance) -> Any | None:
    """The instance's container, if it exists and is ours."""
    ref = instance.container_id or container_name(
        instance.project_id, instance.hash, instance.config
    )
    try:
        container = engine.client.containers.get(ref)
    except docker.errors.NotFound:
        return None
    return container if owned(container, instance.project_id) else None


def is_running(engine: Engine, instance: Instance) -> bool:
    with engine_calls():
        container = find(engine, instance)
        return container is not None and container.status == "running"


def describe_exit(engine: Engine, instance: Instance) -> str:
    try:
        with engine_calls():
            container = find(engine, instance)
            if container is None:
                why = _ENDED.pop((instance.project_id, instance.hash, instance.config), None)
                if why is not None:
                    return f"the container of {instance.hash} {why}"
                return f"Start failed: the container of {instance.hash} disappeared"
            state = container.attrs.get("State", {})
            restarts = int(container.attrs.get("RestartCount") or 0)
            logs = container.logs(tail=20).decode("utf-8", "replace").strip()
    except (TransientError, docker.errors.DockerException) as exc:
        return f"Start failed: the container of {instance.hash} stopped ({exc})"
    if state.get("Running") and not state.get("Restarting") and restarts:
        how = f"kept exiting (Docker restarted it {restarts} times)"
    else:
        how = ended(state)
    return with_tail(
        f"Start failed: the container of {instance.hash} {how} before it became ready", logs
    )


def stop_container(engine: Engine, instance: Instance, *, timeout: float) -> None:
    with engine_calls():
        container = find(engine, instance)
        if container is None:
            return
        logger.info("stopping container %s", container.name)
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            if timeout <= 0:
                container.kill()  # no grace: it is out of routing and its port is needed
            else:
                container.stop(timeout=max(1, round(timeout)))
        with contextlib.suppress(docker.errors.APIError):  # a leftover is removed later
            container.remove(force=True)


LEFTOVER_STATES = ("created", "exited", "dead")  # never started, or stopped by us
LEFTOVER_AGE = 10.0  # seconds a leftover is left alone: a start may be between two calls
# why containers that ended by themselves ended, kept from their removal until asked
_ENDED: dict[tuple[str, str, str | None], str] = {}
ENDED_KEPT = 1000


def ended(state: dict[str, Any]) -> str:
    if state.get("OOMKilled"):
        return "was killed for using more memory than its limit (out of memory)"
    return f"exited with code {state.get('ExitCode')}"


def running_instances(engine: Engine, project_id: ProjectId) -> list[Instance]:
    """Every running container of the project that carries our labels. Our containers that
    were created but never started, or stopped but not removed (a daemon killed between the
    two), are removed on the way: an unless-stopped container is only ever stopped by us."""
    with engine_calls():
        containers = engine.client.containers.list(
            all=True,
            filters={"label": [f"{MANAGED_BY}={MANAGER}", f"{LABEL_PROJECT}={project_id}"]},
        )
    found = []
    for container in containers:
        labels = container.labels or {}
        version = labels.get(LABEL_HASH, "")
        if not owned(container, project_id) or not is_hash8(version):
            continue
        if container.status in LEFTOVER_STATES:
            state = container.attrs.get("State") or {}
            since = container.attrs.get("Created") if container.status == "created" else (
                state.get("FinishedAt")
            )  # fmt: skip
            if _age(since) < LEFTOVER_AGE:
                continue  # a start under way may be about to start it, or to read its logs
            if container.status != "created":
                _ENDED[(project_id, version, labels.get(LABEL_CONFIG) or None)] = ended(state)
                while len(_ENDED) > ENDED_KEPT:  # the oldest go: bounded however many end
                    _ENDED.pop(next(iter(_ENDED)))
            logger.info(
                "%s: removing %s container %s", project_id, container.status, container.name
            )
            with engine_calls(), contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)  # (already going: someone else removes it)
            continue
        if container.status != "running":
            continue
        port_text = labels.get(LABEL_PORT, "")
        found.append(
            Instance(
                project_id,
                version,
                RuntimeName.DOCKER,
                int(port_text) if port_text.isdigit() else None,
                str(container.attrs.get("State", {}).get("StartedAt", "")),
                container_id=container.id,
                config=labels.get(LABEL_CONFIG) or None,
            )
        )
    return found


def started_instance(
    project_id: ProjectId, version: str, port: int, container: Any, config: str
) -> Instance:
    return Instance(
        project_id,
        version,
        RuntimeName.DOCKER,
        port,
        utcnow(),
        container_id=container.id,
        config=config,
    )


def _age(stamp: object) -> float:
    """Seconds since an engine timestamp; unknown (or the engine's zero time): very old."""
    if not isinstance(stamp, str) or not stamp or stamp.startswith("0001-"):
        return float("inf")
    try:
        return (datetime.now(UTC) - parse_iso(stamp)).total_seconds()
    except ValueError:
        return float("inf")
