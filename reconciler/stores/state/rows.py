"""The rows of the state database as frozen dataclasses, closed-set columns as their enums."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, TypedDict, TypeVar, get_type_hints

from reconciler.core.kinds import (
    DeploymentKind,
    DeploymentState,
    EdgeMode,
    EventType,
    InstanceRole,
    JobState,
    JobType,
    RuntimeName,
    Status,
)


class ProjectChanges(TypedDict, total=False):
    """The columns of ``projects`` that may be set, with their types."""

    productionStatus: Status
    productionPort: int | None
    productionUrl: str | None
    productionError: str | None
    productionStartedAt: str | None
    productionHash: str | None
    latestHash: str | None
    observedGeneration: int | None
    failedDigest: str | None
    desiredDigest: str | None
    lastGoodSpec: str | None
    latestSource: str | None
    productionReplicas: str | None


PROJECT_COLUMNS = frozenset(ProjectChanges.__annotations__)
DAEMON_STALE = 10.0  # seconds without a pulse before a reader says the daemon is not running


@dataclass(frozen=True)
class ProjectRow:
    id: str
    productionStatus: Status
    productionPort: int | None
    productionUrl: str | None
    productionError: str | None
    productionStartedAt: str | None
    productionHash: str | None
    latestHash: str | None
    observedGeneration: int | None
    failedDigest: str | None
    desiredDigest: str | None
    lastGoodSpec: str | None
    updatedAt: str
    latestSource: str | None = None  # JSON: what the latest release was built from
    productionReplicas: str | None = None  # swarm: "running/wanted" tasks

    def built_from(self) -> dict[str, Any] | None:
        return _json_object(self.latestSource)


def _json_object(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class SourceRow:
    """Where a followed source stands: ``rev`` the commit its ref points at (or a source
    dir's fingerprint), ``detail`` JSON about it, ``error`` why it could not be read."""

    project: str
    rev: str | None
    detail: str | None
    error: str | None
    checkedAt: str

    def details(self) -> dict[str, Any] | None:
        return _json_object(self.detail)


@dataclass(frozen=True)
class JobRow:
    id: int
    project: str
    deployment: int | None
    type: JobType
    state: JobState
    generation: int | None
    hash: str | None
    createdAt: str
    startedAt: str | None
    finishedAt: str | None
    error: str | None


@dataclass(frozen=True)
class VersionRow:
    """What became of one version: when it first served, and its last failed start."""

    project: str
    hash: str
    servedAt: str | None
    failedAt: str | None
    error: str | None


@dataclass(frozen=True)
class DeploymentRow:
    id: int
    project: str
    kind: DeploymentKind
    generation: int | None
    state: DeploymentState
    createdAt: str
    finishedAt: str | None
    digest: str | None
    error: str | None
    trigger: str | None = None  # what set it off: "api: deploy", "push: 1a2b3c4d5e6f", ...


@dataclass(frozen=True)
class SampleRow:
    """One site at one moment: its edge counters so far (requests, 5xx answers, seconds
    spent answering) and what its serving instance used."""

    project: str
    at: float
    requests: float | None
    errors: float | None
    seconds: float | None
    memory: int | None
    cpu: float | None


@dataclass(frozen=True)
class EventRow:
    id: int
    project: str
    deployment: int | None
    type: EventType
    data: str
    createdAt: str

    def payload(self) -> dict[str, Any]:
        value = json.loads(self.data)
        return value if isinstance(value, dict) else {"value": value}


@dataclass(frozen=True)
class InstanceRow:
    project: str
    key: str  # version, or version-config (see Instance.key)
    hash: str
    config: str | None
    runtime: RuntimeName
    port: int | None
    pid: int | None
    pidStart: int | None
    containerId: str | None
    role: InstanceRole
    startedAt: str
    memory: int | None = None  # bytes in use, as last sampled
    cpu: float | None = None  # percent of one core, as last sampled
    usageAt: str | None = None


@dataclass(frozen=True)
class SiteRow:
    """A project's reserved ports at the edge: public from --port-range, slots internal."""

    project: str
    publicPort: int
    slotA: int | None
    slotB: int | None
    reservedAt: str

    @property
    def slots(self) -> tuple[int, int] | None:
        if self.slotA is None or self.slotB is None:
            return None
        return (self.slotA, self.slotB)


@dataclass(frozen=True)
class EdgeRow:
    """What the daemon last saw of the edge (for the API, which never talks to it)."""

    mode: EdgeMode
    status: str  # up | down | off
    pid: int | None
    version: str | None
    sites: int
    error: str | None
    loadedAt: str | None
    updatedAt: str


@dataclass(frozen=True)
class DaemonRow:
    """The daemon's liveness: it writes ``pulse`` (Unix time) every few seconds while its
    loop makes progress, and ``stoppedAt`` when it shuts down cleanly. ``runtime`` is its
    default runtime (what a desired file without ``runtime:`` runs on)."""

    pid: int
    runtime: str
    startedAt: str
    pulse: float
    stoppedAt: str | None

    def silence(self, now: float) -> float:
        """Seconds since the last pulse."""
        return max(0.0, now - self.pulse)

    def alive(self, now: float, stale: float = DAEMON_STALE) -> bool:
        return self.stoppedAt is None and self.silence(now) < stale


R = TypeVar("R")


_ENUM_FIELDS: dict[type[Any], dict[str, type[StrEnum]]] = {}


def _enum_fields(cls: type[Any]) -> dict[str, type[StrEnum]]:
    found = _ENUM_FIELDS.get(cls)
    if found is None:
        found = _ENUM_FIELDS[cls] = {
            name: hint
            for name, hint in get_type_hints(cls).items()
            if isinstance(hint, type) and issubclass(hint, StrEnum)
        }
    return found


_NAMES: dict[type[Any], tuple[str, ...]] = {}


def as_row(cls: type[R], row: sqlite3.Row) -> R:
    """A row as its dataclass, with the closed-set columns as their enums."""
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    values = {name: row[name] for name in names}
    for name, enum in _enum_fields(cls).items():
        values[name] = enum(values[name])
    return cls(**values)


def first_row(cls: type[R], rows: list[sqlite3.Row]) -> R | None:
    return as_row(cls, rows[0]) if rows else None
