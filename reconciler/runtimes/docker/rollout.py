"""A rollout watched: Swarm rolls a service from version to version (start-first, one task at a
time, rolling back on failure); this follows it to the end and reports it as the other runtimes
do, and puts back a service changed or removed by hand."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import docker.errors

from reconciler.core.errors import Cancelled, StartFailed
from reconciler.core.spec import (
    InvalidProjectId,
    ProjectId,
    ProjectSpec,
    check_project_id,
)
from reconciler.runtimes.base import (
    Instance,
    OnChange,
    with_tail,
)
from reconciler.runtimes.docker.engine import Engine, engine_calls
from reconciler.runtimes.docker.events import watch_events
from reconciler.runtimes.docker.labels import (
    LABEL_HASH,
    LABEL_PROJECT,
    MANAGED_BY,
    MANAGER,
)
from reconciler.runtimes.docker.services import (
    FAILED_TASKS,
    LABEL_ASLEEP,
    LABEL_REPLICAS,
    POLL,
    ROLLBACK_WAIT,
    WATCH_POLL,
    Task,
    _errors,
    _hint,
    _project_of_event,
    _task,
    logger,
    owned_service,
    runs,
    service_name,
)


class Rollouts:
    if TYPE_CHECKING:  # what the swarm runtime it is part of provides
        engine: Engine

        @property
        def api(self) -> Any: ...
        def _service(self, project_id: str) -> dict[str, Any] | None: ...
        def _tasks(self, service_id: str) -> list[Task]: ...
        def _upstreams(self, tasks: list[Task]) -> tuple[str, ...]: ...

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
        project_id = instance.project_id
        wanted = spec.deploy.replicas
        deadline = time.monotonic() + spec.health.timeout * wanted + 10
        said = ""
        routed: tuple[tuple[str, int | None], ...] | None = None
        while True:
            service = self._service(project_id)
            if service is None or not owned_service(service, project_id):
                raise StartFailed(f"Start failed: service {service_name(project_id)} was removed")
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
                    + f"\n{_hint(project_id)}"
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
                    "rolled back\n" + _hint(project_id)
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
        project_id = instance.project_id
        update = service.get("UpdateStatus") or {}
        deadline = time.monotonic() + ROLLBACK_WAIT
        while str(update.get("State", "")) == "rollback_started" and time.monotonic() < deadline:
            time.sleep(POLL)
            current = self._service(project_id)
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
            + f"\n{_hint(project_id)}"
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

    def sleep(self, instance: Instance) -> None:
        """Scale the service that runs ``instance`` to 0 while its site sleeps (labelled so,
        so that nothing puts it back); the next ``start`` scales it up again."""
        service = self._service(instance.project_id)
        if service is None or not owned_service(service, instance.project_id):
            return
        spec = service["Spec"]
        labels = {**(spec.get("Labels") or {}), LABEL_ASLEEP: "1"}
        logger.info("%s: scaling %s to 0 while it sleeps", instance.project_id, spec.get("Name"))
        with engine_calls():
            self._put_spec(
                service, {**spec, "Labels": labels, "Mode": {"Replicated": {"Replicas": 0}}}
            )

    def _scale_back(self, project_id: ProjectId, service: dict[str, Any]) -> None:
        spec = service["Spec"]
        if (spec.get("Labels") or {}).get(LABEL_ASLEEP):
            return  # asleep: 0 on purpose
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

    def watch(self, changed: OnChange, stop: threading.Event) -> None:
        """Service and task-container events as they happen on this node, and every
        ``WATCH_POLL`` seconds a comparison of every service's tasks (other nodes' too)."""
        watch_events(
            self.engine,
            changed,
            stop,
            filters={"type": ["service", "container"]},
            project_of=_project_of_event,
            name="swarm-events",
        )
        thread = threading.Thread(
            target=self._poll, args=(changed, stop), name="swarm-poll", daemon=True
        )
        thread.start()

    def _poll(self, changed: OnChange, stop: threading.Event) -> None:
        seen: dict[str, tuple[Any, ...]] = {}
        while not stop.wait(WATCH_POLL):
            try:
                with engine_calls():
                    services = self.api.services(filters={"label": f"{MANAGED_BY}={MANAGER}"})
                    raw = self.api.tasks(filters={"desired-state": "running"})
                    ready = {  # a node that goes down under its tasks is a change too
                        str(n.get("ID")): (n.get("Status") or {}).get("State") == "ready"
                        for n in self.api.nodes()
                    }
            except Exception as exc:  # the engine is away: the event watch reconnects
                logger.debug("swarm poll: %s", exc)
                continue
            by_service: dict[str, list[tuple[str, str, int | None, bool]]] = {}
            for item in raw:
                task = _task(item)
                by_service.setdefault(str(item.get("ServiceID")), []).append(
                    (task.node, task.state, task.port, ready.get(task.node, True))
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
                        changed(check_project_id(project))
            seen = now

    def _task_logs(self, tasks: list[Task]) -> str:
        """The last lines of the first failed task's container, when it ran on this node."""
        for task in tasks:
            if task.container:
                with contextlib.suppress(Exception), engine_calls():
                    container = self.engine.client.containers.get(task.container)
                    return str(container.logs(tail=20).decode("utf-8", "replace").strip())
        return ""
