"""The swarm runtime: releases are images, built as the docker runtime builds them; a project
runs as one Swarm service, ``doce_prod_<id>``, which Swarm itself rolls from image to image.

- **Rollouts by the engine.** A deploy, a rollback (a pin) or new settings update the service
  (image, env, replicas, placement, health check) with ``update_config`` order start-first,
  parallelism 1 and failure action rollback, and the desired file's health check as the
  container's: Swarm keeps old tasks serving until new ones are healthy, and puts the old
  spec back when a new task fails. ``rollout`` watches the update status and the tasks and
  reports them; a rollout Swarm rolled back is a failed deploy showing the task's error.
- **Addressing.** Each task publishes its container port in host mode on a port the engine
  picks; ``upstreams`` lists ``address:port`` of the tasks that run (the node's address, or
  127.0.0.1 on this node) for the edge. On this machine's engine the routing mesh did not
  answer; host ports do, here and on a cluster (the edge must reach the nodes).
- **Ownership by label only.** The service carries ``reconciler.managed-by`` and the project,
  plus the version, settings and replica count it was given; a service of the same name
  without them is an error, never touched. One scaled by hand is scaled back when observed;
  one removed by hand is not observed, and the controller starts it again (a repair).
- **More than one node.** With ``--swarm-registry`` every image is pushed there after its
  build, and services name it there, so any node can pull it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker.errors
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

from reconciler.core.errors import Cancelled, StartFailed, TransientError
from reconciler.core.kinds import RuntimeName
from reconciler.core.logfiles import DEFAULT_LIMITS, LogLimits
from reconciler.core.spec import (
    REGISTRY_RE,
    InvalidProjectId,
    Limits,
    ProjectId,
    ProjectSpec,
    check_project_id,
    is_hash8,
)
from reconciler.core.timeutil import utcnow
from reconciler.runtimes.base import (
    BuildResult,
    Instance,
    Notify,
    ServiceTasks,
    Usage,
    with_tail,
)
from reconciler.runtimes.docker.containers import container_port, volume_name
from reconciler.runtimes.docker.engine import engine_calls
from reconciler.runtimes.docker.events import watch_events
from reconciler.runtimes.docker.labels import (
    LABEL_CONFIG,
    LABEL_HASH,
    LABEL_PROJECT,
    MANAGED_BY,
    MANAGER,
)
from reconciler.runtimes.docker.runtime import DockerRuntime
from reconciler.stores.releases import Release

logger = logging.getLogger(__name__)

LABEL_REPLICAS = "reconciler.replicas"
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


class SwarmRuntime(DockerRuntime):
    """Builds as ``DockerRuntime`` does; runs each project as one Swarm service."""

    name = RuntimeName.SWARM

    def __init__(
        self,
        *,
        image_prefix: str = "reconciler",
        base_url: str | None = None,
        registry: str | None = None,
        stop_grace: float = 10.0,
        log_limits: LogLimits = DEFAULT_LIMITS,
        limits: Limits = Limits(),  # noqa: B008 - frozen
        build_limits: Limits = Limits(),  # noqa: B008 - frozen
    ) -> None:
        super().__init__(
            image_prefix=image_prefix, base_url=base_url, log_limits=log_limits,
            limits=limits, build_limits=build_limits,
        )  # fmt: skip
        self.registry = check_registry(registry) if registry else None
        self.stop_grace = stop_grace
        self._node: str | None = None

    # -- images ----------------------------------------------------------------------------

    def image_ref(self, project_id: str, version: str) -> str:
        """What the service runs: the local tag, or its name in the registry."""
        tag = self.image_tag(project_id, version)
        return f"{self.registry}/{tag}" if self.registry else tag

    def finish_build(self, result: BuildResult, release: Release) -> None:
        super().finish_build(result, release)
        if self.registry is None:
            return
        ref = self.image_ref(release.project_id, release.hash)
        repo, tag = ref.rsplit(":", 1)
        with engine_calls():
            client = self.engine.client
            client.images.get(self.image_tag(release.project_id, release.hash)).tag(repo, tag)
            for line in client.api.push(repo, tag=tag, stream=True, decode=True):
                if "error" in line:
                    raise TransientError(f"could not push {ref}: {line['error']}", delay=10)

    def remove_version(self, project_id: ProjectId, version: str) -> None:
        super().remove_version(project_id, version)
        if self.registry is not None:
            with engine_calls(), contextlib.suppress(docker.errors.APIError):
                self.engine.client.images.remove(self.image_ref(project_id, version))

    # -- the swarm -------------------------------------------------------------------------

    @property
    def api(self) -> Any:
        return self.engine.client.api

    def _manager(self) -> dict[str, Any]:
        """The engine's swarm facts; StartFailed when it cannot run services."""
        with engine_calls():
            info = self.engine.client.info()
        swarm = info.get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise StartFailed(
                "Start failed: the Docker engine is not a swarm manager (runtime: swarm needs "
                "one: 'docker swarm init' on a single host, or point --docker-host at a manager)"
            )
        return dict(swarm)

    def _service(self, project_id: str) -> dict[str, Any] | None:
        with engine_calls():
            try:
                return dict(self.api.inspect_service(service_name(project_id)))
            except docker.errors.NotFound:
                return None

    def _tasks(self, service_id: str) -> list[Task]:
        with engine_calls():
            try:
                raw = self.api.tasks(filters={"service": service_id})
            except docker.errors.NotFound:
                return []
        return [_task(t) for t in raw]

    def _addresses(self) -> dict[str, str]:
        """Each node's address for the edge: 127.0.0.1 for this node, else its own."""
        with engine_calls():
            if self._node is None:  # this node's id: fixed while it is in the swarm
                self._node = (self.engine.client.info().get("Swarm") or {}).get("NodeID")
            nodes = self.api.nodes()
        found = {}
        for node in nodes:
            addr = str((node.get("Status") or {}).get("Addr") or "")
            if node.get("ID") == self._node or addr in ("", "0.0.0.0"):
                addr = "127.0.0.1"
            found[str(node.get("ID"))] = addr
        return found

    def tasks(self, project_id: ProjectId) -> ServiceTasks | None:
        """Where the project's service's running tasks answer, and how many of how many
        wanted run (one read of the service and its tasks); None without a service."""
        service = self._service(project_id)
        if service is None or not owned_service(service, project_id):
            return None
        tasks = self._tasks(service["ID"])
        upstreams = self._upstreams(tasks)
        return ServiceTasks(upstreams, len(upstreams), _wanted_replicas(service))

    def _upstreams(self, tasks: list[Task]) -> tuple[str, ...]:
        serving = [t for t in tasks if t.serving]
        if not serving:
            return ()
        addresses = self._addresses()
        return tuple(sorted(f"{addresses.get(t.node, '127.0.0.1')}:{t.port}" for t in serving))

    # -- instances -------------------------------------------------------------------------

    def service_spec(
        self, release: Release, spec: ProjectSpec, *, cport: int, config: str
    ) -> dict[str, Any]:
        """The whole service, as ``create_service`` and ``update_service`` take it."""
        pid, version = release.project_id, release.hash
        health = spec.health
        url = f"http://127.0.0.1:{cport}{health.path}"
        test = spec.deploy.healthcheck or ["wget", "-q", "-O", "/dev/null", url]
        container = ContainerSpec(
            image=self.image_ref(pid, version),
            env={**spec.env, "PORT": str(cport)},
            labels={LABEL_SERVICE_OF: pid, LABEL_HASH: version, LABEL_CONFIG: config},
            healthcheck=Healthcheck(
                test=["CMD", *test],
                interval=_ns(health.interval),
                timeout=_ns(min(health.timeout, 5.0)),
                retries=3,
                start_period=_ns(health.timeout),
            ),
            stop_grace_period=_ns(self.stop_grace),
            read_only=True,
            cap_drop=["ALL"],
            mounts=[
                Mount("/tmp", None, type="tmpfs", tmpfs_size=64 << 20),  # noqa: S108
                *(
                    Mount(path, volume_name(pid, path), type="volume")
                    for path in spec.start.writable
                ),
            ],
        )
        limits = spec.limits.otherwise(self.limits)
        template = TaskTemplate(
            container_spec=container,
            restart_policy=RestartPolicy(condition="any", delay=NS),
            placement=Placement(constraints=list(spec.deploy.placement.constraints)),
            resources=Resources(
                cpu_limit=int(limits.cpu * 1e9) if limits.cpu is not None else None,
                mem_limit=limits.memory,
            ),
            log_driver=DriverConfig("json-file", self.log_limits.docker()),
        )
        monitor = _ns(max(1.0, min(health.interval, 5.0)))
        return {
            "task_template": template,
            "name": service_name(pid),
            "labels": {
                MANAGED_BY: MANAGER,
                LABEL_PROJECT: pid,
                LABEL_HASH: version,
                LABEL_CONFIG: config,
                LABEL_REPLICAS: str(spec.deploy.replicas),
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

    def start(self, release: Release, spec: ProjectSpec, *, port: int, config: str) -> Instance:
        """Create the project's service, or update it to ``release``; returns at once (the
        rollout is ``rollout``'s to watch). ``port`` is not used: tasks get their own."""
        self._manager()
        pid = release.project_id
        image = self.release_image(release)
        kwargs = self.service_spec(release, spec, cport=container_port(spec, image), config=config)
        existing = self._service(pid)
        with engine_calls():
            try:
                if existing is None:
                    logger.info("%s: creating service %s (%s)", pid, kwargs["name"], release.hash)
                    created = self.api.create_service(**kwargs)
                    service_id = str(created["ID"])
                else:
                    if not owned_service(existing, pid):
                        raise StartFailed(
                            f"Start failed: a service named {kwargs['name']} exists and is not "
                            "managed by reconciler; rename or remove it"
                        )
                    service_id = str(existing["ID"])
                    logger.info("%s: updating service %s to %s", pid, kwargs["name"], release.hash)
                    self.api.update_service(service_id, existing["Version"]["Index"], **kwargs)
            except docker.errors.APIError as exc:
                text = str(exc.explanation or exc)
                if "out of sequence" in text:  # changed between our read and our write
                    raise TransientError(
                        f"the service changed meanwhile: {text}", delay=1
                    ) from None
                raise StartFailed(f"Start failed: {kwargs['name']}: {text}") from None
        return Instance(
            pid, release.hash, self.name, None, utcnow(), container_id=service_id, config=config
        )

    def rollout(
        self,
        instance: Instance,
        spec: ProjectSpec,
        *,
        cancel: threading.Event,
        progress: Callable[[str], None],
        tasks_changed: Callable[[tuple[str, ...]], None],
    ) -> None:
        """Wait until every task of the service runs ``instance`` and is healthy, and Swarm
        calls the update complete. ``tasks_changed`` sees the serving tasks' addresses each
        time they change (the edge follows them). Raises StartFailed when Swarm rolled the
        update back, a new service's tasks keep failing, or it takes longer than the health
        timeout per replica (then the update is rolled back here); Cancelled on ``cancel``
        (rolled back too: the next deploy starts from the version that served)."""
        pid = instance.project_id
        wanted = spec.deploy.replicas
        deadline = time.monotonic() + spec.health.timeout * wanted + 10
        said = ""
        routed: tuple[tuple[str, int | None], ...] | None = None
        while True:
            service = self._service(pid)
            if service is None or not owned_service(service, pid):
                raise StartFailed(f"Start failed: service {service_name(pid)} was removed")
            tasks = self._tasks(service["ID"])
            serving = tuple(sorted(((t.node, t.port) for t in tasks if t.serving), key=str))
            if serving != routed:  # (the nodes' addresses are read only when tasks move)
                tasks_changed(self._upstreams(tasks))
                routed = serving
            update = service.get("UpdateStatus") or {}
            state = str(update.get("State", ""))
            if not runs(service.get("Spec"), instance):
                self._rolled_back(instance, service, tasks, tasks_changed)
            ours = [t for t in tasks if (t.version, t.config) == (instance.hash, instance.config)]
            ready = sum(1 for t in ours if t.serving)
            others = sum(1 for t in tasks if t.desired == "running" and t not in ours)
            failed = [t for t in ours if t.state in ("failed", "rejected")]
            message = f"Rollout of {instance.hash}: {ready}/{wanted} tasks healthy"
            if message != said:
                progress(message)
                said = message
            if ready >= wanted and others == 0 and state not in ("updating", "rollback_started"):
                return
            if not update and len(failed) >= FAILED_TASKS:
                raise StartFailed(
                    with_tail(
                        f"Start failed: the tasks of {instance.hash} keep failing "
                        f"({len(failed)} failed): {_errors(failed)}",
                        self._task_logs(failed),
                    )
                    + f"\n{_hint(pid)}"
                )
            if cancel.is_set():
                self.abandon(instance)
                raise Cancelled("rollout cancelled")
            if time.monotonic() > deadline:
                self.abandon(instance)
                pending = [t for t in ours if not t.serving and t.desired == "running"]
                why = _errors(pending) or _errors(failed) or "no task became healthy"
                raise StartFailed(
                    f"Health check timeout: the rollout of {instance.hash} did not finish within "
                    f"{spec.health.timeout:g} s per replica ({ready}/{wanted} healthy; {why}); "
                    "rolled back\n" + _hint(pid)
                )
            time.sleep(POLL)

    def _rolled_back(
        self,
        instance: Instance,
        service: dict[str, Any],
        tasks: list[Task],
        tasks_changed: Callable[[tuple[str, ...]], None],
    ) -> None:
        """The service's spec is not ours any more: Swarm rolled the update back (or someone
        else updated it). Wait for the rollback to finish, following its tasks; then fail."""
        pid = instance.project_id
        update = service.get("UpdateStatus") or {}
        deadline = time.monotonic() + ROLLBACK_WAIT
        while str(update.get("State", "")) == "rollback_started" and time.monotonic() < deadline:
            time.sleep(POLL)
            current = self._service(pid)
            if current is None:
                break
            service, update = current, current.get("UpdateStatus") or {}
            tasks_changed(self._upstreams(self._tasks(current["ID"])))
        failed = [
            t
            for t in tasks
            if (t.version, t.config) == (instance.hash, instance.config)
            and t.state in ("failed", "rejected", "shutdown")
            and t.error
        ]
        back_to = (service["Spec"].get("Labels") or {}).get(LABEL_HASH, "?")
        reason = str(update.get("Message") or "the service was changed by someone else")
        raise StartFailed(
            with_tail(
                f"Rollout failed: Swarm rolled the service back to {back_to} ({reason})"
                + (f"; task error: {_errors(failed)}" if failed else ""),
                self._task_logs(failed),
            )
            + f"\n{_hint(pid)}"
        )

    def abandon(self, instance: Instance) -> None:
        """Undo a rollout that will not finish: put back the spec the service had before it
        (Swarm rolls the tasks back), or remove a service that had none (a first deploy)."""
        service = self._service(instance.project_id)
        if service is None or not owned_service(service, instance.project_id):
            return
        if not runs(service.get("Spec"), instance):
            return  # not ours any more (Swarm rolled it back already)
        previous = service.get("PreviousSpec")
        with engine_calls(), contextlib.suppress(docker.errors.NotFound):
            if previous is None:
                logger.info("%s: removing service %s", instance.project_id, service["ID"][:12])
                self.api.remove_service(service["ID"])
                return
            logger.info("%s: rolling service back", instance.project_id)
            self._put_spec(service, previous)

    def _task_logs(self, tasks: list[Task]) -> str:
        """The last lines of the first failed task's container, when it ran on this node."""
        for task in tasks:
            if task.container:
                with contextlib.suppress(Exception), engine_calls():
                    container = self.engine.client.containers.get(task.container)
                    return str(container.logs(tail=20).decode("utf-8", "replace").strip())
        return ""

    def alive(self, instance: Instance) -> bool:
        """The service runs ``instance``, or is being rolled on from it (its tasks serve
        until the rollout replaces them)."""
        service = self._service(instance.project_id)
        if service is None or not owned_service(service, instance.project_id):
            return False
        return runs(service.get("Spec"), instance) or runs(service.get("PreviousSpec"), instance)

    def usage(self, instance: Instance) -> Usage | None:
        """Tasks run on any node: not sampled here (``docker service ps``, or the nodes'
        own metrics)."""
        return None

    def describe_exit(self, instance: Instance) -> str:
        return (
            f"the service {service_name(instance.project_id)} of {instance.hash} is gone "
            "(removed outside reconciler?)"
        )

    def stop(self, instance: Instance, *, timeout: float = 10) -> None:
        """Remove the service when it runs ``instance``; an instance the service has been
        rolled on from is already stopped (Swarm replaced its tasks), so nothing happens."""
        service = self._service(instance.project_id)
        if service is None or not owned_service(service, instance.project_id):
            return
        if not runs(service.get("Spec"), instance):
            return
        logger.info(
            "%s: removing service %s", instance.project_id, service_name(instance.project_id)
        )
        with engine_calls(), contextlib.suppress(docker.errors.NotFound):
            self.api.remove_service(service["ID"])
        deadline = time.monotonic() + timeout + 5
        while time.monotonic() < deadline:  # its tasks stop with their grace period
            with engine_calls():
                left = self.engine.client.containers.list(
                    all=True, filters={"label": f"{LABEL_SERVICE_OF}={instance.project_id}"}
                )
            if not [c for c in left if c.status == "running"]:
                return
            time.sleep(0.1)

    def observe(self, project_id: ProjectId) -> list[Instance]:
        """The project's service, as the instance its labels name; put back to the replicas
        it was given when someone scaled it."""
        with engine_calls():
            services = self.api.services(
                filters={"label": [f"{MANAGED_BY}={MANAGER}", f"{LABEL_PROJECT}={project_id}"]}
            )
        found = []
        for service in services:
            labels = service["Spec"].get("Labels") or {}
            version = labels.get(LABEL_HASH, "")
            if not owned_service(service, project_id) or not is_hash8(version):
                continue
            if service["Spec"].get("Name") != service_name(project_id):
                continue
            self._scale_back(project_id, service)
            found.append(
                Instance(
                    project_id,
                    version,
                    self.name,
                    None,
                    str(service.get("UpdatedAt", "")),
                    container_id=str(service["ID"]),
                    config=labels.get(LABEL_CONFIG) or None,
                )
            )
        return found

    def _scale_back(self, project_id: ProjectId, service: dict[str, Any]) -> None:
        spec = service["Spec"]
        given = (spec.get("Labels") or {}).get(LABEL_REPLICAS, "")
        replicated = (spec.get("Mode") or {}).get("Replicated")
        if not given.isdigit() or replicated is None:
            return
        now = int(replicated.get("Replicas", 0))
        if now == int(given):
            return
        logger.warning(
            "%s: service %s was scaled to %d by hand; putting it back to %s replicas",
            project_id, spec.get("Name"), now, given,
        )  # fmt: skip
        with engine_calls(), contextlib.suppress(docker.errors.APIError):
            self._put_spec(service, {**spec, "Mode": {"Replicated": {"Replicas": int(given)}}})

    def _put_spec(self, service: dict[str, Any], spec: dict[str, Any]) -> None:
        """Give ``service`` the whole ``spec`` (as the engine reports one) at its version."""
        self.api.update_service(
            service["ID"],
            service["Version"]["Index"],
            task_template=spec["TaskTemplate"],
            name=spec["Name"],
            labels=spec.get("Labels"),
            mode=spec.get("Mode"),
            update_config=spec.get("UpdateConfig"),
            rollback_config=spec.get("RollbackConfig"),
            endpoint_spec=spec.get("EndpointSpec"),
        )

    def watch(self, notify: Notify, stop: threading.Event) -> None:
        """Service and task-container events as they happen on this node, and every
        ``WATCH_POLL`` seconds a comparison of every service's tasks (other nodes' too)."""
        watch_events(
            self.engine,
            notify,
            stop,
            filters={"type": ["service", "container"]},
            project_of=_project_of_event,
            name="swarm-events",
        )
        thread = threading.Thread(
            target=self._poll, args=(notify, stop), name="swarm-poll", daemon=True
        )
        thread.start()

    def _poll(self, notify: Notify, stop: threading.Event) -> None:
        seen: dict[str, tuple[Any, ...]] = {}
        while not stop.wait(WATCH_POLL):
            try:
                with engine_calls():
                    services = self.api.services(filters={"label": f"{MANAGED_BY}={MANAGER}"})
                    raw = self.api.tasks(filters={"desired-state": "running"})
            except Exception as exc:  # the engine is away: the event watch reconnects
                logger.debug("swarm poll: %s", exc)
                continue
            by_service: dict[str, list[tuple[str, str, int | None]]] = {}
            for item in raw:
                task = _task(item)
                by_service.setdefault(str(item.get("ServiceID")), []).append(
                    (task.node, task.state, task.port)
                )
            now: dict[str, tuple[Any, ...]] = {}
            for service in services:
                project = (service["Spec"].get("Labels") or {}).get(LABEL_PROJECT, "")
                now[project] = (
                    service["Version"]["Index"],
                    tuple(sorted(by_service.get(service["ID"], []), key=str)),
                )
            for project in set(now) | set(seen):
                if now.get(project) != seen.get(project):
                    with contextlib.suppress(InvalidProjectId):
                        notify(check_project_id(project))
            seen = now


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
