"""Every endpoint and status code through Flask's test client: real files, real SQLite, no daemon."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from flask.testing import FlaskClient

from reconciler.api.app import create_app
from reconciler.api.server import ApiServer, TokenError, check_exposure
from reconciler.core.config import Config
from reconciler.core.kinds import (
    DeploymentKind,
    DeploymentState,
    EdgeMode,
    InstanceRole,
    JobState,
    JobType,
    RuntimeName,
    Status,
)
from reconciler.core.spec import ProjectId
from reconciler.readside.operations import Operations
from reconciler.stores.desired import parse
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import InstanceRow
from tests.conftest import free_port
from tests.unit.conftest import SITE, db, stage

STATUS_KEYS = [
    "status", "url", "port", "error", "startedAt", "activeJob", "hash", "config", "note",
    "commit", "subject", "source", "replicas", "usage", "app", "pinned", "following", "standby",
]  # fmt: skip


def test_status_of_a_new_project(client: FlaskClient) -> None:
    response = client.get("/api/projects/www/production")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    assert list(response.json) == STATUS_KEYS  # type: ignore[arg-type]
    assert response.json == {
        "status": "stopped", "url": None, "port": None, "error": None,
        "startedAt": None, "activeJob": None, "hash": None, "config": None, "note": None,
        "commit": None, "subject": None, "source": None, "replicas": None, "usage": None, "app": None,
        "pinned": None, "following": False, "standby": [],
    }  # fmt: skip


def serving(app: Flask, config: Config, tmp_path: Path, html: str = "live") -> str:
    """Record a project that runs a kept release, as the daemon leaves it after a deploy."""
    path = config.desired_dir / "www.yaml"
    settings = parse(path, path.read_bytes()).instance_config(RuntimeName.PROCESS)
    version = stage(config, html, tmp_path)
    ReleaseStore(config.releases_dir).switch(ProjectId("www"), version)
    db(app).update_project(
        ProjectId("www"), productionStatus=Status.RUNNING, productionPort=3001,
        productionUrl="http://localhost:3001", productionStartedAt="2025-12-27T10:30:45.000Z",
        productionHash=version, latestHash=version, observedGeneration=3,
    )  # fmt: skip
    db(app).put_instance(
        InstanceRow("www", f"{version}-{settings}", version, settings, RuntimeName.PROCESS,
                    3001, 1, 1, None,
                    InstanceRole.ACTIVE, "2025-12-27T10:30:45.000Z")
    )  # fmt: skip
    return version


def test_status_of_a_running_project(
    client: FlaskClient, app: Flask, config: Config, tmp_path: Path
) -> None:
    (config.desired_dir / "www.yaml").write_text(SITE.replace("state: stopped", "state: running"))
    version = serving(app, config, tmp_path)
    path = config.desired_dir / "www.yaml"
    settings = parse(path, path.read_bytes()).instance_config(RuntimeName.PROCESS)
    running = {
        "status": "running", "url": "http://localhost:3001", "port": 3001, "error": None,
        "startedAt": "2025-12-27T10:30:45.000Z", "activeJob": None, "hash": version,
        "config": settings, "note": None, "commit": None, "subject": None, "source": None, "replicas": None, "usage": None, "app": None,
        "pinned": None, "following": False, "standby": [],
    }  # fmt: skip
    assert client.get("/api/projects/www/production").json == running
    # housekeeping (a job outside any deployment) is not an operator's request
    db(app).create_job("www", JobType.STOP, generation=None, hash="0badf00d")
    assert client.get("/api/projects/www/production").json == running
    # a deployment for the current desired spec shows its running job
    digest = parse(config.desired_dir / "www.yaml", (config.desired_dir / "www.yaml").read_bytes())
    dep = db(app).start_deployment("www", DeploymentKind.ACTIVATE, generation=3,
                                   digest=digest.digest())  # fmt: skip
    db(app).create_job("www", JobType.WAIT_READY, generation=3, deployment=dep)
    assert client.get("/api/projects/www/production").json == {
        **running,
        "activeJob": {"type": "production.waitReady", "state": "running"},
    }
    # a stop the daemon has not picked up yet wins over the running job
    (config.desired_dir / "www.yaml").write_text(SITE)
    status = client.get("/api/projects/www/production").json
    assert (status["status"], status["url"], status["activeJob"]) == (
        "stopped",
        None,
        {"type": "production.stop", "state": "queued"},
    )  # type: ignore[index]


def test_next_job_comes_from_the_planner(
    client: FlaskClient, app: Flask, config: Config, tmp_path: Path
) -> None:
    (config.desired_dir / "www.yaml").write_text(SITE.replace("state: stopped", "state: running"))
    version = serving(app, config, tmp_path)
    # the latest release is no longer kept: the daemon will build again
    ReleaseStore(config.releases_dir).remove(ProjectId("www"), version)
    status = client.get("/api/projects/www/production").json
    assert (status["status"], status["activeJob"]) == (
        "queued",
        {"type": "production.build", "state": "queued"},
    )  # type: ignore[index]
    # a pin of a kept version: the daemon will start it
    other = stage(config, "other", tmp_path)
    (config.desired_dir / "www.yaml").write_text(
        SITE.replace("state: stopped", "state: running").replace("latest", other)
    )
    status = client.get("/api/projects/www/production").json
    assert status["activeJob"] == {"type": "production.start", "state": "queued"}  # type: ignore[index]
    # a pin of a version that is not kept: the daemon will fail it; nothing to wait for
    (config.desired_dir / "www.yaml").write_text(
        SITE.replace("state: stopped", "state: running").replace("latest", "0badf00d")
    )
    assert client.get("/api/projects/www/production").json["activeJob"] is None  # type: ignore[index]


def test_deploy_bumps_generation_and_reports_queued_at_once(
    client: FlaskClient, config: Config
) -> None:
    response = client.post("/api/projects/www/deploy", json={})
    assert response.status_code == 200
    assert response.json == {
        "status": "queued", "url": None, "port": None, "error": None, "startedAt": None,
        "activeJob": {"type": "production.build", "state": "queued"}, "hash": None,
        "config": None, "note": None, "commit": None, "subject": None, "source": None, "replicas": None, "usage": None, "app": None,
        "pinned": None, "following": False, "standby": [],
    }  # fmt: skip
    text = (config.desired_dir / "www.yaml").read_text()
    assert text == SITE.replace("state: stopped ", "state: running ").replace(
        "generation: 3", "generation: 4"
    )
    # in progress: a second deploy returns the status and bumps nothing
    again = client.post("/api/projects/www/deploy", json={})
    assert again.json["status"] == "queued"  # type: ignore[index]
    assert (config.desired_dir / "www.yaml").read_text() == text
    assert client.get("/api/projects/www/production").json["status"] == "queued"  # type: ignore[index]


def test_deploy_while_running_bumps(
    client: FlaskClient, app: Flask, config: Config, tmp_path: Path
) -> None:
    (config.desired_dir / "www.yaml").write_text(SITE.replace("state: stopped", "state: running"))
    serving(app, config, tmp_path)
    assert client.get("/api/projects/www/production").json["status"] == "running"  # type: ignore[index]
    response = client.post("/api/projects/www/deploy", json={})
    assert response.json["status"] == "queued"  # type: ignore[index]
    assert "generation: 4" in (config.desired_dir / "www.yaml").read_text()


def test_a_deploy_at_the_largest_generation_goes_round_to_zero(
    client: FlaskClient, config: Config
) -> None:
    path = config.desired_dir / "www.yaml"
    path.write_text(SITE.replace("generation: 3", f"generation: {(1 << 63) - 1}"))
    assert client.post("/api/projects/www/deploy", json={}).status_code == 200
    assert "generation: 0" in path.read_text()
    path.write_text(SITE.replace("generation: 3", f"generation: {1 << 63}"))
    refused = client.post("/api/projects/www/deploy", json={})
    assert refused.status_code == 409
    assert "less than or equal to 9223372036854775807" in refused.json["error"]  # type: ignore[index]


def test_fifty_concurrent_deploys_bump_once(config: Config) -> None:
    config = Config(**{**config.__dict__, "listen_port": free_port()})
    app = create_app(config)
    server = ApiServer(app, config)
    server.start()
    try:
        barrier = threading.Barrier(50)
        codes: list[int] = []

        def call() -> None:
            barrier.wait()
            codes.append(
                httpx.post(
                    f"http://127.0.0.1:{server.port}/api/projects/www/deploy", json={}, timeout=30
                ).status_code
            )

        threads = [threading.Thread(target=call) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes == [200] * 50
        assert "generation: 4" in (config.desired_dir / "www.yaml").read_text()
        assert "# relative to this file" in (config.desired_dir / "www.yaml").read_text()
    finally:
        server.stop()
        app.extensions["reconciler"].db.close()


def test_stop_production(client: FlaskClient, app: Flask, config: Config) -> None:
    (config.desired_dir / "www.yaml").write_text(SITE.replace("state: stopped", "state: running"))
    db(app).update_project(
        ProjectId("www"), productionStatus="running", productionPort=3001, observedGeneration=3,
        productionUrl="http://localhost:3001", productionHash="a1b2c3d4",
    )  # fmt: skip
    response = client.post("/api/projects/www/stop-production", json={})
    assert response.json == {
        "status": "stopped", "url": None, "port": None, "error": None, "startedAt": None,
        "activeJob": {"type": "production.stop", "state": "queued"}, "hash": "a1b2c3d4",
        "config": None, "note": None, "commit": None, "subject": None, "source": None, "replicas": None, "usage": None, "app": None,
        "pinned": None, "following": False, "standby": [],
    }  # fmt: skip
    assert (config.desired_dir / "www.yaml").read_text() == SITE
    db(app).update_project(
        ProjectId("www"), productionStatus="stopped", productionPort=None, productionUrl=None
    )
    again = client.post("/api/projects/www/stop-production", json={})
    assert again.json["activeJob"] is None and again.json["hash"] == "a1b2c3d4"  # type: ignore[index]


def test_history_newest_first(
    client: FlaskClient, app: Flask, config: Config, tmp_path: Path
) -> None:
    assert client.get("/api/projects/www/production-history").json == {"versions": []}
    old = stage(config, "old", tmp_path)
    time.sleep(0.002)
    new = stage(config, "new", tmp_path)
    db(app).update_project(ProjectId("www"), productionStatus="running", productionHash=new)
    versions = client.get("/api/projects/www/production-history").json["versions"]  # type: ignore[index]
    assert [(v["hash"], v["isActive"]) for v in versions] == [(new, True), (old, False)]
    assert all(
        list(v)
        == [
            "hash",
            "isActive",
            "createdAt",
            "config",
            "commit",
            "subject",
            "app",
            "previewUrl",
            "served",
            "servedAt",
            "failure",
        ]
        and v["createdAt"].endswith("Z")
        for v in versions
    )


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"", "application/json", 400, "a JSON body is required"),
        (b"{bad", "application/json", 400, "not valid JSON"),
        (b'{"toHash": "XYZ"}', "application/json", 400, "toHash"),
        (b'{"toHash": 12345678}', "application/json", 400, "toHash"),
        (b'{"toHash": "a1b2c3d4", "x": 1}', "application/json", 400, "toHash"),
        (b'["a1b2c3d4"]', "application/json", 400, "JSON object"),
        (b"toHash=a1b2c3d4", "application/x-www-form-urlencoded", 415, "application/json"),
        (b'{"toHash": "a1b2c3d4"}', "application/json", 404, "version a1b2c3d4 not found"),
    ],
)
def test_rollback_bad_requests(
    client: FlaskClient, body: bytes, content_type: str, status: int, message: str
) -> None:
    response = client.post(
        "/api/projects/www/rollback-production", data=body, content_type=content_type
    )
    assert response.status_code == status
    assert message in response.json["error"]  # type: ignore[index]


def test_rollback_to_the_active_version_is_400(
    client: FlaskClient, app: Flask, config: Config, tmp_path: Path
) -> None:
    active = stage(config, "a", tmp_path)
    db(app).update_project(ProjectId("www"), productionStatus="running", productionHash=active)
    response = client.post("/api/projects/www/rollback-production", json={"toHash": active})
    assert response.status_code == 400 and "already active" in response.json["error"]  # type: ignore[index]


def test_rollback_without_a_daemon_pins_then_reports_500(
    client: FlaskClient, config: Config, tmp_path: Path
) -> None:
    target = stage(config, "b", tmp_path)
    started = time.monotonic()
    response = client.post("/api/projects/www/rollback-production", json={"toHash": target})
    assert time.monotonic() - started < 5
    assert response.status_code == 500
    assert response.json["success"] is False and "did not converge" in response.json["error"]  # type: ignore[index]
    text = (config.desired_dir / "www.yaml").read_text()
    assert (
        f"version: {target}" in text and "state: running" in text and "# the marketing site" in text
    )


def test_comments_survive_deploy_stop_and_rollback(
    client: FlaskClient, config: Config, tmp_path: Path
) -> None:
    target = stage(config, "c", tmp_path)
    client.post("/api/projects/www/deploy", json={})
    client.post("/api/projects/www/stop-production", json={})
    client.post("/api/projects/www/rollback-production", json={"toHash": target})
    text = (config.desired_dir / "www.yaml").read_text()
    for comment in ("# the marketing site", "# relative to this file", "# flipped by the API"):
        assert comment in text
    assert text.splitlines()[3:] == [
        "production:",
        "  state: running   # flipped by the API",
        f"  version: {target}",
        "  generation: 4",
        "",
        "health:",
        "  timeout: 1",
    ]


def events(response: Any) -> list[tuple[str | None, str | None, dict[str, Any] | None]]:
    found = []
    for block in response.get_data(as_text=True).split("\n\n"):
        fields = dict(
            line.split(": ", 1)
            for line in block.splitlines()
            if ": " in line and not line.startswith(":")
        )
        if "event" in fields:
            found.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
    return found


def test_stream_with_nothing_in_progress_sends_state_then_end(
    client: FlaskClient, app: Flask, config: Config, tmp_path: Path
) -> None:
    response = client.get("/api/projects/www/production-stream")
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    body = response.get_data(as_text=True)
    assert body.startswith("retry: 3000\n\n")
    assert [e[1] for e in events(response)] == ["production.stopped", "stream.end"]
    (config.desired_dir / "www.yaml").write_text(SITE.replace("state: stopped", "state: running"))
    version = serving(app, config, tmp_path)
    got = events(client.get("/api/projects/www/production-stream"))
    assert got[0][1:] == (
        "production.ready",
        {"status": "running", "url": "http://localhost:3001", "port": 3001, "hash": version},
    )


def test_stream_replays_the_deployment_and_resumes_by_last_event_id(
    client: FlaskClient, app: Flask
) -> None:
    store = db(app)
    store.daemon_started("process")  # a daemon that runs (its pulse is fresh)
    digest = parse(Path("www.yaml"), SITE.encode()).digest()
    dep = store.start_deployment("www", DeploymentKind.DEPLOY, generation=4, digest=digest)
    ids = [
        store.append_event("www", "production.building", {"message": f"line {i}"}, deployment=dep)
        for i in range(3)
    ]

    def finish() -> None:
        time.sleep(0.3)
        ids.append(
            store.append_event(
                "www", "production.starting", {"message": "Starting"}, deployment=dep
            )
        )
        ids.append(
            store.append_event("www", "production.ready", {"status": "running"}, deployment=dep)
        )

    threading.Thread(target=finish).start()
    got = events(client.get("/api/projects/www/production-stream"))
    assert [e[1] for e in got] == ["production.building"] * 3 + [
        "production.starting",
        "production.ready",
        "stream.end",
    ]
    assert [int(e[0]) for e in got[:-1]] == ids  # type: ignore[arg-type]
    resumed = events(
        client.get("/api/projects/www/production-stream", headers={"Last-Event-ID": str(ids[1])})
    )
    assert [int(e[0]) for e in resumed[:-1]] == ids[2:]  # type: ignore[arg-type]
    assert (
        client.get(
            "/api/projects/www/production-stream", headers={"Last-Event-ID": "x"}
        ).status_code
        == 400
    )


def test_stream_cap_then_503_and_status_still_fast(config: Config) -> None:
    config = Config(**{**config.__dict__, "listen_port": free_port(), "stream_cap": 3})
    (config.desired_dir / "www.yaml").write_text(SITE.replace("state: stopped", "state: running"))
    app = create_app(config)
    svc: Operations = app.extensions["reconciler"]
    running = parse(Path("www.yaml"), SITE.replace("state: stopped", "state: running").encode())
    svc.db.start_deployment(  # in progress: streams stay open
        "www", DeploymentKind.DEPLOY, generation=3, digest=running.digest()
    )
    server = ApiServer(app, config)
    server.start()
    base = f"http://127.0.0.1:{server.port}/api/projects/www"
    clients = [httpx.Client(timeout=10) for _ in range(4)]
    streams = []
    try:
        for c in clients[:3]:
            stream = c.stream("GET", f"{base}/production-stream")
            response = stream.__enter__()
            assert response.status_code == 200
            next(response.iter_lines())  # headers and the first line arrive at once
            streams.append(stream)
        extra = httpx.get(f"{base}/production-stream", timeout=5)
        assert extra.status_code == 503 and extra.headers["Retry-After"] == "5"
        started = time.monotonic()
        assert httpx.get(f"{base}/production", timeout=5).status_code == 200
        assert time.monotonic() - started < 0.5
    finally:
        for stream in streams:
            stream.__exit__(None, None, None)
        for c in clients:
            c.close()
        server.stop()
        svc.db.close()


HOSTILE = [
    "..%2fetc",
    "%2e%2e",
    "..",
    "WWW",
    "a" * 300,
    "www;rm",
    "www%00",
    "%00",
    "w w",
    "%2e%2e%2f%2e%2e",
]
ROUTES = [
    ("GET", "/api/projects/{}/production"),
    ("POST", "/api/projects/{}/deploy"),
    ("POST", "/api/projects/{}/stop-production"),
    ("GET", "/api/projects/{}/production-history"),
    ("POST", "/api/projects/{}/rollback-production"),
    ("GET", "/api/projects/{}/production-stream"),
]


@pytest.mark.parametrize("raw", HOSTILE)
@pytest.mark.parametrize(("method", "route"), ROUTES)
def test_hostile_ids(
    client: FlaskClient, app: Flask, config: Config, method: str, route: str, raw: str
) -> None:
    before = sorted(p.name for p in config.desired_dir.iterdir())
    response = client.open(route.format(raw), method=method, json={"toHash": "a1b2c3d4"})
    assert response.status_code in (400, 404)
    assert "error" in response.json  # type: ignore[operator]
    assert sorted(p.name for p in config.desired_dir.iterdir() if p.name != ".locks") == [
        n for n in before if n != ".locks"
    ]
    assert [r.id for r in db(app).projects()] == []


def test_unknown_project_404(client: FlaskClient) -> None:
    response = client.get("/api/projects/nope/production")
    assert response.status_code == 404 and response.json == {
        "error": "project 'nope' not found: there is no desired file for it",
        "kind": "not-found",
    }


def test_405_413_415(client: FlaskClient) -> None:
    assert client.delete("/api/projects/www/production").status_code == 405
    assert client.get("/api/projects/www/deploy").json == {
        "error": "method GET is not allowed here"
    }
    big = client.post(
        "/api/projects/www/deploy", data=b"{" + b" " * 20000 + b"}", content_type="application/json"
    )
    assert big.status_code == 413
    assert big.json["error"].startswith("the body is larger than 16384 bytes")  # type: ignore[index]
    assert (
        client.post("/api/projects/www/deploy", data=b"x", content_type="text/plain").status_code
        == 415
    )
    # every write is JSON, an empty one too: no body and no content type, or a blank
    # text/plain one (what a cross-origin page can send without asking), are refused
    for data, kind in ((b"", None), (b" ", "text/plain"), (b"", "text/plain")):
        refused = client.post("/api/projects/www/deploy", data=data, content_type=kind)
        assert refused.status_code == 415, (data, kind)
    assert client.post("/api/projects/www/deploy", json={}).status_code == 200


def test_invalid_desired_file_blocks_edits_with_409(client: FlaskClient, config: Config) -> None:
    (config.desired_dir / "www.yaml").write_text(SITE + "bogus: 1\n")
    response = client.post("/api/projects/www/deploy", json={})
    assert response.status_code == 409 and "unknown key 'bogus'" in response.json["error"]  # type: ignore[index]
    assert (config.desired_dir / "www.yaml").read_text().endswith("bogus: 1\n")


def test_500_logs_a_request_id_and_leaks_nothing(
    client: FlaskClient, app: Flask, config: Config
) -> None:
    db(app).close()
    (config.data_dir / "state.db").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (config.data_dir / f"state.db{suffix}").unlink(missing_ok=True)
    response = client.get("/api/projects/www/production")
    assert response.status_code == 500
    assert response.json["error"].startswith("internal error (request id ")  # type: ignore[index]
    assert str(config.data_dir) not in response.get_data(as_text=True)


def test_auth(config: Config) -> None:
    app = create_app(config, token="s3cret")
    client = app.test_client()
    assert client.get("/api/projects/www/production").status_code == 200
    missing = client.post("/api/projects/www/deploy", json={})
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert (
        client.post(
            "/api/projects/www/deploy", headers={"Authorization": "Bearer nope"}
        ).status_code
        == 403
    )
    assert (
        client.post(
            "/api/projects/www/deploy", headers={"Authorization": "Basic s3cret"}
        ).status_code
        == 403
    )
    assert (
        client.post(
            "/api/projects/www/deploy", headers={"Authorization": "Bearer s3cret"}, json={}
        ).status_code
        == 200
    )
    # the logs may hold secrets (a build's environment, an app's configuration)
    assert client.get("/api/projects/www/production-logs?log=build").status_code == 401
    bearer = {"Authorization": "Bearer s3cret"}
    read = client.get("/api/projects/www/production-logs?log=build", headers=bearer)
    assert read.status_code in (200, 404)
    app.extensions["reconciler"].db.close()


def test_refuses_public_listen_without_token(config: Config) -> None:
    public = Config(**{**config.__dict__, "listen_host": "0.0.0.0"})
    with pytest.raises(TokenError, match="RECONCILER_API_TOKEN or --api-token-file"):
        check_exposure(public, None)
    check_exposure(public, "token")
    check_exposure(config, None)


def test_projects_list_includes_invalid_files(client: FlaskClient, config: Config) -> None:
    (config.desired_dir / "broken.yaml").write_text("source: x\nkeep: zero\n")
    (config.desired_dir / "Bad Name.yaml").write_text("source: x\n")
    projects = client.get("/api/projects").json["projects"]  # type: ignore[index]
    by_file = {p["file"]: p for p in projects}
    assert by_file["www.yaml"]["valid"] and by_file["www.yaml"]["production"]["status"] == "stopped"
    assert (
        by_file["broken.yaml"]["error"] == "broken.yaml:2:7: keep: Input should be a valid integer"
    )
    assert (
        by_file["Bad Name.yaml"]["id"] is None
        and "invalid project id" in by_file["Bad Name.yaml"]["error"]
    )


def test_the_listing_is_gzipped_for_clients_that_take_it_and_has_an_etag(
    client: FlaskClient, config: Config
) -> None:
    import gzip

    plain = client.get("/api/projects")
    assert plain.headers.get("Content-Encoding") is None
    etag = plain.headers["ETag"]
    packed = client.get("/api/projects", headers={"Accept-Encoding": "gzip, br"})
    assert packed.headers["Content-Encoding"] == "gzip"
    assert packed.headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(packed.data) == plain.data
    refused = client.get("/api/projects", headers={"Accept-Encoding": "gzip;q=0"})
    assert refused.headers.get("Content-Encoding") is None
    same = client.get("/api/projects", headers={"If-None-Match": etag})
    assert same.status_code == 304 and same.data == b""
    tmp = config.desired_dir / ".shop.tmp"
    tmp.write_text(SITE)
    tmp.rename(config.desired_dir / "shop.yaml")  # a new project: a new listing
    changed = client.get("/api/projects", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert [p["id"] for p in changed.json["projects"]] == ["shop", "www"]  # type: ignore[index]


def test_healthz_and_openapi(client: FlaskClient, app: Flask) -> None:
    never = {"running": False, "message": "not running (it has never run with this data dir)"}
    assert client.get("/healthz").json == {
        "status": "ok", "database": True, "edge": None, "daemon": never,
    }  # fmt: skip
    db(app).daemon_started("process")
    daemon = client.get("/healthz").json["daemon"]  # type: ignore[index]
    assert daemon["running"] is True and daemon["message"].startswith("running (pid ")
    db(app).set_edge(EdgeMode.ON, "down", pid=None, version="v2.11.7", sites=0, error="no answer")
    edge = client.get("/healthz").json["edge"]  # type: ignore[index]
    assert (edge["mode"], edge["status"], edge["error"]) == ("on", "down", "no answer")
    db(app).daemon_stopped()
    daemon = client.get("/healthz").json["daemon"]  # type: ignore[index]
    assert daemon["running"] is False and "it stopped at" in daemon["message"]
    doc = client.get("/openapi.json").json
    assert doc["openapi"] == "3.1.0"  # type: ignore[index]
    assert set(doc["paths"]) == {  # type: ignore[index]
        "/healthz", "/api/projects", "/api/projects/{id}/production", "/api/projects/{id}/deploy",
        "/api/projects/{id}/stop-production", "/api/projects/{id}/production-history",
        "/api/projects/{id}/rollback-production", "/api/projects/{id}/production-stream",
        "/api/projects/{id}/production-logs", "/api/projects/{id}/hooks/git",
        "/api/hooks/desired", "/metrics", "/api/projects/{id}/events",
        "/api/projects/{id}/start", "/api/projects/{id}/pin", "/api/projects/{id}/unpin",
        "/api/projects/{id}/desired", "/api/projects/{id}/env", "/api/projects/{id}",
        "/api/drafts", "/api/actions/{action}", "/api/secrets", "/api/secrets/{name}",
        "/api/projects/{id}/deployments", "/api/projects/{id}/series",
    }  # fmt: skip
    schemas = doc["components"]["schemas"]  # type: ignore[index]
    assert {
        "ProductionStatus",
        "ActiveJob",
        "History",
        "Version",
        "RollbackRequest",
        "RollbackResult",
    } <= set(schemas)
    assert set(schemas["ProductionStatus"]["required"]) >= {
        "status",
        "url",
        "port",
        "error",
        "startedAt",
        "activeJob",
    }


def test_rollback_answers_only_when_its_deployment_has_closed(
    app: Flask, config: Config, tmp_path: Path
) -> None:
    """The row already shows the target running while the old instance's stop still runs in
    the same deployment: the rollback must not answer yet, and a stop right after it must be
    reported as the operator's stop, not as that housekeeping."""
    (config.desired_dir / "www.yaml").write_text(SITE.replace("state: stopped", "state: running"))
    old = serving(app, config, tmp_path, "old")
    target = stage(config, "target", tmp_path)
    ops: Operations = app.extensions["reconciler"]
    ops.rollback_grace = 30.0
    answers: list[Any] = []
    caller = threading.Thread(target=lambda: answers.append(ops.rollback(ProjectId("www"), target)))
    caller.start()
    # the daemon: the pin's deployment switches, records running, then stops the old instance
    text = (config.desired_dir / "www.yaml").read_bytes()
    wait = time.monotonic() + 5
    while f"version: {target}".encode() not in text and time.monotonic() < wait:
        time.sleep(0.01)
        text = (config.desired_dir / "www.yaml").read_bytes()
    digest = parse(config.desired_dir / "www.yaml", text).digest()
    cfg = parse(config.desired_dir / "www.yaml", text).instance_config(RuntimeName.PROCESS)
    store = db(app)
    dep = store.start_deployment("www", DeploymentKind.ACTIVATE, generation=3, digest=digest)
    ReleaseStore(config.releases_dir).switch(ProjectId("www"), target)
    store.update_project(ProjectId("www"), productionHash=target, productionPort=3002)
    store.put_instance(
        InstanceRow("www", f"{target}-{cfg}", target, cfg, RuntimeName.PROCESS, 3002, 2, 2, None,
                    InstanceRole.ACTIVE, "2025-12-27T10:31:00.000Z")
    )  # fmt: skip
    time.sleep(0.3)  # the gap between waitReady and the old instance's stop: no job runs
    assert answers == [], "answered while its deployment was still open"
    stop = store.create_job("www", JobType.STOP, generation=None, hash=old, deployment=dep)
    time.sleep(0.1)
    assert answers == []
    store.finish_job(stop, JobState.SUCCEEDED)
    store.remove_instance("www", f"{old}-{cfg}")
    store.finish_deployment(dep, DeploymentState.SUCCEEDED)
    caller.join(5)
    assert answers and answers[0].success and answers[0].hash == target
    stopped = app.test_client().post("/api/projects/www/stop-production", json={}).json
    assert (stopped["status"], stopped["activeJob"]) == (  # type: ignore[index]
        "stopped",
        {"type": "production.stop", "state": "queued"},
    )


