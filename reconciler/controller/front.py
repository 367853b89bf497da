"""The edge as the controller uses it (``Front``): it routes a project's site, stops routing
it, and answers one GET the way users and the checks reach a site. ``edge.manager.Edge`` is
the real one (Caddy); the controller's unit tests put a fake here, so they cover serving
through the edge as well as without it."""

from __future__ import annotations

from typing import Protocol

from reconciler.core.spec import ProjectId
from reconciler.edge.config import Site

# one GET's answer: its status and the slot that served it (a dynamic site's), or None
Answer = tuple[int, str | None]


class Front(Protocol):
    def put(self, site: Site) -> None:
        """Route ``site``; returns once the edge does."""
        ...

    def drop(self, project_id: ProjectId) -> None:
        """Stop routing the project; returns once the edge has."""
        ...

    def answer(self, url: str) -> Answer | None:
        """One GET of ``url`` through the edge (None: no answer)."""
        ...
