"""Day-2 operations through the API: start, pin and unpin; several projects at once; a
project created, configured and deleted; secrets; the deployment timeline and the charts.
Real files and SQLite through Flask's test client; no daemon."""

from __future__ import annotations

import os
import time
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from reconciler.core.config import Config
from reconciler.core.kinds import DeploymentKind, DeploymentState, JobState, JobType
from reconciler.core.spec import ProjectId
from reconciler.stores.desired import load_file
from reconciler.stores.state import SampleRow
from reconciler.stores.vault import Vault, resolve_env
from tests.unit.conftest import db, stage

WWW = ProjectId("www")


def desired(config: Config, name: str = "www") -> str:
    return (config.desired_dir / f"{name}.yaml").read_text()


def test_start_runs_the_named_version_without_a_build(client: FlaskClient, config: Config) -> None:
    answer = client.post("/api/projects/www/start", json={})
    assert answer.status_code == 200
    text = desired(config)
    assert "state: running   # flipped by the API" in text and "generation: 3" in text
    assert answer.json["activeJob"]["type"] == "production.build"  # type: ignore[index]


def test_pin_unpin_and_a_version_that_never_served(
    client: FlaskClient, app: Flask, config: Config, tmp_path: Path
) -> None:
    good = stage(config, "good", tmp_path)
    bad = stage(config, "bad", tmp_path, served=False)
    db(app).version_failed("www", bad, "health check failed: GET / answered 500\nmore")
    history = client.get("/api/projects/www/production-history").json["versions"]  # type: ignore[index]
    shown = {v["hash"]: (v["served"], v["failure"]) for v in history}
    assert shown[good] == (True, None)
    assert shown[bad] == (False, "health check failed: GET / answered 500\nmore")

    refused = client.post("/api/projects/www/pin", json={"version": bad})
    assert refused.status_code == 400
    assert "never served (its last start: health check failed" in refused.json["error"]  # type: ignore[index]
    assert "version: latest" in desired(config)  # nothing written
    forced = client.post("/api/projects/www/pin", json={"version": bad, "force": True})
    assert forced.status_code == 200 and forced.json["pinned"] == bad  # type: ignore[index]
    assert client.post("/api/projects/www/pin", json={"version": good}).json["pinned"] == good  # type: ignore[index]
    assert client.post("/api/projects/www/unpin", json={}).json["pinned"] is None  # type: ignore[index]
    assert "version: latest" in desired(config)
    assert client.post("/api/projects/www/pin", json={"version": "x"}).status_code == 400
    assert client.post("/api/projects/www/pin", json={"version": "a1b2c3d4"}).status_code == 404


def test_a_rollback_to_a_version_that_never_served_needs_force_and_puts_the_file_back(
    client: FlaskClient, app: Flask, config: Config, tmp_path: Path
) -> None:
    bad = stage(config, "bad", tmp_path, served=False)
    refused = client.post("/api/projects/www/rollback-production", json={"toHash": bad})
    assert refused.status_code == 400 and "never served" in refused.json["error"]  # type: ignore[index]
    # forced, and the daemon records it failing: the file names "latest" again
    project = db(app).update_project(WWW, productionStatus="stopped")
    assert project is not None

    def fail_soon() -> None:
        time.sleep(0.3)
        spec_digest = app.extensions["reconciler"].reader.snapshot(WWW).spec.digest()
        db(app).update_project(WWW, productionStatus="failed", productionError="it crashed",
                               failedDigest=spec_digest)  # fmt: skip

    import threading

    threading.Thread(target=fail_soon).start()
    app.extensions["reconciler"].rollback_grace = 5.0
    answer = client.post(
        "/api/projects/www/rollback-production", json={"toHash": bad, "force": True}
    )
    assert answer.status_code == 500
    assert "it crashed" in answer.json["error"]  # type: ignore[index]
    assert "version: latest" in desired(config)


def test_several_projects_at_once(client: FlaskClient, config: Config) -> None:
    (config.desired_dir / "blog.yaml").write_text("source: ../blog\n")
    answer = client.post("/api/actions/stop", json={"projects": ["www", "blog", "nope", "../x"]})
    assert answer.status_code == 200
    results = {r["id"]: r for r in answer.json["results"]}  # type: ignore[index]
    assert results["www"]["status"]["status"] == "stopped"
    assert results["nope"]["kind"] == "not-found" and results["../x"]["kind"] == "invalid"
    assert answer.json["failed"] == 2  # type: ignore[index]
    started = client.post("/api/actions/start", json={"all": True}).json
    assert {r["id"] for r in started["results"]} == {"www", "blog"}  # type: ignore[index]
    assert "state: running" in desired(config, "blog")
    assert client.post("/api/actions/reboot", json={"all": True}).status_code == 404
    assert client.post("/api/actions/stop", json={}).status_code == 400


