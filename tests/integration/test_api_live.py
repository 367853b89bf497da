"""The API against a real `reconciler run` (daemon + API in one process, process runtime)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import Env, get, make_site, wait_for

Event = tuple[int, str, dict[str, Any]]


def read_events(response: httpx.Response, limit: int | None = None) -> Iterator[Event]:
    block: dict[str, str] = {}
    count = 0
    for line in response.iter_lines():
        if line == "":
            if "event" in block:
                yield int(block["id"]), block["event"], json.loads(block["data"])
                count += 1
                if limit is not None and count >= limit:
                    return
            block = {}
        elif not line.startswith(":") and ": " in line:
            key, value = line.split(": ", 1)
            block[key] = value


def stream(
    base: str, project: str, last_id: int | None = None, limit: int | None = None
) -> list[Event]:
    headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
    with httpx.stream(
        "GET", f"{base}/api/projects/{project}/production-stream", headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200
        return list(read_events(response, limit))


def desired(site: Path, build: str | None = None) -> str:
    text = f"# site\nsource: {site}\nproduction:\n  state: stopped\n  generation: 0\nhealth:\n  interval: 0.2\n  timeout: 20\n"
    if build:
        text += f"build:\n  command: {build}\n"
    return text


@pytest.mark.timeout(180)
def test_deploy_stream_history_rollback_stop(live: tuple[Env, str], tmp_path: Path) -> None:
    env, base = live
    site = make_site(tmp_path / "site", "first")
    env.write("www", desired(site))
    api = f"{base}/api/projects/www"

    queued = httpx.post(f"{api}/deploy", json={}).json()
    assert queued["status"] == "queued" and queued["activeJob"] == {
        "type": "production.build",
        "state": "queued",
    }
    got = stream(base, "www")
    kinds = [e[1] for e in got]
    assert kinds[0] == "production.building" and kinds[-2:] == ["production.ready", "stream.end"]
    assert "production.starting" in kinds
    assert kinds.index("production.starting") > max(
        i for i, k in enumerate(kinds) if k == "production.building"
    )
    ids = [e[0] for e in got[:-1]]
    assert ids == sorted(set(ids))
    status = httpx.get(f"{api}/production").json()
    assert status["status"] == "running" and status["activeJob"] is None
    assert got[-2][2]["url"] == status["url"] == f"http://localhost:{status['port']}"
    first_hash = status["hash"]
    assert get(f"http://127.0.0.1:{status['port']}/") == "first"

    # redeploy with new content
    (site / "dist" / "index.html").write_text("second")
    assert httpx.post(f"{api}/deploy", json={}).json()["status"] == "queued"
    assert stream(base, "www")[-2][1] == "production.ready"
    second = httpx.get(f"{api}/production").json()
    assert second["hash"] != first_hash and get(f"http://127.0.0.1:{second['port']}/") == "second"

    versions = httpx.get(f"{api}/production-history").json()["versions"]
    assert [(v["hash"], v["isActive"]) for v in versions] == [
        (second["hash"], True),
        (first_hash, False),
    ]

    # rollback and forward again
    back = httpx.post(f"{api}/rollback-production", json={"toHash": first_hash}, timeout=60)
    assert back.status_code == 200
    assert back.json() == {
        "success": True,
        "hash": first_hash,
        "message": f"Rolled back to version {first_hash}",
        "error": None,
    }
    now = httpx.get(f"{api}/production").json()
    assert now["hash"] == first_hash and get(f"http://127.0.0.1:{now['port']}/") == "first"
    assert httpx.post(f"{api}/rollback-production", json={"toHash": first_hash}).status_code == 400
    fwd = httpx.post(f"{api}/rollback-production", json={"toHash": second["hash"]}, timeout=60)
    assert fwd.status_code == 200 and fwd.json()["hash"] == second["hash"]

    # stop
    stopped = httpx.post(f"{api}/stop-production", json={}).json()
    assert stopped["status"] == "stopped" and stopped["activeJob"] == {
        "type": "production.stop",
        "state": "queued",
    }
    end = stream(base, "www")
    assert [e[1] for e in end][-2:] == ["production.stopped", "stream.end"]
    wait_for(lambda: httpx.get(f"{api}/production").json()["status"] == "stopped", 10, "stopped")
    assert httpx.get(f"{api}/production").json()["hash"] == second["hash"]
    assert "# site" in (env.desired / "www.yaml").read_text()


@pytest.mark.timeout(120)
def test_failing_build_stream_ends_with_error(live: tuple[Env, str], tmp_path: Path) -> None:
    env, base = live
    site = make_site(tmp_path / "site", "x")
    env.write("www", desired(site, build="echo npm install; exit 1"))
    httpx.post(f"{base}/api/projects/www/deploy", json={})
    got = stream(base, "www")
    assert [e[1] for e in got][-2:] == ["production.error", "stream.end"]
    assert got[-2][2]["error"].startswith(
        "Build failed: echo npm install; exit 1 exited with code 1"
    )
    status = httpx.get(f"{base}/api/projects/www/production").json()
    assert status["status"] == "failed" and status["error"].startswith("Build failed")


@pytest.mark.timeout(120)
def test_resume_with_last_event_id_has_no_gap_or_duplicate(
    live: tuple[Env, str], tmp_path: Path
) -> None:
    env, base = live
    site = make_site(tmp_path / "site", "x")
    env.write("www", desired(site, build="for i in $(seq 1 30); do echo line $i; sleep 0.05; done"))
    httpx.post(f"{base}/api/projects/www/deploy", json={})
    first = stream(base, "www", limit=6)  # then the client disconnects
    rest = stream(base, "www", last_id=first[-1][0])
    both = first + rest
    ids = [e[0] for e in both[:-1]]
    assert ids == sorted(ids) and len(ids) == len(set(ids)), "gap-free, no duplicate ids"
    lines = [
        e[2]["message"]
        for e in both
        if e[1] == "production.building" and e[2].get("message", "").startswith("line ")
    ]
    assert lines == [f"line {i}" for i in range(1, 31)]
    assert both[-2][1] == "production.ready"
