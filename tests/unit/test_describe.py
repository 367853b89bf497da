"""Each planner step as ``reconciler plan`` prints it."""

from __future__ import annotations

import pytest

from reconciler.core.kinds import Status
from reconciler.core.plan import (
    Activate,
    Build,
    Fail,
    Record,
    RestoreCurrent,
    Step,
    StopInstances,
    describe,
)


@pytest.mark.parametrize(
    ("step", "text"),
    [
        pytest.param(
            Build(4), "build generation 4, start it, check its health, switch to it", id="build"
        ),
        pytest.param(
            Activate("1a2b3c4d"), "start 1a2b3c4d, check its health, switch to it", id="activate"
        ),
        pytest.param(
            Activate("1a2b3c4d", repair=True),
            "put 1a2b3c4d back (its instance is gone)",
            id="repair",
        ),
        pytest.param(
            StopInstances(("a@1",), final=True),
            "stop a@1; the project ends stopped",
            id="stop-final",
        ),
        pytest.param(StopInstances(("a@1", "b@2"), final=False), "stop a@1, b@2", id="stop-old"),
        pytest.param(Fail("no dist"), "mark the project failed: no dist", id="fail"),
        pytest.param(RestoreCurrent("1a2b3c4d"), "point current back at 1a2b3c4d", id="restore"),
        pytest.param(
            Record(Status.RUNNING, "1a2b3c4d"), "record status running (1a2b3c4d)", id="record"
        ),
        pytest.param(Record(Status.STOPPED), "record status stopped", id="record-no-hash"),
    ],
)
def test_each_step_reads_as_an_operator_would(step: Step, text: str) -> None:
    assert describe(step) == text