def test_settings_as_text_with_the_diff_before_saving(client: FlaskClient, config: Config) -> None:
    shown = client.get("/api/projects/www/desired").json
    assert shown["file"] == "www.yaml" and shown["valid"] and shown["text"] == desired(config)  # type: ignore[index]
    edited = shown["text"].replace("timeout: 1", "timeout: 5")  # type: ignore[index]
    dry = client.put("/api/projects/www/desired", json={"text": edited, "dryRun": True}).json
    assert "-  timeout: 1\n+  timeout: 5\n" in dry["diff"] and dry["saved"] is False  # type: ignore[index]
    assert "timeout: 1" in desired(config)
    saved = client.put("/api/projects/www/desired", json={"text": edited}).json
    assert saved["saved"] is True and desired(config) == edited  # type: ignore[index]
    assert "# the marketing site" in desired(config)  # comments are kept
    bad = client.put("/api/projects/www/desired", json={"text": "source: [\n"})
    assert bad.status_code == 400 and desired(config) == edited
    unknown = client.put("/api/projects/www/desired", json={"text": "source: x\nbogus: 1\n"})
    assert unknown.status_code == 400 and "bogus" in unknown.json["error"]  # type: ignore[index]


def test_a_text_saved_from_a_stale_read_is_refused_with_its_base(
    client: FlaskClient, config: Config
) -> None:
    """The dashboard sends the digest of the text it loaded: an editor's save in between is
    not written over (409), and the text saved from a fresh read goes through."""
    shown = client.get("/api/projects/www/desired").json
    assert shown is not None and len(shown["digest"]) == 16
    path = config.desired_dir / "www.yaml"
    path.write_text(path.read_text() + "# saved by an editor meanwhile\n")
    edited = shown["text"].replace("timeout: 1", "timeout: 5")
    stale = client.put("/api/projects/www/desired", json={"text": edited, "base": shown["digest"]})
    assert stale.status_code == 409 and "changed since it was read" in stale.json["error"]  # type: ignore[index]
    assert "saved by an editor meanwhile" in desired(config)
    fresh = client.get("/api/projects/www/desired").json
    assert fresh is not None and fresh["digest"] != shown["digest"]
    again = fresh["text"].replace("timeout: 1", "timeout: 5")
    saved = client.put("/api/projects/www/desired", json={"text": again, "base": fresh["digest"]})
    assert saved.status_code == 200 and "timeout: 5" in desired(config)
    assert "saved by an editor meanwhile" in desired(config)
    assert (
        client.put("/api/projects/www/desired", json={"text": again, "base": 7}).status_code == 400
    )


def test_env_is_edited_as_one_block_and_secrets_never_come_back(
    client: FlaskClient, config: Config
) -> None:
    env = {"MODE": "production", "DATABASE_URL": {"secret": "db-url"}}
    saved = client.put("/api/projects/www/env", json={"env": env}).json
    assert saved["saved"] is True  # type: ignore[index]
    text = desired(config)
    assert "env:\n  MODE: production\n  DATABASE_URL:\n    secret: db-url\n" in text
    assert text.startswith("# the marketing site")
    listed = client.get("/api/secrets").json["secrets"]  # type: ignore[index]
    assert listed == [{"name": "db-url", "revision": None, "updatedAt": None, "usedBy": ["www"]}]
    put = client.put("/api/secrets/db-url", json={"value": "postgres://u:hunter2@db/app"})
    assert put.status_code == 200 and put.json == {"name": "db-url", "changed": True}
    again = client.put("/api/secrets/db-url", json={"value": "postgres://u:hunter2@db/app"})
    assert again.json["changed"] is False  # type: ignore[index]
    listed = client.get("/api/secrets").json["secrets"]  # type: ignore[index]
    assert listed[0]["name"] == "db-url" and len(listed[0]["revision"]) == 8
    every = b"".join(
        client.get(path).data
        for path in ("/api/secrets", "/api/projects", "/api/projects/www/production",
                     "/api/projects/www/desired", "/api/projects/www/events")
    )  # fmt: skip
    assert b"hunter2" not in every
    stored = (config.layout.vault / "db-url.secret").read_bytes()
    assert b"hunter2" not in stored and os.stat(config.layout.vault / "key").st_mode & 0o077 == 0
    assert (config.layout.nudges / "_secrets").exists()  # the daemon is told
    spec = resolve_env(load_file(config.desired_dir / "www.yaml")[1], Vault(config.layout.vault))
    assert spec.plain_env["DATABASE_URL"] == "postgres://u:hunter2@db/app"
    assert client.put("/api/secrets/Bad Name", json={"value": "x"}).status_code == 400
    assert client.delete("/api/secrets/db-url").status_code == 200
    assert client.delete("/api/secrets/db-url").status_code == 404
    cleared = client.put("/api/projects/www/env", json={"env": {}}).json
    assert cleared["saved"] and "env:" not in desired(config)  # type: ignore[index]


