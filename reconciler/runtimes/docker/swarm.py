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
import socket
import time
from typing import Any

import docker.errors

from reconciler.core.errors import StartFailed, TransientError
from reconciler.core.kinds import RuntimeName
from reconciler.core.logfiles import DEFAULT_LIMITS, LogLimits
from reconciler.core.spec import (
    Limits,
    ProjectId,
    ProjectSpec,
    is_hash8,
)
from reconciler.core.timeutil import utcnow
from reconciler.runtimes.base import (
    BuildResult,
    Instance,
    ServiceTasks,
    Usage,
)
from reconciler.runtimes.docker.containers import container_port
from reconciler.runtimes.docker.engine import engine_calls
from reconciler.runtimes.docker.labels import (
    LABEL_CONFIG,
    LABEL_HASH,
    LABEL_PROJECT,
    MANAGED_BY,
    MANAGER,
)
from reconciler.runtimes.docker.rollout import Rollouts
from reconciler.runtimes.docker.runtime import DockerRuntime
from reconciler.runtimes.docker.services import (  # noqa: F401 - importable from here too
    FAILED_TASKS,
    LABEL_ASLEEP,
    LABEL_REPLICAS,
    LABEL_SERVICE_OF,
    NS,
    POLL,
    ROLLBACK_WAIT,
    SERVICE_PREFIX,
    WATCH_POLL,
    Task,
    _errors,
    _hint,
    _ns,
    _project_of_event,
    _task,
    _wanted_replicas,
    check_registry,
    logger,
    owned_service,
    runs,
    service_name,
    service_spec,
)
from reconciler.stores.releases import Release


class SwarmRuntime(Rollouts, DockerRuntime):
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
                "one: 'docker swarm init' on a single host, or point DOCKER_HOST at a manager)"
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

    def _nodes(self) -> dict[str, tuple[str, str, bool]]:
        """Each node's (address for the edge, hostname, ready): the address is its own, or
        127.0.0.1 for the engine's node when that is this host (its address is one of this
        host's, or it has none); a manager reached from another host (or another network
        namespace) is reached by its address."""
        with engine_calls():
            if self._node is None:  # this node's id: fixed while it is in the swarm
                self._node = (self.engine.client.info().get("Swarm") or {}).get("NodeID")
            nodes = self.api.nodes()
        found = {}
        for node in nodes:
            status = node.get("Status") or {}
            addr = str(status.get("Addr") or "")
            if addr in ("", "0.0.0.0") or (node.get("ID") == self._node and is_local(addr)):
                addr = "127.0.0.1"
            name = str((node.get("Description") or {}).get("Hostname") or node.get("ID"))
            found[str(node.get("ID"))] = (addr, name, status.get("State") == "ready")
        return found

    def tasks(self, project_id: ProjectId) -> ServiceTasks | None:
        """Where the project's service's running tasks answer, how many of how many wanted
        run, and the nodes that went down under its tasks (a task Swarm is taking off a down
        node still reads running there; one read of the service, its tasks and the nodes);
        None without a service."""
        service = self._service(project_id)
        if service is None or not owned_service(service, project_id):
            return None
        tasks = self._tasks(service["ID"])
        nodes = self._nodes()
        upstreams = self._upstreams(tasks, nodes)
        down = sorted(
            {f"{nodes[t.node][1]} ({nodes[t.node][0]})" for t in tasks
             if "running" in (t.desired, t.state) and t.node in nodes and not nodes[t.node][2]}
        )  # fmt: skip
        return ServiceTasks(upstreams, len(upstreams), _wanted_replicas(service), tuple(down))

    def _upstreams(
        self, tasks: list[Task], nodes: dict[str, tuple[str, str, bool]] | None = None
    ) -> tuple[str, ...]:
        """``address:port`` of the tasks that serve, but those on a node that is down (its
        tasks may still read running until Swarm reschedules them)."""
        serving = [t for t in tasks if t.serving]
        if not serving:
            return ()
        nodes = nodes if nodes is not None else self._nodes()
        return tuple(
            sorted(
                f"{nodes[t.node][0] if t.node in nodes else '127.0.0.1'}:{t.port}"
                for t in serving
                if t.node not in nodes or nodes[t.node][2]
            )
        )

    # -- instances -------------------------------------------------------------------------

    def start(self, release: Release, spec: ProjectSpec, *, port: int, config: str) -> Instance:
        """Create the project's service, or update it to ``release``; returns at once (the
        rollout is ``rollout``'s to watch). ``port``, the site's, is a label (tasks get
        ports of their own)."""
        self._manager()
        project_id = release.project_id
        image = self.release_image(release)
        kwargs = service_spec(
            release,
            spec,
            image=self.image_ref(release.project_id, release.hash),
            cport=container_port(spec, image),
            config=config,
            stop_grace=self.stop_grace,
            limits=self.limits,
            log_limits=self.log_limits,
            port=port,
        )
        existing = self._service(project_id)
        with engine_calls():
            try:
                if existing is None:
                    logger.info(
                        "%s: creating service %s (%s)", project_id, kwargs["name"], release.hash
                    )
                    created = self.api.create_service(**kwargs)
                    service_id = str(created["ID"])
                else:
                    if not owned_service(existing, project_id):
                        raise StartFailed(
                            f"Start failed: a service named {kwargs['name']} exists and is not "
                            "managed by reconciler; rename or remove it"
                        )
                    service_id = str(existing["ID"])
                    logger.info(
                        "%s: updating service %s to %s", project_id, kwargs["name"], release.hash
                    )
                    self.api.update_service(service_id, existing["Version"]["Index"], **kwargs)
            except docker.errors.APIError as exc:
                text = str(exc.explanation or exc)
                if "out of sequence" in text:  # changed between our read and our write
                    raise TransientError(
                        f"the service changed meanwhile: {text}", delay=1
                    ) from None
                raise StartFailed(f"Start failed: {kwargs['name']}: {text}") from None
        return Instance(
            project_id,
            release.hash,
            self.name,
            None,
            utcnow(),
            container_id=service_id,
            config=config,
        )

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
                    asleep=bool(labels.get(LABEL_ASLEEP)),
                )
            )
        return found


def is_local(addr: str) -> bool:
    """Whether ``addr`` is one of this host's addresses (it can be bound here)."""
    try:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((addr, 0))
    except OSError:
        return False
    return True
