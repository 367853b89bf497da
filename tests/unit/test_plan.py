"""Table-driven tests of the pure planner: one row per situation that matters."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core.kinds import ServeMode
from reconciler.core.plan import (
    Activate,
    Build,
    DesiredView,
    Fail,
    ObservedInstance,
    ObservedView,
    Record,
    RestoreCurrent,
    Sleep,
    Step,
    StopInstances,
    plan,
    should_cancel,
)
from reconciler.core.spec import ProjectId, ProjectSpec
from reconciler.stores.desired import DesiredFile
from reconciler.stores.facts import desired_view
from reconciler.stores.state import SourceRow

A, B, C = "aaaaaaaa", "bbbbbbbb", "cccccccc"


def want(state: str = "running", version: str = "latest", generation: int = 1) -> DesiredView:
    spec = ProjectSpec.model_validate(
        {
            "source": "s",
            "production": {"state": state, "version": version, "generation": generation},
        }
    )
    return DesiredView(spec, spec.digest())


def up(*hashes: str) -> tuple[ObservedInstance, ...]:
    return tuple(ObservedInstance(h, 3000 + i) for i, h in enumerate(hashes))


KEPT_B = ObservedInstance(B, 9, draining=True, standby=True)  # kept for the rollback window

RUNNING_A = ObservedView(
    status="running",
    port=3000,
    active_hash=A,
    latest_hash=A,
    observed_generation=1,
    current=A,
    instances=up(A),
    releases=frozenset({A, B}),
)


def seen(**changes: object) -> ObservedView:
    values = {**RUNNING_A.__dict__, **changes}
    return ObservedView(**values)  # type: ignore[arg-type]


CASES = [
    pytest.param(want(), ObservedView(), [Build(1)], id="new-project-builds"),
    pytest.param(want(), RUNNING_A, [], id="converged-noop"),
    pytest.param(
        want(),
        seen(instances=(ObservedInstance(A, 3001),)),
        [Record("running", A)],
        id="serving-instance-is-not-the-one-the-status-names",
    ),
    pytest.param(want(generation=2), RUNNING_A, [Build(2)], id="generation-bumped"),
    pytest.param(
        want(generation=0), seen(observed_generation=1), [Build(0)], id="generation-lowered-builds"
    ),
    pytest.param(
        want(state="stopped"), RUNNING_A, [StopInstances((A,), final=True)], id="stop-running"
    ),
    pytest.param(
        want(state="stopped"),
        seen(instances=(), status="running"),
        [Record("stopped")],
        id="stop-already-dead",
    ),
    pytest.param(
        want(state="stopped"), seen(instances=(), status="stopped"), [], id="stopped-noop"
    ),
    pytest.param(None, RUNNING_A, [StopInstances((A,), final=True)], id="file-deleted-stops"),
    pytest.param(None, ObservedView(), [], id="file-deleted-nothing-runs"),
    pytest.param(
        DesiredView(None, None, "x.yaml:3:1: bad"),
        RUNNING_A,
        [],
        id="invalid-no-last-good-changes-nothing",
    ),
    pytest.param(want(version=B), RUNNING_A, [Activate(B)], id="pin-rollback"),
    pytest.param(
        want(version=B), seen(active_hash=B, current=B, instances=up(B)), [], id="pinned-converged"
    ),
    pytest.param(
        want(version=C),
        RUNNING_A,
        [Fail("version cccccccc is not kept (kept versions: aaaaaaaa, bbbbbbbb)")],
        id="pin-unknown-version",
    ),
    pytest.param(
        want(), seen(active_hash=B, current=B, instances=up(B)), [Activate(A)], id="unpin-forward"
    ),
    pytest.param(
        want(generation=2),
        seen(failed_digest=want(generation=2).digest, status="failed"),
        [],
        id="failed-spec-not-retried",
    ),
    pytest.param(
        want(generation=3),
        seen(failed_digest=want(generation=2).digest, status="failed"),
        [Build(3)],
        id="failed-then-new-generation",
    ),
    pytest.param(
        want(generation=2),
        seen(failed_digest=want(generation=2).digest, status="failed", instances=()),
        [Activate(A, repair=True)],
        id="the-version-a-failed-deploy-left-serving-is-put-back-when-it-dies",
    ),
    pytest.param(
        want(generation=2),
        seen(failed_digest=want(generation=2).digest, status="error", instances=()),
        [Activate(A, repair=True)],
        id="and-again-after-a-transient-error-of-that-repair",
    ),
    pytest.param(
        want(generation=2),
        seen(failed_digest=want(generation=2).digest, status="failed", instances=(), port=None),
        [],
        id="a-failed-project-that-serves-nothing-stays-as-it-is",
    ),
    pytest.param(
        want(generation=2),
        seen(
            failed_digest=want(generation=2).digest, status="failed", instances=(), recent_repairs=5
        ),
        [],
        id="the-flap-limit-holds-for-a-failed-project",
    ),
    pytest.param(want(), seen(instances=()), [Activate(A, repair=True)], id="instance-died-repair"),
    pytest.param(
        want(),
        seen(instances=(), status="error"),
        [Activate(A, repair=True)],
        id="repair-while-error",
    ),
    pytest.param(
        want(),
        seen(instances=(), recent_repairs=5),
        [
            Fail(
                "the instance of aaaaaaaa keeps dying: 5 repairs in 5 minutes; see its logs/app.log, then edit the desired file or deploy again"
            )
        ],
        id="flapping-fails",
    ),
    pytest.param(want(), seen(current=None), [RestoreCurrent(A)], id="current-missing"),
    pytest.param(want(), seen(current=B), [RestoreCurrent(A)], id="current-wrong"),
    pytest.param(
        want(),
        seen(instances=up(A, B)),
        [StopInstances((B,), final=False)],
        id="stray-instance-stopped",
    ),
    pytest.param(
        want(generation=2),
        seen(instances=up(A, C)),
        [StopInstances((C,), final=False), Build(2)],
        id="crashed-pipeline-candidate-cleaned",
    ),
    pytest.param(
        want(), seen(status="building"), [Record("running", A)], id="adopted-after-restart"
    ),
    pytest.param(
        want(),
        seen(active_hash=C, instances=up(A)),
        [Record("running", A)],
        id="crash-after-switch-before-record",
    ),
    pytest.param(want(), seen(latest_hash=C), [Build(1)], id="latest-release-pruned-rebuilds"),
    pytest.param(
        want(state="stopped"),
        seen(instances=up(A, C)),
        [StopInstances((A, C), final=True)],
        id="stop-stops-everything",
    ),
]


def at_edge(mode: ServeMode, **changes: object) -> tuple[DesiredView, ObservedView]:
    desired = want()
    return (
        DesiredView(desired.spec, desired.digest, mode=mode),
        seen(**{"port": 3001, "public_port": 3001, **changes}),
    )


EDGE_CASES = [
    pytest.param(
        *at_edge(ServeMode.STATIC, instances=()),
        [],
        id="static-serving-noop",
    ),
    pytest.param(
        *at_edge(ServeMode.STATIC, instances=up(A)),
        [StopInstances((A,), final=False)],
        id="static-needs-no-process",
    ),
    pytest.param(
        *at_edge(ServeMode.STATIC, instances=(), current=None),
        [Activate(A, repair=True)],
        id="static-current-deleted-repair",
    ),
    pytest.param(
        *at_edge(ServeMode.STATIC, instances=up(A), port=3005),
        [Activate(A)],
        id="static-upgrade-from-a-port-keeps-the-old-process-until-the-edge-serves",
    ),
    pytest.param(
        *at_edge(ServeMode.STATIC, instances=(), status="error"),
        [Record("running", A)],
        id="static-status-recorded",
    ),
    pytest.param(
        *at_edge(ServeMode.STATIC, routed=A, apps=frozenset({A})),
        [],
        id="a-release-that-runs-an-app-is-served-by-its-instance-not-as-files",
    ),
    pytest.param(
        *at_edge(ServeMode.STATIC, routed=None, instances=(), apps=frozenset({A})),
        [Activate(A, repair=True)],
        id="a-release-that-runs-an-app-whose-instance-died-is-repaired",
    ),
    pytest.param(
        *at_edge(ServeMode.STATIC, instances=up(A), routed=A, apps=frozenset({B})),
        [Activate(A)],  # checked as files first (its start command gone, a file cut short)
        id="a-site-whose-app-turns-to-files-is-switched-by-a-checked-activation",
    ),
    pytest.param(*at_edge(ServeMode.DYNAMIC, routed=A), [], id="dynamic-routed-noop"),
    pytest.param(
        *at_edge(ServeMode.DYNAMIC, routed=None),
        [Activate(A)],
        id="dynamic-alive-not-routed-flips",
    ),
    pytest.param(
        *at_edge(
            ServeMode.DYNAMIC, routed=A, instances=(*up(A), ObservedInstance(B, 9, draining=True))
        ),
        [],
        id="dynamic-draining-instance-planned-around",
    ),
    pytest.param(
        *at_edge(ServeMode.DYNAMIC, routed=None, instances=()),
        [Activate(A, repair=True)],
        id="dynamic-instance-died-repair",
    ),
    pytest.param(
        *at_edge(ServeMode.DYNAMIC, routed=None, instances=(KEPT_B,)),
        [Activate(B, after=A)],
        id="a-version-that-died-within-its-rollback-window-falls-back-to-the-kept-one",
    ),
    pytest.param(
        *at_edge(ServeMode.DYNAMIC, routed=None, instances=(KEPT_B,), recent_repairs=9),
        [Activate(B, after=A)],
        id="falling-back-comes-before-the-flap-limit",
    ),
    pytest.param(
        *at_edge(ServeMode.DYNAMIC, routed=None, instances=(ObservedInstance(B, 9, True),)),
        [Activate(A, repair=True)],
        id="a-draining-instance-is-no-fallback",
    ),
    pytest.param(
        DesiredView(want(version=A).spec, want(version=A).digest, mode=ServeMode.DYNAMIC),
        at_edge(ServeMode.DYNAMIC, routed=None, instances=(KEPT_B,))[1],
        [Activate(A, repair=True)],
        id="a-pinned-version-that-died-is-repaired-not-left",
    ),
    pytest.param(
        *at_edge(ServeMode.DYNAMIC, routed=A, instances=(*up(A), KEPT_B)),
        [],
        id="a-kept-instance-is-planned-around-while-the-new-one-serves",
    ),
    pytest.param(
        *at_edge(ServeMode.DYNAMIC, routed=A, idle=True),
        [Sleep((A,), A)],
        id="an-idle-dynamic-site-sleeps",
    ),
    pytest.param(
        *at_edge(ServeMode.DYNAMIC, routed=A, idle=True, woken=True),
        [],
        id="an-idle-site-a-request-waits-for-stays-awake",
    ),
    pytest.param(
        *at_edge(ServeMode.STATIC, idle=True, instances=()),
        [],
        id="a-static-site-never-sleeps",
    ),
    pytest.param(
        *at_edge(ServeMode.DYNAMIC, routed=None, instances=(), status="sleeping"),
        [],
        id="a-sleeping-site-is-not-repaired",
    ),
    pytest.param(
        *at_edge(ServeMode.DYNAMIC, routed=None, instances=(), status="sleeping", recent_repairs=9),
        [],
        id="a-sleeping-site-is-no-flap",
    ),
    pytest.param(
        *at_edge(ServeMode.DYNAMIC, routed=None, instances=(), status="sleeping", woken=True),
        [Activate(A, wake=True)],
        id="a-request-wakes-a-sleeping-site",
    ),
    pytest.param(
        *at_edge(ServeMode.DYNAMIC, routed=None, instances=up(A), status="sleeping"),
        [StopInstances((A,), final=False)],
        id="an-instance-found-running-for-a-sleeping-site-stops",
    ),
    pytest.param(
        *at_edge(ServeMode.DYNAMIC, routed=None, instances=(), status="sleeping", latest_hash=B),
        [Activate(B)],
        id="a-new-version-of-a-sleeping-site-starts",
    ),
    pytest.param(
        *at_edge(ServeMode.SERVICE, instances=(ObservedInstance(A),)),
        [],
        id="service-runs-the-version-noop",
    ),
    pytest.param(
        *at_edge(ServeMode.SERVICE, instances=()),
        [Activate(A, repair=True)],
        id="service-removed-by-hand-repair",
    ),
    pytest.param(
        *at_edge(ServeMode.SERVICE, instances=(ObservedInstance(A),), port=3005),
        [Activate(A)],
        id="service-not-yet-at-the-edge-routes",
    ),
    pytest.param(
        *at_edge(ServeMode.SERVICE, instances=(ObservedInstance(A, config="c0ffee00"),)),
        [Activate(A)],
        id="service-with-other-settings-rolls-out",
    ),
    pytest.param(
        DesiredView(
            want(state="stopped").spec, want(state="stopped").digest, mode=ServeMode.DYNAMIC
        ),
        seen(instances=(ObservedInstance(B, 9, draining=True),)),
        [StopInstances((B,), final=True)],
        id="stop-also-stops-draining",
    ),
]


@pytest.mark.parametrize(("desired", "observed", "expected"), CASES + EDGE_CASES)
def test_plan(desired: DesiredView | None, observed: ObservedView, expected: list[Step]) -> None:
    assert plan(desired, observed) == expected


def test_should_cancel() -> None:
    running = want(generation=2)
    assert not should_cancel(running.digest, running)
    assert should_cancel(running.digest, want(generation=3))
    assert should_cancel(running.digest, want(state="stopped", generation=2))
    assert should_cancel(running.digest, want(version=A, generation=2))
    assert should_cancel(running.digest, None)
    assert not should_cancel(running.digest, DesiredView(None, None, "bad"))


def following(rev: str | None, *, version: str = "latest", git: bool = True) -> DesiredView:
    """A following project whose source stands at ``rev`` (as ``facts.desired_view`` makes)."""
    source = {"git": "/repo.git", "ref": "main"} if git else "s"
    spec = ProjectSpec.model_validate(
        {"source": source, "production": {"state": "running", "version": version,
                                          "generation": 1, "follow": True}}
    )  # fmt: skip
    row = SourceRow("p", rev, None, None, "2026-11-28T00:00:00Z") if rev is not None else None
    file = DesiredFile(ProjectId("p"), Path("p.yaml"), spec)
    view = desired_view(file, spec, source=row)
    assert view is not None
    return view


COMMIT_1, COMMIT_2 = "1" * 40, "2" * 40


def built(view: DesiredView, rev: str, **changes: object) -> ObservedView:
    """A running A (with the settings ``view`` asks for), built from ``rev``."""
    return seen(instances=(ObservedInstance(A, 3000, False, view.config),), built_rev=rev,
                **changes)  # fmt: skip


def test_following_plans() -> None:
    tip = following(COMMIT_1)
    assert plan(tip, built(tip, COMMIT_1)) == [], "built the tip"
    moved = following(COMMIT_2)
    assert plan(moved, built(moved, COMMIT_1)) == [Build(1)], "a new commit"
    unread = following(None)
    assert plan(unread, built(unread, COMMIT_1)) == [], "the tip was never read"
    pinned = following(COMMIT_2, version=B)
    assert plan(pinned, built(pinned, COMMIT_1)) == [Activate(B)], "a pin stops following"


def test_a_failed_commit_is_not_held_against_the_next() -> None:
    broken = following(COMMIT_2)
    assert plan(broken, built(broken, COMMIT_1, failed_digest=broken.digest)) == []
    fixed = following("3" * 40)
    assert fixed.digest != broken.digest
    assert plan(fixed, built(fixed, COMMIT_1, failed_digest=broken.digest)) == [Build(1)]


def test_a_moved_ref_cancels_a_build_a_changed_dir_does_not() -> None:
    assert should_cancel(following(COMMIT_1).digest, following(COMMIT_2))
    assert not should_cancel(following(COMMIT_2).digest, following(COMMIT_2))
    dir_a = following("dir:" + "a" * 24, git=False)
    assert not should_cancel(dir_a.digest, following("dir:" + "b" * 24, git=False))
    # an edit of the spec still cancels a dir's build
    assert should_cancel(dir_a.digest, following("dir:" + "b" * 24, version=B, git=False))
