"""The choices of going live and of retiring, one table row per case."""

from __future__ import annotations

import pytest

from reconciler.controller.decide import (
    Retire,
    Reuse,
    Running,
    SlotChoice,
    StartOn,
    on_port,
    retire_how,
    slot_adoption,
    slot_choice,
)
from reconciler.core.kinds import ServeMode

SLOTS = (21000, 21001)


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        pytest.param(None, StartOn(None), id="nothing-runs"),
        pytest.param(Running("v1-c", 3005), Reuse(3005), id="runs-on-a-port"),
        pytest.param(Running("v1-c", None), StartOn(None), id="runs-without-a-port"),
        pytest.param(Running("v1-c", 3005, draining=True), StartOn(None), id="being-drained"),
    ],
)
def test_on_port(existing: Running | None, expected: Reuse | StartOn) -> None:
    assert on_port(existing) == expected


@pytest.mark.parametrize(
    ("existing", "slots", "expected"),
    [
        pytest.param(None, None, None, id="nothing-to-adopt"),
        pytest.param(Running("v1-c", 3005), None, 3005, id="first-slots-adopt-the-running-port"),
        pytest.param(Running("v1-c", 3005), SLOTS, None, id="slots-kept"),
        pytest.param(Running("v1-c", 3005, draining=True), None, None, id="draining-not-adopted"),
    ],
)
def test_slot_adoption(
    existing: Running | None, slots: tuple[int, int] | None, expected: int | None
) -> None:
    assert slot_adoption(existing, slots) == expected


@pytest.mark.parametrize(
    ("routed", "existing", "expected"),
    [
        pytest.param(None, None, SlotChoice("a", 21000, reuse=False), id="first-deploy-on-a"),
        pytest.param("a", None, SlotChoice("b", 21001, reuse=False), id="a-serves-start-on-b"),
        pytest.param("b", None, SlotChoice("a", 21000, reuse=False), id="b-serves-start-on-a"),
        pytest.param(
            "a",
            Running("v2-c", 21001),
            SlotChoice("b", 21001, reuse=True),
            id="rollback-to-the-instance-on-b",
        ),
        pytest.param(
            "a",
            Running("v1-c", 21000),
            SlotChoice("a", 21000, reuse=True),
            id="the-routed-instance-is-taken",
        ),
        pytest.param(
            "a",
            Running("v2-c", 21001, draining=True),
            SlotChoice("b", 21001, reuse=False),
            id="draining-is-replaced",
        ),
        pytest.param(
            "a",
            Running("v2-c", 3005),
            SlotChoice("b", 21001, reuse=False),
            id="off-slot-instance-not-reused",
        ),
    ],
)
def test_slot_choice(routed: str | None, existing: Running | None, expected: SlotChoice) -> None:
    assert slot_choice(SLOTS, routed, existing) == expected


@pytest.mark.parametrize(
    ("mode", "drains", "expected"),
    [
        pytest.param(ServeMode.DYNAMIC, True, Retire.DRAIN, id="dynamic-at-the-edge"),
        pytest.param(ServeMode.STATIC, True, Retire.DRAIN, id="static-at-the-edge"),
        pytest.param(ServeMode.PORT, True, Retire.STOP, id="own-port"),
        pytest.param(ServeMode.SERVICE, True, Retire.STOP, id="service-swarm-replaced-it"),
        pytest.param(ServeMode.DYNAMIC, False, Retire.STOP, id="no-drainer"),
    ],
)
def test_retire_how(mode: ServeMode, drains: bool, expected: Retire) -> None:
    assert retire_how(mode, drains=drains) == expected
