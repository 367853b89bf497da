"""The one observation: a project as the stores hold it, as the planner's two views.

The controller and the read side both call ``observe``; they differ only in where the
instances come from (``instances``: what the runtimes really run, or what the state database
records) and where the last good spec comes from (``last_good``: the controller's memory,
seeded from the database; or the database's record). So ``reconciler plan``, the API's
status and the next reconcile ask ``plan()`` the same question.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from reconciler.core.kinds import OUT_OF_SERVICE, EdgeMode, InstanceRole, RuntimeName
from reconciler.core.plan import DesiredView, ObservedInstance, ObservedView
from reconciler.core.spec import ProjectId, ProjectSpec
from reconciler.stores.desired import DesiredFile, DesiredStore, spec_in_force
from reconciler.stores.facts import desired_view, observed_view, spec_from_row
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import InstanceRow, ProjectRow, SiteRow, SourceRow, StateDB
from reconciler.stores.vault import Vault, revisions

# the instances of a project, given its spec in force and its instance rows
Instances = Callable[[ProjectSpec | None, list[InstanceRow]], Iterable[ObservedInstance]]
# the last good spec of a project, given its row
LastGoodOf = Callable[[ProjectId, ProjectRow | None], ProjectSpec | None]


def recorded(_spec: ProjectSpec | None, rows: list[InstanceRow]) -> Iterable[ObservedInstance]:
    """The instances the state database records (the read side's view of them)."""
    return (
        ObservedInstance(
            r.hash,
            r.port,
            r.role in OUT_OF_SERVICE,
            r.config,
            standby=r.role == InstanceRole.STANDBY,
        )
        for r in rows
    )


def last_good_recorded(_project_id: ProjectId, row: ProjectRow | None) -> ProjectSpec | None:
    """The last good spec the daemon applied, as the state database keeps it."""
    return spec_from_row(row)


@dataclass(frozen=True)
class Observation:
    """Everything known of one project before planning."""

    project_id: ProjectId
    desired: DesiredFile | None
    spec: ProjectSpec | None  # in force: the file's, or the last good one
    view: DesiredView | None
    row: ProjectRow | None
    instance_rows: tuple[InstanceRow, ...]
    site: SiteRow | None
    source: SourceRow | None  # a followed source's standing
    observed: ObservedView

    @property
    def known(self) -> bool:
        """Anything at all: a desired file, a row or an instance."""
        return _known(self.desired, self.row, self.instance_rows)


@dataclass(frozen=True)
class Observe:
    """``observe(project_id, ...)`` over one set of stores."""

    db: StateDB
    desired: DesiredStore
    releases: ReleaseStore
    vault: Vault | None = None  # the revisions of the secrets a spec refers to

    def __call__(
        self,
        project_id: ProjectId,
        *,
        edge: EdgeMode,
        default_runtime: RuntimeName,
        instances: Instances = recorded,
        last_good: LastGoodOf = last_good_recorded,
        recent_repairs: int = 0,
    ) -> Observation:
        row = self.db.project(project_id)
        desired = self.desired.read(project_id)
        rows = self.db.instances(project_id)
        last = last_good(project_id, row)
        spec = spec_in_force(desired, last, default_runtime) if desired is not None else None
        source = None
        if desired is not None and spec is not None and spec.production.follow:
            source = self.db.source(project_id)
        view = desired_view(
            desired,
            spec,
            edge=edge,
            default_runtime=default_runtime,
            source=source,
            secrets=revisions(spec, self.vault),
        )
        site = self.db.site(project_id)
        known = _known(desired, row, rows)
        versions = [r.hash for r in self.releases.versions(project_id)]
        observed = observed_view(
            row,
            instances=instances(spec, rows) if known else (),
            current=self.releases.current(project_id),
            releases=frozenset(versions),
            apps=frozenset(v for v in versions if self.releases.runs_app(project_id, v)),
            recent_repairs=recent_repairs,
            site=site,
            slot=self.releases.slot(project_id),
        )
        return Observation(
            project_id, desired, spec, view, row, tuple(rows), site, source, observed
        )


def _known(
    desired: DesiredFile | None, row: ProjectRow | None, rows: Sequence[InstanceRow]
) -> bool:
    return desired is not None or row is not None or bool(rows)
