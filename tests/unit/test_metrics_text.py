"""The daemon's metrics text is made again only when a figure moved: with 10,000 projects it
is megabytes, and the pulse that stores it comes every two seconds."""

from __future__ import annotations

import time

from reconciler.controller.metrics import DaemonMetrics, Finished
from reconciler.core.kinds import DeploymentKind, DeploymentState
from reconciler.core.spec import ProjectId


def test_the_text_is_the_same_object_until_a_figure_moves() -> None:
    metrics = DaemonMetrics()
    depth = [0]
    metrics.queue(lambda: depth[0])
    first = metrics.exposition()
    assert metrics.exposition() is first, "nothing moved: nothing made again"
    done = Finished(
        ProjectId("www"), DeploymentKind.DEPLOY, DeploymentState.SUCCEEDED, 1.5, None, None, None
    )
    metrics.deployment_finished(done)
    second = metrics.exposition()
    assert second is not first
    assert (
        b'reconciler_deployments_total{kind="deploy",project="www",result="succeeded"} 1.0'
        in second
    )
    depth[0] = 3
    third = metrics.exposition()
    assert b"reconciler_queue_depth 3.0" in third and third is not second
    # routine figures (a reconcile of the safety net, a source check) wait for the next
    # minute's text, so that an idle host does not make megabytes of text every pulse
    now = time.monotonic() + 1000
    depth[0] = 4
    fourth = metrics.exposition(now)
    metrics.source_checked("same")
    metrics.reconciled(0.01)
    assert metrics.exposition(now + 1) is fourth
    fifth = metrics.exposition(now + 61)
    assert b'reconciler_source_checks_total{result="same"} 1.0' in fifth
    assert b"reconciler_reconcile_duration_seconds_count 1.0" in fifth
    assert metrics.exposition(now + 200) is fifth, "nothing moved since"
