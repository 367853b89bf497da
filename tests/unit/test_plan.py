"""Table-driven tests of the pure planner: one row per situation that matters."""

from __future__ import annotations

import pytest

from reconciler.kinds import ServeMode
from reconciler.plan import (
    Activate,
    Build,
    DesiredView,
    Fail,
    ObservedInstance,
    ObservedView,
    Record,
    RestoreCurrent,
    Step,
    StopInstances,
    plan,
    should_cancel,
)
from reconciler.spec import ProjectSpec

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