def test_cross_origin_writes_and_foreign_hosts_are_refused(
    client: FlaskClient, config: Config
) -> None:
    """What a web page an operator opens could send: a write from another origin, a
    'simple' cross-site request, a name that resolves to 127.0.0.1 (DNS rebinding)."""
    path = config.desired_dir / "www.yaml"
    before = path.read_text()
    deploy = "/api/projects/www/deploy"
    evil = client.post(deploy, json={}, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and "cross-origin write" in evil.json["error"]  # type: ignore[index]
    blind = client.post(deploy, json={}, headers={"Sec-Fetch-Site": "cross-site"})
    assert blind.status_code == 403
    opaque = client.post(deploy, json={}, headers={"Origin": "null"})
    assert opaque.status_code == 403
    rebound = client.get("/api/projects/www/production", headers={"Host": "evil.example:3000"})
    assert rebound.status_code == 403 and "loopback" in rebound.json["error"]  # type: ignore[index]
    assert path.read_text() == before, "nothing was written"
    # the API's own page, and clients that are not browsers, may write
    own = client.post(deploy, json={}, headers={"Origin": "http://localhost"})
    assert own.status_code == 200
    assert (
        client.post(deploy, json={}, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
    )


def test_allowed_origins_may_write(config: Config) -> None:
    allowed = dataclasses.replace(config, allowed_origins=("https://admin.example.com",))
    app = create_app(allowed)
    client = app.test_client()
    ok = client.post(
        "/api/projects/www/deploy", json={}, headers={"Origin": "https://admin.example.com"}
    )
    assert ok.status_code == 200
    other = client.post(
        "/api/projects/www/deploy", json={}, headers={"Origin": "https://other.example.com"}
    )
    assert other.status_code == 403
    app.extensions["reconciler"].db.close()


def test_unicode_digits_in_query_and_headers_are_400_not_500(client: FlaskClient) -> None:
    for url in (
        "/api/projects/www/production-logs?tail=%C2%B2",
        "/api/projects/www/production-logs?offset=%C2%B9",
        "/api/projects/www/production-stream?lastEventId=%C2%B3",
    ):
        assert client.get(url).status_code == 400, url


def test_deep_or_non_object_json_bodies_are_400(client: FlaskClient) -> None:
    for body in (b"[" * 5000, b"[null,null]", b'"deploy"', b"3"):
        response = client.post(
            "/api/projects/www/deploy", data=body, content_type="application/json"
        )
        assert response.status_code == 400, body[:20]


def test_half_sent_requests_do_not_starve_the_api(app: Flask, config: Config) -> None:
    """Slowloris: 150 connections that send half a request and stay idle; /healthz still
    answers at once (bounded: 150 loopback sockets, a few seconds)."""
    server = ApiServer(app, dataclasses.replace(config, listen_port=0))
    server.start()
    idle: list[socket.socket] = []
    try:
        for _ in range(150):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            idle.append(sock)
        started = time.monotonic()
        response = httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10)
        assert response.status_code == 200
        assert time.monotonic() - started < 5
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_a_retried_transient_error_shows_with_its_queued_job(
    client: FlaskClient, app: Flask, config: Config
) -> None:
    (config.desired_dir / "www.yaml").write_text(SITE.replace("state: stopped", "state: running"))
    db(app).update_project(
        ProjectId("www"), productionStatus=Status.ERROR,
        productionError="no free port in 3001-3001 on 127.0.0.1",
    )  # fmt: skip
    status = client.get("/api/projects/www/production").json
    assert status["status"] == "error"  # type: ignore[index]
    assert status["error"] == "no free port in 3001-3001 on 127.0.0.1"  # type: ignore[index]
    assert status["activeJob"] == {"type": "production.build", "state": "queued"}  # type: ignore[index]


def test_openapi_describes_the_event_stream(client: FlaskClient) -> None:
    get = client.get("/openapi.json").json["paths"]["/api/projects/{id}/production-stream"]["get"]  # type: ignore[index]
    header = next(p for p in get["parameters"] if p["name"] == "Last-Event-ID")
    assert header["schema"]["pattern"] == "^[0-9]{1,18}$"
    stream = get["responses"]["200"]["content"]["text/event-stream"]
    assert "stream.end" in stream["x-events"] and stream["schema"]["pattern"]


def test_the_api_serves_when_its_sockets_are_past_descriptor_1024(
    app: Flask, config: Config
) -> None:
    """select() cannot watch a descriptor past 1024: in a long-lived process with many open
    files the server's loop died and the API stopped answering. It polls instead."""
    held = [os.pipe() for _ in range(600)]
    server = ApiServer(app, dataclasses.replace(config, listen_port=0))
    server.start()
    try:
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5).status_code == 200
        assert server.alive()
    finally:
        server.stop()
        for read, write in held:
            os.close(read)
            os.close(write)


