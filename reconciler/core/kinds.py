"""The closed sets of names the rest of the code speaks in: one source for each.

Rows, steps, read models and the schema all carry these enums, so a typo such as
``"runing"`` fails the type check instead of reaching the database. Being ``StrEnum`` s they
compare equal to, serialize as and are stored as their plain string values.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A project's production status (the spec's ``productionStatus``)."""

    STOPPED = "stopped"
    QUEUED = "queued"
    BUILDING = "building"
    RUNNING = "running"
    FAILED = "failed"
    ERROR = "error"  # transient: repairing or retrying
    SLEEPING = "sleeping"  # idle past its sleep.after: stopped, woken by its next request


class JobType(StrEnum):
    """The spec's pipeline steps; one job row per step run."""

    BUILD = "production.build"
    START = "production.start"
    WAIT_READY = "production.waitReady"
    STOP = "production.stop"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class DeploymentKind(StrEnum):
    """What one reconcile set out to do; the unit an operator's request is answered by."""

    DEPLOY = "deploy"  # build the source, then activate the new release
    ACTIVATE = "activate"  # run a kept release (a pin, or a stopped project started again)
    REPAIR = "repair"  # start the serving release again after its instance died
    STOP = "stop"  # stop the project
    WAKE = "wake"  # start a sleeping site's version again: a request is waiting for it


class DeploymentState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class InstanceRole(StrEnum):
    ACTIVE = "active"  # the one serving
    CANDIDATE = "candidate"  # started, not switched to yet
    DRAINING = "draining"  # taken out of routing; stopped once in-flight requests are done
    STANDBY = "standby"  # replaced, kept running out of routing for the rollback window


# out of routing: planned around (never served, never counted as a stray)
OUT_OF_SERVICE = frozenset({InstanceRole.DRAINING, InstanceRole.STANDBY})


class RuntimeName(StrEnum):
    PROCESS = "process"
    DOCKER = "docker"
    SWARM = "swarm"


class EdgeMode(StrEnum):
    """Who serves the sites' stable addresses."""

    ON = "on"  # the daemon runs one Caddy for every site, and adopts or restarts it
    EXTERNAL = "external"  # a Caddy someone else runs (a systemd unit); the daemon configures it
    OFF = "off"  # no edge: each instance listens on its own public port


class ServeMode(StrEnum):
    """How one project's release reaches its users."""

    PORT = "port"  # edge off: the instance's own port is the address
    STATIC = "static"  # the edge serves current/dist itself; no process
    DYNAMIC = "dynamic"  # the edge proxies to the instance on the project's active slot
    SERVICE = "service"  # the edge proxies to the running tasks of the project's swarm service


class EventType(StrEnum):
    """Progress events of a deployment (the SSE stream's event names)."""

    BUILDING = "production.building"
    STARTING = "production.starting"
    READY = "production.ready"
    ERROR = "production.error"
    STOPPING = "production.stopping"
    STOPPED = "production.stopped"
    CANCELLED = "production.cancelled"
    STATUS = "production.status"  # a status with nothing in progress (streams only)
    NOTIFICATION = "production.notification"  # one delivery attempt of a notification
    EXITED = "production.exited"  # a serving instance ended by itself (why: exit code, OOM)
    SLEEPING = "production.sleeping"  # idle past sleep.after: stopped until its next request


TERMINAL_EVENTS = frozenset({EventType.READY, EventType.ERROR, EventType.STOPPED})
