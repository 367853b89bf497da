"""Pure conversions from what the stores hold to the planner's two views.

Shared by the controller (which adds the instances its runtimes really see) and the read
models (which take the instances the state database records), so both ask ``plan()`` the same
question and can never drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from reconciler.core.kinds import EdgeMode, RuntimeName, ServeMode, Status
from reconciler.core.plan import DesiredView, ObservedInstance, ObservedView
from reconciler.core.spec import ProjectSpec
from reconciler.stores.desired import DesiredFile
from reconciler.stores.state import ProjectRow, SiteRow, SourceRow


def serve_mode(
    edge: EdgeMode,
    spec: ProjectSpec | None,
    default_runtime: RuntimeName,
    *,
    runs_app: bool = False,
) -> ServeMode:
    """Static sites (process runtime, no start command, a release that does not run as an
    app: ``runs_app``) are served by the edge itself; a swarm service's tasks are proxied to
    by the edge; everything else runs an instance the edge proxies to, or without an edge,
    that answers on its own port."""
    if spec is None:
        return ServeMode.PORT
    runtime = spec.runtime or default_runtime
    if runtime == RuntimeName.SWARM:
        return ServeMode.SERVICE  # its tasks have no one address: only the edge serves it
    if edge == EdgeMode.OFF:
        return ServeMode.PORT
    if runtime == RuntimeName.PROCESS and spec.start.command is None and not runs_app:
        return ServeMode.STATIC
    return ServeMode.DYNAMIC


def followed_rev(spec: ProjectSpec | None, source: SourceRow | None) -> str | None:
    """The revision a following project should run: where its source stands now (None: it
    does not follow, is pinned, or its source was never read)."""
    if spec is None or not spec.production.follow or spec.production.pinned is not None:
        return None
    return source.rev if source is not None else None


def desired_view(
    desired: DesiredFile | None,
    in_force: ProjectSpec | None,
    *,
    edge: EdgeMode = EdgeMode.OFF,
    default_runtime: RuntimeName = RuntimeName.PROCESS,
    source: SourceRow | None = None,
    secrets: Mapping[str, str | None] | None = None,
) -> DesiredView | None:
    """None when the project has no desired file (it was deleted). A following project's
    digest names the revision too: a new commit is a new desired state (a failure of the
    last one is not held against it, and a build of an older one is cancelled)."""
    if desired is None:
        return None
    mode = serve_mode(edge, in_force, default_runtime)
    rev = followed_rev(in_force, source)
    digest = in_force.digest() if in_force else None
    return DesiredView(
        in_force,
        f"{digest}@{rev[:12]}" if digest and rev else digest,
        desired.error,
        mode,
        # a static spec's release may still run as an app (``ObservedView.apps``)
        None if in_force is None else in_force.instance_config(default_runtime, secrets),
        rev,
    )


def slot_port(site: SiteRow | None, slot: str | None) -> int | None:
    """The internal port the edge routes the project to now (None: no slot yet)."""
    if site is None or site.slots is None or slot is None:
        return None
    return site.slots[0] if slot == "a" else site.slots[1]


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
    site: SiteRow | None = None,
    slot: str | None = None,
    apps: frozenset[str] = frozenset(),
) -> ObservedView:
    found = tuple(sorted(instances, key=lambda i: i.hash))
    routed_port = slot_port(site, slot)
    routed = next(
        (
            i.key
            for i in found
            if routed_port is not None and i.port == routed_port and not i.draining
        ),
        None,
    )
    return ObservedView(
        status=row.productionStatus if row else Status.STOPPED,
        port=row.productionPort if row else None,
        active_hash=row.productionHash if row else None,
        latest_hash=row.latestHash if row else None,
        observed_generation=row.observedGeneration if row else None,
        failed_digest=row.failedDigest if row else None,
        current=current,
        instances=found,
        releases=releases,
        recent_repairs=recent_repairs,
        public_port=site.publicPort if site else None,
        routed=routed,
        built_rev=_rev(row),
        apps=apps,
    )


def _rev(row: ProjectRow | None) -> str | None:
    built = row.built_from() if row is not None else None
    rev = built.get("rev") if built else None
    return rev if isinstance(rev, str) else None


def commit_fields(source: Mapping[str, object] | None) -> dict[str, str]:
    """The commit and subject a release was built from (a git source), for events, logs and
    status; {} for a directory source."""
    if not source or not isinstance(source.get("commit"), str):
        return {}
    return {"commit": str(source["commit"]), "subject": str(source.get("subject", ""))}


def running_commit(
    row: ProjectRow | None, version: str | None, manifest: Mapping[str, object] | None
) -> dict[str, str]:
    """The commit ``version`` runs: the last build's when it made that version (content
    addressing: a new commit with the same output reuses the release), else the one the
    release was first built from."""
    if row is not None and version is not None and version == row.latestHash:
        built = commit_fields(row.built_from())
        if built:
            return built
    return commit_fields(manifest)
