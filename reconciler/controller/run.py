"""The context one execution of a plan carries from step to step."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from reconciler.controller.observe import Facts, Live
from reconciler.controller.recorder import Recorder
from reconciler.core.errors import Cancelled, PermanentError
from reconciler.core.kinds import ServeMode
from reconciler.core.spec import ProjectSpec
from reconciler.runtimes.base import Instance, Runtime


@dataclass
class Run:
    """One execution of a plan for one project."""

    facts: Facts
    recorder: Recorder
    cancel: threading.Event
    live: Live  # instances that run now; executors keep it current
    built_from: dict[str, object] | None = None  # set by a build: its source's revision

    @property
    def spec(self) -> ProjectSpec:
        spec = self.facts.spec
        if spec is None:
            raise PermanentError("no valid desired spec is in force")
        return spec

    @property
    def mode(self) -> ServeMode:
        return self.facts.view.mode if self.facts.view is not None else ServeMode.PORT

    @property
    def settings(self) -> str:
        """The digest of the settings an instance of this project must run with (what the
        runtimes, the database and the API call an instance's ``config``)."""
        view = self.facts.view
        if view is None or view.config is None:
            raise PermanentError("no instance settings for a project without one")
        return view.config

    def find(self, version: str) -> tuple[Instance, Runtime] | None:
        """A live instance of ``version`` running with the wanted settings."""
        want = self.facts.view.config if self.facts.view is not None else None
        for instance, runtime in self.live.values():
            if instance.hash == version and instance.config == want:
                return instance, runtime
        return None

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("desired state changed")
