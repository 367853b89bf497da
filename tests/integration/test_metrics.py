"""GET /metrics with a real daemon, a real edge and real deploys, parsed with
prometheus-client's own parser."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.api.app import create_app
from reconciler.core.kinds import EdgeMode
from reconciler.daemon.samples import Sampler, access_log, edge_socket
from tests.integration.harness import desired_yaml, environment, make_site, wait_for

pytestmark = pytest.mark.timeout(180)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float | None:  # fmt: skip
    return found.get((name, tuple(sorted(labels.items()))))


def test_metrics_count_deploys_builds_repairs_and_edge_requests(tmp_path: Path) -> None:
    good = make_site(tmp_path / "good", "<p>good</p>")
    bad = tmp_path / "bad"
    bad.mkdir()  # no dist/: its build fails
    with environment(tmp_path, edge=EdgeMode.ON) as env:
        daemon = env.start()
        daemon.pulse_interval = 0.2
        env.write("www", desired_yaml(good))
        env.write("broken", desired_yaml(bad))
        row = env.wait_serving("www", "good")
        env.wait_status("broken", "failed")
        for _ in range(5):
            assert httpx.get(f"http://127.0.0.1:{row.productionPort}/").status_code == 200
        api = create_app(env.config()).test_client()

        def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            daemon.pulse()
            response = api.get("/metrics")
            assert response.status_code == 200
            assert response.content_type.startswith("text/plain")
            found = samples(response.get_data(as_text=True))
            ok = value(found, "reconciler_deployments_total", project="www", kind="deploy",
                       result="succeeded")  # fmt: skip
            failed = value(found, "reconciler_deployments_total", project="broken",
                           kind="deploy", result="failed")  # fmt: skip
            return found if ok == 1 and failed == 1 else None

        found = wait_for(scraped, 20, "both deploys counted")
        assert value(found, "reconciler_projects", status="running") == 1
        assert value(found, "reconciler_projects", status="failed") == 1
        assert value(found, "reconciler_daemon_up") == 1
        assert value(found, "reconciler_build_duration_seconds_count", result="succeeded") == 1
        assert value(found, "reconciler_build_duration_seconds_count", result="failed") == 1
        assert (value(found, "reconciler_reconcile_duration_seconds_count") or 0) >= 2
        assert value(found, "reconciler_queue_depth") is not None
        assert (value(found, "reconciler_deployment_duration_seconds_count", kind="deploy",
                      result="succeeded") or 0) == 1  # fmt: skip
        # the edge's own per-site counters: the five requests above (and the health checks
        # that went through it), under the site's server name
        served = [
            v
            for (name, labels), v in found.items()
            if name == "caddy_http_requests_total" and ("server", "site-www") in labels
        ]
        assert served and sum(served) >= 5  # fmt: skip

        # the dashboard's charts: two rounds of samples a little apart, with requests between
        now = [time.time() - 60]
        sampler = Sampler(env.db, edge_socket(env.config()), clock=lambda: now[0])
        assert sampler.tick() >= 1
        # the same from the edge's access log (how the daemon samples when it is on)
        logged = Sampler(env.db, None, clock=lambda: now[0], access_log=access_log(env.config()))
        logged.tally()
        for _ in range(30):
            httpx.get(f"http://127.0.0.1:{row.productionPort}/")
        httpx.get(f"http://127.0.0.1:{row.productionPort}/nothing-here")
        wait_for(lambda: (logged.tally(), logged._edge().get("www", [0])[0] >= 31)[1], 10,
                 "the requests logged")  # fmt: skip
        logged.close()
        now[0] += 60
        sampler.tick()
        (first, second) = env.db.samples("www", since=0)
        assert second.requests is not None and first.requests is not None
        assert second.requests - first.requests >= 31
        assert second.seconds is not None and first.seconds is not None
        assert second.seconds > first.seconds
        assert second.errors == first.errors  # a 404 is no server error

        # a repair: the instance of a process site is killed; the daemon puts it back
        env.write(
            "app",
            desired_yaml(good, extra="start:\n  command: exec python3 -m http.server $PORT\n"),
        )
        env.wait_status("app", "running")
        (instance,) = env.instances("app")
        assert instance.pid is not None
        import os
        import signal

        os.kill(instance.pid, signal.SIGKILL)

        def repaired() -> bool:
            daemon.pulse()
            found = samples(api.get("/metrics").get_data(as_text=True))
            return value(found, "reconciler_instance_repairs_total", project="app") == 1

        wait_for(repaired, 30, "the repair counted")

        # once the daemon stops, its counters go (they were its process's), the stores' stay
        env.stop()
        found = samples(api.get("/metrics").get_data(as_text=True))
        assert value(found, "reconciler_daemon_up") == 0
        assert value(found, "reconciler_deployments_total", project="www", kind="deploy",
                     result="succeeded") is None  # fmt: skip
        assert value(found, "reconciler_projects", status="running") == 2
