"""The release store (``store``): immutable, content-addressed releases under
``data/production/<id>/``; how a release is staged and committed (``staging``); the files
the edge reads per request (``links``: the serving slot, the swarm's task addresses)."""

from reconciler.stores.releases.release import (
    SLOT,
    SLOT_NAMES,
    SLOTS,
    TASKS,
    Limits,
    Release,
    Staging,
    hash_dist,
)
from reconciler.stores.releases.store import ReleaseStore

__all__ = [
    "SLOT",
    "SLOTS",
    "SLOT_NAMES",
    "TASKS",
    "Limits",
    "Release",
    "ReleaseStore",
    "Staging",
    "hash_dist",
]
