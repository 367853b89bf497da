"""The pure planner: ``plan(desired, observed) -> steps``.

No I/O and no clock: everything it needs is in its two arguments, so every combination is a
row in a table test. The controller gathers the facts (desired file, state DB, runtime,
release store), calls plan(), and runs the steps in order. Reconciliation is level-based:
plan() never knows which event caused it, and planning again after the steps ran yields
nothing (or only a status record).

Steps, in the order they may appear:

- ``StopInstances``: stop instances and release their ports (stopped, deleted, strays); at
  the edge, strays and replaced instances are drained first.
- ``Fail``: record a permanent failure for this exact desired spec (not retried).
- ``Build``: build the source, stage a release, then activate it.
- ``Activate``: bring a kept release live: start its instance (if it is not running), wait
  ready, switch; for a static release at the edge, check it through the edge and flip
  ``current``; for a dynamic one, flip the slot the edge routes to.
- ``RestoreCurrent``: put back a deleted or wrong ``current`` link to the running version.
- ``Record``: set the status columns only (e.g. ``running`` after a restart adopted it).
- ``Sleep``: an idle site that may sleep: the edge sends its requests to the waker, then its
  instances stop (status ``sleeping``). A request for it marks it ``woken``: the plan then
  activates its version again (a deployment of kind ``wake``). A sleeping site is not a
  failed one: no repair, no flap count, nothing to do until a request or an edit comes.

``deployment_of(steps)`` names what a plan amounts to (deploy, activate, repair, stop): the
controller records it as one deployment, and the API answers an operator by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import assert_never

from reconciler.core.kinds import DeploymentKind, ServeMode, Status
from reconciler.core.spec import ProjectSpec

FLAP_LIMIT = 5
FLAP_WINDOW = 300.0


@dataclass(frozen=True)
class DesiredView:
    """What desired state asks for. ``spec`` is the spec in force (the last good one);
    ``mode`` how its releases reach users (from the daemon's edge setting and the spec)."""

    spec: ProjectSpec | None
    digest: str | None
    file_error: str | None = None
    mode: ServeMode = ServeMode.PORT
    config: str | None = None  # settings an instance must run with (instance_config)
    source_rev: str | None = None  # followed source: the commit (or dir fingerprint) to run


@dataclass(frozen=True)
class ObservedInstance:
    """An instance that really runs; a draining one is on its way out and planned around.
    ``config``: the settings it runs with (None: started before instances named them)."""

    hash: str
    port: int | None = None
    draining: bool = False
    config: str | None = None
    asleep: bool = False  # a service scaled to 0 while its site sleeps: planned around
    standby: bool = False  # kept for the rollback window (out of service, draining too)

    @property
    def key(self) -> str:
        return self.hash if self.config is None else f"{self.hash}-{self.config}"


@dataclass(frozen=True)
class ObservedView:
    """What is: the status row, the release store, live instances, and at the edge the
    project's stable port (``public_port``) and the version its active slot routes to."""

    status: Status = Status.STOPPED
    port: int | None = None
    active_hash: str | None = None
    latest_hash: str | None = None
    observed_generation: int | None = None
    failed_digest: str | None = None
    current: str | None = None
    instances: tuple[ObservedInstance, ...] = ()
    releases: frozenset[str] = field(default_factory=frozenset)
    recent_repairs: int = 0
    public_port: int | None = None
    routed: str | None = None  # the key of the instance the edge routes to
    built_rev: str | None = None  # what the latest release was built from
    # releases that run as an app whatever the spec says (they start one of their own, found
    # at their build, or keep links that leave them): never served as files
    apps: frozenset[str] = field(default_factory=frozenset)
    # sleeping (controller only): no request for its sleep.after (it may sleep), and a
    # request that waits for it to wake
    idle: bool = False
    woken: bool = False


@dataclass(frozen=True)
class StopInstances:
    keys: tuple[str, ...]  # instance keys (ObservedInstance.key)
    final: bool  # True: the project ends stopped (status stopped, port and url cleared)


@dataclass(frozen=True)
class Fail:
    error: str


@dataclass(frozen=True)
class Build:
    generation: int


@dataclass(frozen=True)
class Activate:
    hash: str
    repair: bool = False
    wake: bool = False  # a sleeping site's version, for the request that waits
    # the version that went live and died within its rollback window: ``hash`` is the kept
    # version it replaced, served again (no start); the deploy of ``after`` is failed
    after: str | None = None


@dataclass(frozen=True)
class Sleep:
    keys: tuple[str, ...]  # the instances that stop (ObservedInstance.key)
    hash: str


@dataclass(frozen=True)
class RestoreCurrent:
    hash: str


@dataclass(frozen=True)
class Record:
    status: Status
    hash: str | None = None


Step = StopInstances | Fail | Build | Activate | RestoreCurrent | Record | Sleep

SLEEPS = frozenset({ServeMode.DYNAMIC, ServeMode.SERVICE})  # what may sleep: what runs


def plan(desired: DesiredView | None, observed: ObservedView) -> list[Step]:
    """The steps that move ``observed`` toward ``desired`` (None: the file was deleted)."""
    everything = tuple(i.key for i in observed.instances)
    live = tuple(i for i in observed.instances if not i.draining and not i.asleep)

    if desired is None or desired.spec is None:
        if desired is not None:
            return []  # an invalid file and no last good spec: change nothing
        return _stop(everything, observed)
    spec = desired.spec
    if spec.production.state == "stopped":
        return _stop(everything, observed)

    if observed.failed_digest is not None and observed.failed_digest == desired.digest:
        return _still_failed(desired, observed, live)

    pinned = spec.production.pinned
    if pinned is not None:
        if pinned not in observed.releases:
            kept = ", ".join(sorted(observed.releases)) or "none"
            return [Fail(f"version {pinned} is not kept (kept versions: {kept})")]
        target = pinned
    elif (
        observed.observed_generation != spec.production.generation
        or observed.latest_hash is None
        or observed.latest_hash not in observed.releases
        or (desired.source_rev is not None and desired.source_rev != observed.built_rev)
    ):
        return _after_strays(live, observed, Build(spec.production.generation))
    else:
        target = observed.latest_hash

    mode = mode_of(desired.mode, target, observed.apps)
    serving = _serving(desired, mode, target, live, observed)
    sleeps = mode in SLEEPS and observed.active_hash == target and not observed.woken
    if serving is None and sleeps and observed.status == Status.SLEEPING:
        return _asleep(live, observed, target, mode)
    if serving is None:
        if mode == ServeMode.STATIC:
            gone = observed.current != target
        else:
            gone = all(i.hash != target for i in live)  # not a settings change: it died
        repair = (
            gone
            and observed.active_hash == target
            and observed.status in (Status.RUNNING, Status.ERROR)
        )
        standby = [i for i in observed.instances if i.standby and not i.asleep and not pinned]
        if repair and standby:  # it died within its rollback window: back to the one it replaced
            return _after_strays(live, observed, Activate(standby[0].hash, after=target))
        if repair and observed.recent_repairs >= FLAP_LIMIT:
            return [
                Fail(
                    f"the instance of {target} keeps dying: {observed.recent_repairs} repairs "
                    f"in {int(FLAP_WINDOW // 60)} minutes; see its logs/app.log, then edit the "
                    "desired file or deploy again"
                )
            ]
        wake = observed.status == Status.SLEEPING and observed.active_hash == target
        return _after_strays(live, observed, Activate(target, repair=repair, wake=wake))
    if sleeps and observed.idle and observed.status == Status.RUNNING:
        return [Sleep(tuple(i.key for i in live), target)]

    steps: list[Step] = []
    others = tuple(i.key for i in live if i.key != serving)
    if others:
        steps.append(StopInstances(others, final=False))
    if mode != ServeMode.STATIC and observed.current != target:
        steps.append(RestoreCurrent(target))
    moved = mode == ServeMode.PORT and any(
        i.key == serving and i.port != observed.port for i in live
    )  # the instance that serves is not the one the status names (after a crash)
    if observed.active_hash != target or observed.status != Status.RUNNING or moved:
        steps.append(Record(Status.RUNNING, target))
    return steps


def mode_of(mode: ServeMode, version: str | None, apps: frozenset[str]) -> ServeMode:
    """How ``version`` reaches users: as the spec says (``mode``), except that a release that
    runs as an app (``apps``) is never served as files: it runs in a slot like any app."""
    if mode == ServeMode.STATIC and version is not None and version in apps:
        return ServeMode.DYNAMIC
    return mode


def _serving(
    desired: DesiredView,
    mode: ServeMode,
    target: str,
    live: tuple[ObservedInstance, ...],
    observed: ObservedView,
) -> str | None:
    """What serves ``target`` with the wanted settings at the project's address now: the
    instance's key, ``""`` for a static release (no instance), None when nothing does."""
    at_edge = observed.public_port is not None and observed.port == observed.public_port
    match mode:
        case ServeMode.PORT:
            wanted = [i for i in live if i.hash == target and i.config == desired.config]
            return wanted[0].key if wanted else None
        case ServeMode.STATIC:  # served as files: no instance may be what the edge routes to
            files = observed.routed is None  # (an app's own release: its switch is a deploy)
            return "" if at_edge and observed.current == target and files else None
        case ServeMode.SERVICE:  # one service: it serves when its labels name target
            wanted = [i for i in live if i.hash == target and i.config == desired.config]
            return wanted[0].key if at_edge and wanted else None
        case ServeMode.DYNAMIC:
            routed = [i for i in live if i.key == observed.routed]
            fits = routed and routed[0].hash == target and routed[0].config == desired.config
            return routed[0].key if at_edge and fits else None
        case _:
            assert_never(mode)


def _still_failed(
    desired: DesiredView, observed: ObservedView, live: tuple[ObservedInstance, ...]
) -> list[Step]:
    """This exact spec failed: nothing is tried again until an edit or a new generation, but
    the version that kept serving is put back when its instance died (the flap limit holds).
    A project that serves nothing (no port: its own version kept dying) stays as it is."""
    version = observed.active_hash
    if (
        observed.status not in (Status.FAILED, Status.ERROR)
        or version is None
        or observed.port is None
        or version not in observed.releases
        or observed.recent_repairs >= FLAP_LIMIT
        or mode_of(desired.mode, version, observed.apps) in (ServeMode.STATIC, ServeMode.SERVICE)
        or any(i.hash == version for i in live)
    ):
        return []
    return [Activate(version, repair=True)]


def _after_strays(
    live: tuple[ObservedInstance, ...], observed: ObservedView, step: Step
) -> list[Step]:
    """``step``, preceded by stopping instances that are neither serving nor wanted (left by
    a crashed pipeline); the serving one keeps serving until the new one is ready."""
    serving = observed.routed if observed.routed is not None else None
    strays = tuple(
        i.key
        for i in live
        if i.hash != observed.active_hash and (serving is None or i.key != serving)
    )
    return [StopInstances(strays, final=False), step] if strays else [step]


def _asleep(
    live: tuple[ObservedInstance, ...], observed: ObservedView, target: str, mode: ServeMode
) -> list[Step]:
    """A sleeping site stays asleep: an instance found running anyway is stopped, and
    ``current`` still names its version."""
    steps: list[Step] = []
    if live and mode == ServeMode.DYNAMIC:
        steps.append(StopInstances(tuple(i.key for i in live), final=False))
    if observed.current != target:
        steps.append(RestoreCurrent(target))
    return steps


def _stop(everything: tuple[str, ...], observed: ObservedView) -> list[Step]:
    if everything:
        return [StopInstances(everything, final=True)]
    if observed.status != Status.STOPPED:
        return [Record(Status.STOPPED)]
    return []


def should_cancel(inflight_digest: str | None, desired: DesiredView | None) -> bool:
    """A running pipeline is cancelled when the desired spec it works for changed, or a
    followed git ref moved on (the newest commit wins). A followed source dir that changed
    does not cancel: a build may write into its own tree; the next plan builds again if
    what it built is not what the dir holds now."""
    if desired is None:
        return True
    if desired.spec is None:
        return False  # an invalid edit changes nothing
    return _cancel_key(desired.digest) != _cancel_key(inflight_digest)


def _cancel_key(digest: str | None) -> str | None:
    return digest.split("@dir:", 1)[0] if digest is not None else None


def deciding(steps: Sequence[Step]) -> Step | None:
    """The step that names what a run of ``steps`` is (None: housekeeping alone: stopping
    strays, restoring ``current``, recording a status that already holds). The one step
    classifier: the deployment's kind and the job an operator waits on both come from it."""
    for step in steps:
        match step:
            case Build() | Fail() | Activate() | StopInstances(final=True):
                return step
            case Record(status=Status.STOPPED):
                return step
            case StopInstances() | RestoreCurrent() | Record() | Sleep():
                continue
            case _:
                assert_never(step)
    return None


def deployment_of(steps: Sequence[Step]) -> DeploymentKind | None:
    """What a run of ``steps`` is, as an operator would name it (None: housekeeping)."""
    match deciding(steps):
        case Build() | Fail() | Activate(after=str()):
            return DeploymentKind.DEPLOY  # a version that died after it went live: failed
        case Activate(repair=True):
            return DeploymentKind.REPAIR
        case Activate(wake=True):
            return DeploymentKind.WAKE
        case Activate():
            return DeploymentKind.ACTIVATE
        case StopInstances() | Record():
            return DeploymentKind.STOP
        case RestoreCurrent() | Sleep() | None:
            return None
        case step:
            assert_never(step)


def describe(step: Step) -> str:
    """A step as an operator reads it (``reconciler plan``)."""
    match step:
        case StopInstances(keys=keys, final=final):
            what = ", ".join(keys) or "nothing"
            return f"stop {what}" + ("; the project ends stopped" if final else "")
        case Fail(error=error):
            return f"mark the project failed: {error}"
        case Build(generation=generation):
            return f"build generation {generation}, start it, check its health, switch to it"
        case Activate(hash=version, repair=repair, wake=wake, after=after):
            if after is not None:
                return (
                    f"roll back to {version} (kept for the rollback window): {after} died "
                    "after it went live; its deploy is failed"
                )
            if wake:
                return f"wake: start {version} for the request that waits, switch to it"
            if repair:
                return f"put {version} back (its instance is gone)"
            return f"start {version}, check its health, switch to it"
        case RestoreCurrent(hash=version):
            return f"point current back at {version}"
        case Record(status=status, hash=version):
            return f"record status {status}" + (f" ({version})" if version else "")
        case Sleep(hash=version):
            return f"sleep: no request for a while; stop {version} until the next one"
        case _:
            assert_never(step)
