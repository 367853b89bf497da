"""Pure conversions from what the stores hold to the planner's two views.

Shared by the controller (which adds the instances its runtimes really see) and the read
models (which take the instances the state database records), so both ask ``plan()`` the same
question and can never drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.desired import DesiredFile
from reconciler.kinds import Status
from reconciler.plan import DesiredView, ObservedInstance, ObservedView
from reconciler.spec import ProjectSpec
from reconciler.state import ProjectRow


def desired_view(desired: DesiredFile | None, in_force: ProjectSpec | None) -> DesiredView | None:
    """None when the project has no desired file (it was deleted)."""
    if desired is None:
        return None
    return DesiredView(in_force, in_force.digest() if in_force else None, desired.error)


def spec_from_row(row: ProjectRow | None) -> ProjectSpec | None:
    """The last good spec the daemon applied, as the state database keeps it."""
    if row is None or not row.lastGoodSpec:
        return None
    try:
        return ProjectSpec.model_validate_json(row.lastGoodSpec)
    except ValueError:
        return None


def observed_view(
    row: ProjectRow | None,
    *,
    instances: Iterable[ObservedInstance],
    current: str | None,
    releases: frozenset[str],
    recent_repairs: int = 0,
) -> ObservedView:
    return ObservedView(
        status=row.productionStatus if row else Status.STOPPED,
        active_hash=row.productionHash if row else None,
        latest_hash=row.latestHash if row else None,
        observed_generation=row.observedGeneration if row else None,
        failed_digest=row.failedDigest if row else None,
        current=current,
        instances=tuple(sorted(instances, key=lambda i: i.hash)),
        releases=releases,
        recent_repairs=recent_repairs,
    )
