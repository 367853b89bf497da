"""Every kept version served as files can be opened at its own address on the edge's preview
port (``<version>.<project>.localhost``), beside the active one, through a real Caddy; an
app's version has no preview (its files are its code); the history, the CLI and the API
carry the link."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reconciler.api.app import create_app
from reconciler.core.kinds import EdgeMode
from reconciler.stores.previews import read_preview
from tests.integration.harness import Env, desired_yaml, environment, make_site, wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with environment(tmp_path, edge=EdgeMode.ON) as e:
        e.start()
        yield e


def shown(port: int, host: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/", headers={"Host": host}, timeout=5)


def test_each_kept_static_version_answers_at_its_own_address(env: Env, tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", "one")
    (site / "dist" / ".env").write_text("SECRET=1")
    (site / "dist" / ".well-known").mkdir()
    (site / "dist" / ".well-known" / "security.txt").write_text("Contact: x")
    env.write("www", desired_yaml(site, generation=1))
    first = env.wait_serving("www", "one")
    (site / "dist" / "index.html").write_text("two")
    env.write("www", desired_yaml(site, generation=2))
    second = env.wait_serving("www", "two")
    v1, v2 = first.productionHash, second.productionHash
    assert v1 and v2 and v1 != v2

    address = read_preview(env.data / "edge", "localhost")
    assert address is not None and address.token is None, "loopback: no token"
    links = env.data / "edge" / "routes" / "previews" / "www"
    wait_for(lambda: sorted(os.listdir(links)) == sorted([v1, v2]), 10, "both versions linked")
    assert shown(address.port, f"{v1}.www.localhost").text == "one", "the old version, as kept"
    assert shown(address.port, f"{v2}.www.localhost").text == "two"
    dotfile = httpx.get(f"http://127.0.0.1:{address.port}/.env",
                        headers={"Host": f"{v1}.www.localhost"}, timeout=5)  # fmt: skip
    assert dotfile.status_code == 404 and "SECRET" not in dotfile.text, "as on its site"
    known = httpx.get(f"http://127.0.0.1:{address.port}/.well-known/security.txt",
                      headers={"Host": f"{v1}.www.localhost"}, timeout=5)  # fmt: skip
    assert known.text == "Contact: x"
    assert httpx.get(f"http://127.0.0.1:{second.productionPort}/").text == "two", "live: v2"
    missing = shown(address.port, "00000000.www.localhost")
    assert missing.status_code == 404 and "no preview of this version" in missing.text
    for hostile in ("../x.www.localhost", f"{v1}.WWW.localhost", f"{v1}.www.example.com"):
        assert shown(address.port, hostile).status_code in (400, 404)

    api = create_app(env.config()).test_client()
    history = api.get("/api/projects/www/production-history").get_json()["versions"]
    urls = {v["hash"]: v.get("previewUrl") for v in history}
    assert urls == {
        v1: f"http://{v1}.www.localhost:{address.port}/",
        v2: f"http://{v2}.www.localhost:{address.port}/",
    }

    (env.desired / "www.yaml").unlink()  # the project goes: so do its previews
    wait_for(lambda: not links.exists(), 20, "the previews removed")
    assert shown(address.port, f"{v1}.www.localhost").status_code == 404


def test_an_app_version_is_started_for_its_preview_and_put_back_to_sleep(
    env: Env, tmp_path: Path
) -> None:
    app = make_site(tmp_path / "app", "app one")
    serve = "start:\n  command: exec python3 -m http.server $PORT --bind 127.0.0.1\n"
    serve += "rollback: {window: off}\n"  # production's replaced instance goes: count the preview's
    env.write("api", desired_yaml(app, generation=1) + serve)
    first = env.wait_serving("api", "app one", timeout=60)
    (app / "dist" / "index.html").write_text("app two")
    env.write("api", desired_yaml(app, generation=2) + serve)
    second = env.wait_serving("api", "app two", timeout=60)
    v1, v2 = first.productionHash, second.productionHash
    address = read_preview(env.data / "edge", "localhost")
    assert address is not None and v1 and v2
    entry = env.data / "edge" / "routes" / "previews" / "api" / v1
    wait_for(lambda: (entry / "wake").exists(), 10, "v1's preview, asleep")

    assert shown(address.port, f"{v1}.api.localhost").text == "app one", "started for it"
    assert not (entry / "wake").exists() and any(n.startswith("@") for n in os.listdir(entry))
    assert httpx.get(f"http://127.0.0.1:{second.productionPort}/").text == "app two"
    env.resync_and_wait("api")  # production's reconcile leaves the preview's instance alone
    assert shown(address.port, f"{v1}.api.localhost").text == "app one"
    assert len(env.instances("api")) == 2, "production's and the preview's"
    assert [r.hash for r in env.db.instances("api")] == [v2], "only production is recorded"

    assert env.daemon is not None and env.daemon.wakers is not None
    env.daemon.wakers.versions.idle = 1.0  # nobody asks for it any more: it sleeps
    wait_for(lambda: (entry / "wake").exists(), 20, "the preview asleep again")
    wait_for(lambda: len(env.instances("api")) == 1, 20, "its instance stopped")
    assert httpx.get(f"http://127.0.0.1:{second.productionPort}/").text == "app two"
