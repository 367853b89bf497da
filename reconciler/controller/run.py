"""The context one execution of a plan carries from step to step."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from reconciler.controller.observe import Facts, Live
from reconciler.controller.recorder import Recorder
from reconciler.core.errors import Cancelled, PermanentError
from reconciler.core.kinds import ServeMode
from reconciler.core.plan import mode_of
from reconciler.core.spec import ProjectSpec
from reconciler.runtimes.base import Instance, Runtime
from reconciler.stores.vault import SecretError, resolve_env


@dataclass
class Run:
    """One execution of a plan for one project."""

    facts: Facts
    recorder: Recorder
    cancel: threading.Event
    live: Live  # instances that run now; executors keep it current
    built_from: dict[str, object] | None = None  # set by a build: its source's revision
    version: str | None = None  # the release the run brings live (None: the one serving)
    apps: set[str] = field(default_factory=set)  # releases that run as apps (see ObservedView)
    taken: str | None = None  # an instance taken back as it runs, whatever its settings

    def __post_init__(self) -> None:
        self.apps |= self.facts.observed.apps

    @property
    def spec(self) -> ProjectSpec:
        spec = self.facts.spec
        if spec is None:
            raise PermanentError("no valid desired spec is in force")
        return spec

    @property
    def runtime_spec(self) -> ProjectSpec:
        """The spec a runtime is handed: ``spec`` with its secrets' values in ``env``."""
        try:
            return resolve_env(self.spec, self.facts.vault)
        except SecretError as exc:
            raise PermanentError(str(exc)) from None

    @property
    def mode(self) -> ServeMode:
        """How the run's release (``version``, else the one serving) reaches users."""
        if self.facts.view is None:
            return ServeMode.PORT
        row = self.facts.row
        version = self.version or (row.productionHash if row is not None else None)
        return mode_of(self.facts.view.mode, version, frozenset(self.apps))

    def bring(self, version: str, *, runs_app: bool) -> None:
        """The run now brings ``version`` live (``runs_app``: it runs as an app)."""
        self.version = version
        if runs_app:
            self.apps.add(version)

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
        for key, (instance, runtime) in self.live.items():
            if key == self.taken and instance.hash == version:
                return instance, runtime
        for instance, runtime in self.live.values():
            if instance.hash == version and instance.config == want and not instance.asleep:
                return instance, runtime
        return None

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("desired state changed")
