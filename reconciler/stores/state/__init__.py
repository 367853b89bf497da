"""Observed state: SQLite at ``data/state.db`` (see ``connection`` for how it is shared)."""

from reconciler.stores.state.connection import StateWriteFailed
from reconciler.stores.state.db import StateDB
from reconciler.stores.state.rows import (
    PROJECT_COLUMNS,
    DeploymentRow,
    EdgeRow,
    EventRow,
    InstanceRow,
    JobRow,
    ProjectChanges,
    ProjectRow,
    SampleRow,
    SiteRow,
    SourceRow,
    VersionRow,
)
from reconciler.stores.state.schema import MIGRATIONS

__all__ = [
    "MIGRATIONS",
    "PROJECT_COLUMNS",
    "DeploymentRow",
    "EdgeRow",
    "EventRow",
    "InstanceRow",
    "JobRow",
    "ProjectChanges",
    "ProjectRow",
    "SampleRow",
    "SiteRow",
    "SourceRow",
    "StateDB",
    "StateWriteFailed",
    "VersionRow",
]