def test_the_edges_metrics_are_relabelled_by_site() -> None:
    """Caddy counts by host; the API's /metrics names the site each host reached (by its
    public port, or a domain), sums what ends up alike, and leaves unknown hosts out."""
    from reconciler.api.metrics import edge_lines

    text = "\n".join([
        "# HELP caddy_http_requests_total Counter of HTTP(S) requests made.",
        "# TYPE caddy_http_requests_total counter",
        'caddy_http_requests_total{handler="map",host="127.0.0.1:3001",server="sites"} 3',
        'caddy_http_requests_total{handler="map",host="localhost:3001",server="sites"} 2',
        'caddy_http_requests_total{handler="map",host="www.example.com",server="domains"} 4',
        'caddy_http_requests_total{handler="map",host="evil.test",server="sites"} 9',
        "go_goroutines 12",
    ])  # fmt: skip
    sites = {"127.0.0.1:3001": "www", "localhost:3001": "www", "www.example.com": "www"}
    lines = edge_lines(text, sites.get).splitlines()
    assert lines[:2] == [
        "# HELP caddy_http_requests_total Counter of HTTP(S) requests made.",
        "# TYPE caddy_http_requests_total counter",
    ]
    assert lines[2:] == ['caddy_http_requests_total{handler="map",server="site-www"} 9']
