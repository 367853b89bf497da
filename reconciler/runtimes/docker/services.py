"""Swarm services as this runtime names and reads them: the service name, labels and tasks,
ownership, the registry setting, and what a rollout's failure says."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from docker.types import (
    ContainerSpec,
    DriverConfig,
    EndpointSpec,
    Healthcheck,
    Mount,
    Placement,
    Resources,
    RestartPolicy,
    RollbackConfig,
    ServiceMode,
    TaskTemplate,
    UpdateConfig,
)

from reconciler.core.logfiles import LogLimits
from reconciler.core.spec import (
    REGISTRY_RE,
    Limits,
    ProjectSpec,
)
from reconciler.runtimes.base import (
    Instance,
)
from reconciler.runtimes.docker.containers import volume_name
from reconciler.runtimes.docker.labels import (
    LABEL_CONFIG,
    LABEL_HASH,
    LABEL_PORT,
    LABEL_PROJECT,
    MANAGED_BY,
    MANAGER,
)
from reconciler.stores.releases import Release

logger = logging.getLogger(__name__)


LABEL_REPLICAS = "reconciler.replicas"
LABEL_DOMAINS = "reconciler.domains"  # the site's domains, for an edge on another node
LABEL_ASLEEP = "reconciler.asleep"  # scaled to 0 while the site sleeps (not put back)


LABEL_SERVICE_OF = "reconciler.service-of"  # on task containers (not managed-by: they are Swarm's)


SERVICE_PREFIX = "doce_prod_"


POLL = 0.1  # how often a rollout looks at the service and its tasks


WATCH_POLL = 2.0  # how often the watch compares every service's tasks (other nodes' included)


FAILED_TASKS = 3  # a new service whose tasks failed this often is a failed deploy


ROLLBACK_WAIT = 120.0  # how long a failed rollout waits for Swarm to finish rolling back


NS = 1_000_000_000


def service_name(project_id: str) -> str:
    return f"{SERVICE_PREFIX}{project_id}"


def check_registry(value: str) -> str:
    if not REGISTRY_RE.match(value):
        raise ValueError(f"--swarm-registry {value!r} must read host[:port][/path]")
    return value


def _ns(seconds: float) -> int:
    return max(1, int(seconds * NS))


def owned_service(service: dict[str, Any], project_id: str | None = None) -> bool:
    labels = (service.get("Spec") or {}).get("Labels") or {}
    if labels.get(MANAGED_BY) != MANAGER:
        return False
    return project_id is None or labels.get(LABEL_PROJECT) == project_id


@dataclass(frozen=True)
class Task:
    """One task of a service, as the rollout and the edge need it."""

    id: str
    state: str  # Swarm's task state: new ... starting, running, failed, shutdown, rejected
    desired: str  # running or shutdown
    version: str | None  # the release its container runs
    config: str | None
    node: str
    port: int | None  # published in host mode on the task's node
    error: str | None
    container: str | None

    @property
    def serving(self) -> bool:
        return self.state == "running" and self.desired == "running" and self.port is not None


def _task(raw: dict[str, Any]) -> Task:
    spec = (raw.get("Spec") or {}).get("ContainerSpec") or {}
    labels = spec.get("Labels") or {}
    status = raw.get("Status") or {}
    ports = (status.get("PortStatus") or {}).get("Ports") or []
    published = next((p.get("PublishedPort") for p in ports if p.get("PublishedPort")), None)
    return Task(
        str(raw.get("ID", "")),
        str(status.get("State", "")),
        str(raw.get("DesiredState", "")),
        labels.get(LABEL_HASH),
        labels.get(LABEL_CONFIG),
        str(raw.get("NodeID", "")),
        int(published) if published else None,
        status.get("Err"),
        (status.get("ContainerStatus") or {}).get("ContainerID"),
    )


def runs(spec: dict[str, Any] | None, instance: Instance) -> bool:
    """``spec`` (a service's, as the engine reports it) runs ``instance``'s version and
    settings."""
    labels = (spec or {}).get("Labels") or {}
    return (labels.get(LABEL_HASH), labels.get(LABEL_CONFIG)) == (instance.hash, instance.config)


def _wanted_replicas(service: dict[str, Any]) -> int:
    replicated = (service["Spec"].get("Mode") or {}).get("Replicated") or {}
    return int(replicated.get("Replicas", 0))


def _hint(project_id: str) -> str:
    return f"Tasks: docker service ps {service_name(project_id)} --no-trunc"


def _errors(tasks: list[Task]) -> str:
    seen: list[str] = []
    for task in tasks:
        text = task.error or task.state
        if text and text not in seen:
            seen.append(text)
    return "; ".join(seen[:3])


def _project_of_event(event: dict[str, Any]) -> str | None:
    attrs = (event.get("Actor") or {}).get("Attributes") or {}
    if event.get("Type") == "service":
        name = str(attrs.get("name", ""))
        return name[len(SERVICE_PREFIX) :] if name.startswith(SERVICE_PREFIX) else None
    return attrs.get(LABEL_SERVICE_OF)


def service_spec(
    release: Release,
    spec: ProjectSpec,
    *,
    image: str,
    cport: int,
    config: str,
    stop_grace: float,
    limits: Limits,
    log_limits: LogLimits,
    port: int | None = None,
) -> dict[str, Any]:
    """The whole service, as ``create_service`` and ``update_service`` take it (pure).
    ``port``: the site's public port, and its domains, as labels (an edge on another node
    serves the service there: ``reconciler edge-node``)."""
    project_id, version = release.project_id, release.hash
    health = spec.health
    container = _container(release, spec, image=image, cport=cport, config=config,
                           stop_grace=stop_grace)  # fmt: skip
    wanted = spec.limits.otherwise(limits)
    template = TaskTemplate(
        container_spec=container,
        restart_policy=RestartPolicy(condition="any", delay=NS),
        placement=Placement(constraints=list(spec.deploy.placement.constraints)),
        resources=Resources(
            cpu_limit=int(wanted.cpu * 1e9) if wanted.cpu is not None else None,
            mem_limit=wanted.memory,
        ),
        log_driver=DriverConfig("json-file", log_limits.docker()),
    )
    monitor = _ns(max(1.0, min(health.interval, 5.0)))
    return {
        "task_template": template,
        "name": service_name(project_id),
        "labels": {
            MANAGED_BY: MANAGER,
            LABEL_PROJECT: project_id,
            LABEL_HASH: version,
            LABEL_CONFIG: config,
            LABEL_REPLICAS: str(spec.deploy.replicas),
            **({LABEL_PORT: str(port)} if port is not None else {}),
            **({LABEL_DOMAINS: ",".join(spec.domains)} if spec.domains else {}),
        },
        "mode": ServiceMode("replicated", replicas=spec.deploy.replicas),
        "update_config": UpdateConfig(
            parallelism=1,
            delay=0,
            failure_action="rollback",
            monitor=monitor,
            max_failure_ratio=0,
            order="start-first",
        ),
        "rollback_config": RollbackConfig(
            parallelism=0,  # every task at once: the old version is known to work
            delay=0,
            failure_action="pause",
            monitor=monitor,
            order="start-first",
        ),
        "endpoint_spec": EndpointSpec(
            mode="vip",
            ports=[{"TargetPort": cport, "Protocol": "tcp", "PublishMode": "host"}],
        ),
    }


def _container(
    release: Release, spec: ProjectSpec, *, image: str, cport: int, config: str, stop_grace: float
) -> ContainerSpec:
    """A task's container: read-only, no capabilities, the desired file's health check."""
    project_id, version = release.project_id, release.hash
    health = spec.health
    url = f"http://127.0.0.1:{cport}{health.path}"
    test = spec.deploy.healthcheck or ["wget", "-q", "-O", "/dev/null", url]
    return ContainerSpec(
        image=image,
        env={**spec.plain_env, "PORT": str(cport)},
        labels={LABEL_SERVICE_OF: project_id, LABEL_HASH: version, LABEL_CONFIG: config},
        healthcheck=Healthcheck(
            test=["CMD", *test],
            interval=_ns(health.interval),
            timeout=_ns(min(health.timeout, 5.0)),
            retries=3,
            start_period=_ns(health.timeout),
        ),
        stop_grace_period=_ns(stop_grace),
        read_only=True,
        cap_drop=["ALL"],
        mounts=[
            Mount("/tmp", None, type="tmpfs", tmpfs_size=64 << 20),  # noqa: S108
            *(
                Mount(path, volume_name(project_id, path), type="volume")
                for path in spec.start.writable
            ),
        ],
    )
