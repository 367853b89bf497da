"""The benchmark run (``make bench``), at its smallest: every figure runs end to end against
a real daemon, API and edge and reports numbers of the right shape. Nothing here asserts a
speed; ``make bench`` prints the figures and BENCHMARKS.md holds the latest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO


def _figure(value: object) -> None:
    assert isinstance(value, dict), value
    assert value["n"] >= 1
    assert 0 <= value["min"] <= value["median"] <= value["p99"] <= value["max"]


@pytest.mark.slow
@pytest.mark.timeout(800)
def test_every_figure_runs_and_reports(tmp_path: Path) -> None:
    if shutil.which("curl") is None:  # the hand baseline of figure 2 is a shell script
        why = "curl is not installed (.ci/run and make bench install it)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    out = tmp_path / "figures.json"
    before = (REPO / "BENCHMARKS.md").read_text()
    run = subprocess.run(
        [PYTHON, "-m", "benchmarks.run", "--quick", "--out", str(out), "--dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=760,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["quick"] is True and figures["machine"]["cpus"] >= 1
    for how in ("rename", "in_place", "watcher_off"):
        _figure(figures["reaction"][how])
    deploy = figures["deploy"]
    _figure(deploy["ours"])
    _figure(deploy["baseline"])
    assert deploy["ratio"] > 0
    for phase in ("to_build_start", "build", "copy_hash", "sync", "first_healthy_probe"):
        _figure(deploy["phases"][phase])
    for kind in ("static", "process"):
        _figure(figures["rollback"][kind]["answer"])
        _figure(figures["rollback"][kind]["served"])
    _figure(figures["ready"]["process"])
    scale = figures["scale"]
    assert scale["serving"] == scale["static_sites"] + scale["process_sites"]
    assert len(scale["full_resync_s"]) == 3 and all(s >= 0 for s in scale["full_resync_s"])
    assert scale["daemon_rss_mb"] > 0 and scale["edge_rss_mb"] > 0
    cold = scale["cold_start"]  # as after a reboot: every site serving again, apps restarted
    assert cold["serving"] == scale["serving"] and cold["all_serving_s"] > 0
    assert cold["processes_killed"] >= scale["process_sites"]
    if shutil.which("wrk"):
        for where in ("separate", "in_run", "waitress"):
            for route in ("production", "projects"):
                api = scale["api"][where][route]
                assert api["requests_per_s"] > 0 and "errors" not in api, api
                assert 0 < api["p50_ms"] <= api["p99_ms"]
    store = figures["store"]
    assert store["hash_small_files"]["ratio"] > 0
    _figure(store["stage_10000_files"]["one_file_changed"])
    sse = figures["sse"]
    assert sse["received"] == sse["events"] > 0
    _figure(sse["record_to_client"])
    edge = figures["edge"]
    churn = edge["churn_cost"]
    assert churn["requests"] > 0 and churn["failed"] >= 0 and churn["loads"] >= 0
    assert figures["upgrade"]["requests"] > 0 and figures["upgrade"]["loads"] >= 1
    flask = figures["apps"]["flask"]
    assert flask["first"] > 0 and flask["app"]["kind"] == "python"
    _figure(flask["redeploy"])
    sleep = figures["sleep"]
    _figure(sleep["wake"])
    many = sleep["many"]
    assert many["requests"] > 0 and many["failed"] >= 0 and many["daemon_rss_mb"] > 0
    assert len(figures["many"]["reload_s"]) == 3
    _figure(many["first_answer"])
    if shutil.which("wrk"):
        assert edge["throughput_access_logs_on"]["edge_rps"] > 0
    assert "| 1 reaction |" in run.stdout and "| 8 edge |" in run.stdout
    assert (REPO / "BENCHMARKS.md").read_text() == before, "--write-md was not asked for"
