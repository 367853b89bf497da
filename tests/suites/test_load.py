"""Load, on loopback only, bounded in count and time: many projects deploying at once, many
API clients at once, and a storm of concurrent deploy/stop/rollback calls on one project
that must end consistent with the last desired write. ``make load`` runs the full sizes
(LOAD_PROJECTS=50, LOAD_CLIENTS=200, LOAD_SECONDS=30, LOAD_CALLS=100); ``make test`` a slice.
Figures are printed (-s shows them); the tests assert correctness, never speed."""

from __future__ import annotations

import dataclasses
import os
import random
import statistics
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from reconciler.api.app import create_app
from reconciler.api.server import ApiServer
from tests.conftest import PYTHON, REPO, free_port
from tests.integration.harness import Env, desired_yaml, environment, get, make_site, wait_for

PROJECTS = int(os.environ.get("LOAD_PROJECTS", "10"))
CLIENTS = int(os.environ.get("LOAD_CLIENTS", "20"))
SECONDS = float(os.environ.get("LOAD_SECONDS", "3"))
CALLS = int(os.environ.get("LOAD_CALLS", "20"))


def api_process(env: Env) -> tuple[subprocess.Popen[bytes], str]:
    """``reconciler api`` on the environment's files, in its own process; once it answers."""
    port = free_port()
    api = subprocess.Popen(
        [PYTHON, "-m", "reconciler", "api", "--listen", f"127.0.0.1:{port}",
         "--desired", str(env.desired), "--data", str(env.data), "--edge", "off"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/healthz", timeout=1).status_code == 200, 20, "API")
    return api, base


@pytest.mark.timeout(300)
def test_many_projects_deploying_at_once_all_serve(tmp_path: Path) -> None:
    with environment(tmp_path) as env:
        env.start()
        started = time.monotonic()
        for n in range(PROJECTS):
            site = make_site(tmp_path / f"site{n}", f"site {n}")
            env.write(f"p{n}", desired_yaml(site))
        for n in range(PROJECTS):
            env.wait_serving(f"p{n}", f"site {n}", timeout=240)
        took = time.monotonic() - started
        print(f"\nload: {PROJECTS} projects deployed at once, all serving in {took:.1f} s")
        ports = {env.row(f"p{n}").productionPort for n in range(PROJECTS)}  # type: ignore[union-attr]
        assert len(ports) == PROJECTS, "every project has its own address"


@pytest.mark.timeout(300)
def test_many_api_clients_at_once_get_no_errors(tmp_path: Path) -> None:
    with environment(tmp_path) as env:
        env.start()
        site = make_site(tmp_path / "site", "busy")
        env.write("www", desired_yaml(site))
        env.wait_serving("www", "busy")
        env.stop()  # the sites keep serving; the API runs alone, in its own process
        api, base = api_process(env)
        paths = ["/healthz", "/api/projects", "/api/projects/www/production",
                 "/api/projects/www/production-history"]  # fmt: skip
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        stop = time.monotonic() + SECONDS
        barrier = threading.Barrier(CLIENTS)

        def client(seed: int) -> None:
            rng = random.Random(seed)
            mine: list[float] = []
            with httpx.Client(base_url=base, timeout=30) as http:
                barrier.wait()
                while time.monotonic() < stop:
                    began = time.perf_counter()
                    try:
                        response = http.get(rng.choice(paths))
                        if response.status_code != 200:
                            with lock:
                                errors.append(f"HTTP {response.status_code}")
                    except httpx.HTTPError as exc:
                        with lock:
                            errors.append(type(exc).__name__)
                    mine.append(time.perf_counter() - began)
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            api.terminate()
            api.wait(10)
        p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 100 else max(latencies)
        print(
            f"\nload: {CLIENTS} API clients (one process) for {SECONDS:g} s against "
            f"`reconciler api` (its own process): {len(latencies)} requests, "
            f"{len(errors)} errors, p50 {statistics.median(latencies) * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms"
        )
        assert errors == []


@pytest.mark.timeout(300)
def test_a_storm_of_writes_ends_consistent_with_the_last_desired_write(tmp_path: Path) -> None:
    with environment(tmp_path) as env:
        env.start()
        site = make_site(tmp_path / "site", "one")
        env.write("www", desired_yaml(site))
        first = env.wait_serving("www", "one")
        (site / "dist" / "index.html").write_text("two")
        env.write("www", desired_yaml(site, generation=2))
        env.wait_serving("www", "two")
        config = dataclasses.replace(env.config(), listen_port=0)
        app = create_app(config)
        app.extensions["reconciler"].rollback_grace = 0.0
        server = ApiServer(app, config)
        server.start()
        base = f"http://127.0.0.1:{server.port}/api/projects/www"
        codes: list[int] = []
        lock = threading.Lock()
        barrier = threading.Barrier(CALLS)

        def call(n: int) -> None:
            kind = ("deploy", "stop-production", "rollback-production")[n % 3]
            body = {"toHash": first.productionHash} if kind == "rollback-production" else {}
            barrier.wait()
            with httpx.Client(timeout=120) as http:
                response = http.post(f"{base}/{kind}", json=body)
            with lock:
                codes.append(response.status_code)

        threads = [threading.Thread(target=call, args=(n,)) for n in range(CALLS)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            server.stop()
        assert all(code in (200, 400, 500) for code in codes), codes
        # the file is the truth: whatever the last write left there is what runs
        text = (env.desired / "www.yaml").read_text()
        assert "# managed by the tests" in text, "every write kept the file's comments"
        env.resync_and_wait("www")
        stopped = "state: stopped" in text
        if stopped:
            env.wait_status("www", "stopped", timeout=60)
            row = env.row("www")
            assert row is not None and row.productionPort is None
        else:
            version = (yaml.safe_load(text).get("production") or {}).get("version", "latest")
            pinned = None if version == "latest" else version
            row = wait_for(
                lambda: (
                    (r := env.row("www")) is not None
                    and r.productionStatus == "running"
                    and (pinned is None or r.productionHash == pinned)
                    and env.db.open_deployment("www") is None
                    and r
                ),
                120,
                "converged on the last write",
            )
            assert get(f"http://127.0.0.1:{row.productionPort}/") in ("one", "two")
        print(f"\nload: {CALLS} concurrent writes on one project: {sorted(set(codes))}; "
              f"ended {'stopped' if stopped else 'running'} as the file says")  # fmt: skip


DEPLOYS = int(os.environ.get("LOAD_DEPLOYS", "100"))


@pytest.mark.timeout(300)
def test_concurrent_deploys_coalesce_into_the_one_queued_or_under_way(tmp_path: Path) -> None:
    """Every deploy asked while one is queued or building joins it: one generation bump and
    one build for any number of concurrent asks (before the edits were compare-and-swaps,
    1,000 gave 103 of each); a deploy asked after it ended builds again."""
    with environment(tmp_path) as env:
        env.start()
        site = make_site(tmp_path / "site", "one")
        gate = tmp_path / "gate"
        gate.touch()
        build = f"build:\n  command: while [ ! -e {gate} ]; do sleep 0.05; done\n  output: dist\n"
        env.write("www", desired_yaml(site, extra=build))
        env.wait_serving("www", "one")
        config = dataclasses.replace(env.config(), listen_port=0)
        server = ApiServer(create_app(config), config)
        server.start()
        url = f"http://127.0.0.1:{server.port}/api/projects/www/deploy"
        gate.unlink()  # the build a deploy starts waits until every ask is in
        answers: list[str] = []
        lock = threading.Lock()
        clients = min(DEPLOYS, 50)
        barrier = threading.Barrier(clients)

        def client(n: int) -> None:
            mine = []
            barrier.wait()
            with httpx.Client(timeout=60) as http:
                for _ in range(n, DEPLOYS, clients):
                    response = http.post(url, json={})
                    mine.append(f"{response.status_code} {response.json().get('status')}")
            with lock:
                answers.extend(mine)

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            took = time.monotonic() - started
            generation = yaml.safe_load((env.desired / "www.yaml").read_text())["production"]
            builds = [d for d in env.db.deployments("www") if d.kind == "deploy"]
            print(f"\nload: {DEPLOYS} concurrent deploys in {took:.1f} s: generation "
                  f"{generation['generation']}, {len(builds) - 1} build(s) beside the first deploy's; "
                  f"answers {sorted(set(answers))}")  # fmt: skip
            assert len(answers) == DEPLOYS
            assert {a.split()[0] for a in answers} == {"200"}
            assert {a.split()[1] for a in answers} <= {"queued", "building"}, answers
            assert generation["generation"] == 2, "one bump for every ask"
            gate.touch()
            wait_for(lambda: env.db.open_deployment("www") is None, 60, "the deploy ends")
            assert [d.generation for d in env.db.deployments("www") if d.kind == "deploy"] == [
                2, 1
            ]  # fmt: skip
            again = httpx.post(url, json={}, timeout=30)
            assert again.json()["status"] == "queued"
            generation = yaml.safe_load((env.desired / "www.yaml").read_text())["production"]
            assert generation["generation"] == 3, "a deploy after it ended builds again"
        finally:
            gate.touch()
            server.stop()


EDITOR_SAVES = int(os.environ.get("LOAD_EDITOR_SAVES", "30"))


@pytest.mark.timeout(300)
def test_an_editor_and_api_clients_never_lose_each_others_writes(tmp_path: Path) -> None:
    """An editor saving the desired file (a temp file renamed over it, as vim and git do)
    while four clients change its env through ``reconciler api`` (its own process): every
    save of the editor survives, every API call is answered 200, and the file holds the
    env one of them wrote. (Before the edits were compare-and-swaps: 9 of 60 saves lost
    with 2 clients, 16 of 100 with 4.)"""
    with environment(tmp_path) as env:
        site = make_site(tmp_path / "site", "busy")
        env.desired.mkdir(parents=True)
        env.write("www", desired_yaml(site, state="stopped"))
        api, base = api_process(env)
        path = env.desired / "www.yaml"
        try:
            landed: dict[str, str] = {}
            errors: list[str] = []
            lock = threading.Lock()

            def editor() -> None:
                for number in range(EDITOR_SAVES):
                    text = path.read_text() + f"# save {number}\n"
                    temp = env.desired / f".www.yaml.{number}.swp"
                    temp.write_text(text)
                    os.rename(temp, path)
                    time.sleep(0.02)

            def client(name: str) -> None:
                with httpx.Client(timeout=30) as http:
                    for number in range(EDITOR_SAVES):
                        value = f"{name}-{number}"
                        answer = http.put(f"{base}/api/projects/www/env",
                                          json={"env": {name: value}})  # fmt: skip
                        with lock:
                            if answer.status_code == 200:
                                landed[name] = value
                            else:
                                errors.append(f"{answer.status_code} {answer.text[:80]}")

            threads = [threading.Thread(target=editor)] + [
                threading.Thread(target=client, args=(f"C{n}",)) for n in range(4)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        finally:
            api.terminate()
            api.wait(10)
        text = path.read_text()
        lost = [n for n in range(EDITOR_SAVES) if f"# save {n}\n" not in text]
        print(f"\nload: an editor saving {EDITOR_SAVES} times, 4 API clients {EDITOR_SAVES} "
              f"edits each: {len(lost)} saves lost, {len(errors)} API errors")  # fmt: skip
        assert errors == []
        assert lost == [], f"{len(lost)} of {EDITOR_SAVES} saves of the editor were lost"
        env_block = yaml.safe_load(text).get("env") or {}
        # an env PUT replaces the whole env (and an editor's save may put back the one it
        # read): one client's is left
        assert len(env_block) == 1 and next(iter(env_block)) in landed


EDGE_CHANGES = int(os.environ.get("LOAD_EDGE_CHANGES", "10"))


@pytest.mark.timeout(400)
def test_keep_alive_clients_lose_nothing_while_sites_come_and_go(tmp_path: Path) -> None:
    """Persistent connections to three sites while other sites are added and removed
    through their desired files (each was a configuration load of the edge, which dropped
    nearly every persistent connection: 226 failures of 47,623 requests over 40 loads):
    no request fails, and the edge loads no configuration."""
    from reconciler.core.kinds import EdgeMode
    from tests.integration.test_edge_daemon import Loop

    with environment(tmp_path, edge=EdgeMode.ON) as env:
        env.start()
        assert env.daemon is not None and env.daemon.edge is not None
        loops = []
        for n in range(3):
            site = make_site(tmp_path / f"kept{n}", f"kept {n}")
            env.write(f"kept{n}", desired_yaml(site))
            row = env.wait_serving(f"kept{n}", f"kept {n}")
            loop = Loop(f"http://127.0.0.1:{row.productionPort}/")
            for _ in range(2):  # keep-alive clients only
                thread = threading.Thread(target=loop._run, args=(True, 300))
                thread.start()
                loop.threads.append(thread)
            loops.append(loop)
        loads = env.daemon.edge.loads
        try:
            for n in range(EDGE_CHANGES // 2):
                site = make_site(tmp_path / f"new{n}", f"new {n}")
                env.write(f"new{n}", desired_yaml(site))
                env.wait_serving(f"new{n}", f"new {n}")
            for n in range(EDGE_CHANGES // 2):
                (env.desired / f"new{n}.yaml").unlink()
                wait_for(lambda n=n: (r := env.row(f"new{n}")) is None
                         or r.productionStatus == "stopped", 30, f"new{n} stopped")  # fmt: skip
        finally:
            for loop in loops:
                loop.finish()
        requests = sum(sum(loop.bodies.values()) for loop in loops)
        failures = [f for loop in loops for f in loop.failures]
        print(f"\nload: {EDGE_CHANGES} sites added and removed under 6 keep-alive clients: "
              f"{requests} requests, {len(failures)} failed, "
              f"{env.daemon.edge.loads - loads} configuration loads")  # fmt: skip
        assert failures == []
        assert env.daemon.edge.loads == loads, "no configuration load for a site"
        assert requests > 100
