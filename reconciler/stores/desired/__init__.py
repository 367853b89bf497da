"""Desired state: the strict reader (``parse``), the in-place editor (``edit``) and the
directory of desired files with its lock (``store``)."""

from reconciler.stores.desired.edit import EditError, set_values
from reconciler.stores.desired.parse import (
    MAX_FILE_BYTES,
    SUFFIXES,
    DesiredFileError,
    Problem,
    load_file,
    parse,
)
from reconciler.stores.desired.store import (
    DesiredFile,
    DesiredStore,
    EditResult,
    LastGood,
    ProjectNotFound,
    Rewrite,
    Scan,
    classify,
    keep_production,
    spec_in_force,
    text_digest,
)

__all__ = [
    "MAX_FILE_BYTES",
    "SUFFIXES",
    "DesiredFile",
    "DesiredFileError",
    "DesiredStore",
    "EditError",
    "EditResult",
    "LastGood",
    "Problem",
    "ProjectNotFound",
    "Rewrite",
    "Scan",
    "classify",
    "keep_production",
    "load_file",
    "parse",
    "set_values",
    "spec_in_force",
    "text_digest",
]