def test_a_project_is_drafted_created_and_deleted(client: FlaskClient, config: Config) -> None:
    app_dir = config.desired_dir.parent / "shop"
    app_dir.mkdir()
    (app_dir / "requirements.txt").write_text("flask\ngunicorn\n")
    (app_dir / "app.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    draft = client.post("/api/drafts", json={"id": "shop", "source": "../shop"}).json
    assert draft["detected"]["kind"] == "python" and 'source: "../shop"' in draft["text"]  # type: ignore[index]
    git = client.post("/api/drafts", json={"id": "api", "source": "https://git.example/a.git"})
    assert "git: " in git.json["text"] and "follow: true" in git.json["text"]  # type: ignore[index]
    assert client.post("/api/drafts", json={"id": "www", "source": "."}).status_code == 409
    dry = client.post("/api/projects", json={"id": "shop", "text": draft["text"], "dryRun": True})  # type: ignore[index]
    assert dry.status_code == 200 and not (config.desired_dir / "shop.yaml").exists()
    made = client.post("/api/projects", json={"id": "shop", "text": draft["text"]})  # type: ignore[index]
    assert made.status_code == 201 and desired(config, "shop") == draft["text"]  # type: ignore[index]
    twice = client.post("/api/projects", json={"id": "shop", "text": draft["text"]})  # type: ignore[index]
    assert twice.status_code == 409
    assert (
        client.post("/api/projects", json={"id": "../x", "text": "source: .\n"}).status_code == 400
    )
    assert client.delete("/api/projects/shop").status_code == 200
    assert not (config.desired_dir / "shop.yaml").exists()
    assert client.delete("/api/projects/shop").status_code == 404
    (config.desired_dir / "link.yaml").symlink_to(config.desired_dir / "www.yaml")
    assert client.delete("/api/projects/link").status_code == 409  # never through a link
    assert (config.desired_dir / "www.yaml").exists()


def test_the_timeline_names_phases_and_triggers(client: FlaskClient, app: Flask) -> None:
    state = db(app)
    state.note_trigger("www", "api: deploy")
    deployment = state.start_deployment(WWW, DeploymentKind.DEPLOY, generation=4)
    for job_type, seconds in (
        (JobType.BUILD, 0.05),
        (JobType.START, 0.02),
        (JobType.WAIT_READY, 0.02),
    ):
        job = state.create_job(WWW, job_type, generation=4, hash="a1b2c3d4", deployment=deployment)
        time.sleep(seconds)
        state.finish_job(job, JobState.SUCCEEDED, hash="a1b2c3d4")
    state.finish_deployment(deployment, DeploymentState.SUCCEEDED)
    repair = state.start_deployment(WWW, DeploymentKind.REPAIR, generation=4)
    state.finish_deployment(repair, DeploymentState.FAILED, error="it died")
    shown = client.get("/api/projects/www/deployments").json["deployments"]  # type: ignore[index]
    assert [d["kind"] for d in shown] == ["repair", "deploy"]
    assert shown[0]["trigger"].startswith("repair") and shown[0]["error"] == "it died"
    deploy = shown[1]
    assert deploy["trigger"] == "api: deploy" and deploy["version"] == "a1b2c3d4"
    assert [p["name"] for p in deploy["phases"]] == ["build", "stage", "start", "ready", "switch"]
    assert deploy["seconds"] >= 0.09
    nothing = state.start_deployment(WWW, DeploymentKind.DEPLOY, generation=5)
    state.finish_deployment(nothing, DeploymentState.SUCCEEDED)
    assert (
        client.get("/api/projects/www/deployments?limit=1").json["deployments"][0]["trigger"]
        == "desired file"
    )  # type: ignore[index]
    assert client.get("/api/projects/www/deployments?limit=0").status_code == 400


def test_the_charts_are_rates_between_samples(client: FlaskClient, app: Flask) -> None:
    now = time.time()
    db(app).add_samples([SampleRow("www", now - 120, 100, 1, 2.0, 50_000_000, 1.0)])
    db(app).add_samples([SampleRow("www", now - 60, 700, 7, 14.0, 60_000_000, 3.0)])
    db(app).add_samples([SampleRow("www", now, 10, 0, 0.5, 61_000_000, 2.0)])  # edge restarted
    series = client.get("/api/projects/www/series").json
    assert series["requestsPerSecond"] == [10.0, None]  # type: ignore[index]
    assert series["errorRate"] == [0.01, None] and series["latencyMs"] == [20.0, None]  # type: ignore[index]
    assert series["memory"] == [60_000_000, 61_000_000]  # type: ignore[index]


SCRIPTS = ("app.js", "ui.js", "project.js", "progress.js", "settings.js", "charts.js")


def test_the_dashboard_serves_its_own_files_and_a_favicon(client: FlaskClient) -> None:
    page = client.get("/")
    assert (
        page.status_code == 200 and "default-src 'none'" in page.headers["Content-Security-Policy"]
    )
    texts = {name: client.get(f"/dashboard/{name}").text for name in SCRIPTS}
    loaded = page.text + "".join(texts.values())
    for name in (*SCRIPTS, "style.css", "icon.svg"):
        assert client.get(f"/dashboard/{name}").status_code == 200, name
        assert f"./{name}" in loaded or f"/dashboard/{name}" in loaded, f"{name} is never loaded"
    for name, text in texts.items():
        assert "innerHTML" not in text, name  # values from the API go in as text
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
    assert client.get("/dashboard/../app.py").status_code == 404
    assert client.get("/dashboard/nothing.js").status_code == 404


EXPOSITION = """\
# HELP caddy_http_request_duration_seconds Histogram of round-trip request durations.
# TYPE caddy_http_request_duration_seconds histogram
caddy_http_request_duration_seconds_bucket{code="200",handler="subroute",host="127.0.0.1:3001",method="GET",server="srv0",le="0.005"} 7
caddy_http_request_duration_seconds_sum{code="200",handler="subroute",host="127.0.0.1:3001",method="GET",server="srv0"} 0.25
caddy_http_request_duration_seconds_count{code="200",handler="subroute",host="127.0.0.1:3001",method="GET",server="srv0"} 10
caddy_http_request_duration_seconds_sum{code="502",handler="subroute",host="127.0.0.1:3001",method="GET",server="srv0"} 0.5
caddy_http_request_duration_seconds_count{code="502",handler="subroute",host="127.0.0.1:3001",method="GET",server="srv0"} 2
caddy_http_request_duration_seconds_count{code="200",handler="subroute",host="www.example.com",method="GET",server="srv1"} 3
caddy_http_request_duration_seconds_count{code="200",handler="subroute",host="127.0.0.1:3999",method="GET",server="srv0"} 99
caddy_http_requests_total{handler="subroute",server="srv0"} 115
"""


def test_site_counters_sum_each_site_over_its_ports_and_domains() -> None:
    from reconciler.daemon.samples import site_counters

    sites = {"127.0.0.1:3001": "www", "www.example.com": "www"}
    found = site_counters(EXPOSITION, sites.get)
    assert found == {"www": [15.0, 2.0, 0.75]}  # answers, 5xx, seconds; 3999 is no site


def test_a_timeline_names_the_commit_of_its_version(app: Flask) -> None:
    from reconciler.readside.timeline import timeline

    state = db(app)
    deployment = state.start_deployment(WWW, DeploymentKind.DEPLOY, generation=1)
    job = state.create_job(WWW, JobType.BUILD, generation=1, deployment=deployment)
    state.finish_job(job, JobState.SUCCEEDED, hash="a1b2c3d4")
    state.finish_deployment(deployment, DeploymentState.SUCCEEDED)
    commits = {"a1b2c3d4": {"commit": "f00d" * 10, "subject": "Fix the footer"}}
    shown = timeline(state, "www", commit_of=lambda v: commits.get(v, {})).deployments[0]
    assert (shown.version, shown.commit, shown.subject) == (
        "a1b2c3d4",
        "f00d" * 10,
        "Fix the footer",
    )


def test_the_digest_names_the_files_bytes_so_a_bom_does_not_make_every_save_stale(
    client: FlaskClient, config: Config
) -> None:
    path = config.desired_dir / "www.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # saved by an editor that writes a BOM
    shown = client.get("/api/projects/www/desired").json
    assert shown is not None
    edited = shown["text"].replace("timeout: 1", "timeout: 5")
    saved = client.put("/api/projects/www/desired", json={"text": edited, "base": shown["digest"]})
    assert saved.status_code == 200 and "timeout: 5" in desired(config)
