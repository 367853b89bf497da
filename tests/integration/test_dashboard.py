"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a real
daemon and the real API over HTTP. Screenshots of each page go to artifacts/dashboard/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.api.app import create_app
from reconciler.api.server import ApiServer
from tests.conftest import REPO, free_port
from tests.integration.harness import Env, desired_yaml, environment, make_site, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "artifacts" / "dashboard"

pytestmark = [pytest.mark.timeout(240)]

if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("chromium is missing: .ci/run installs it (apt-get install chromium)")
    pytestmark.append(pytest.mark.skip(reason="chromium is not installed"))

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def serve_api(env: Env, token: str | None = None) -> ApiServer:
    config = env.config()
    config = type(config)(**{**config.__dict__, "listen_port": free_port()})
    server = ApiServer(create_app(config, token=token), config)
    server.start()
    return server


def shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def test_deploy_progress_rollback_failures_and_invalid_files(
    tmp_path: Path, browser: object
) -> None:
    site = make_site(tmp_path / "site", "<p>version one</p>")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "build.sh").write_text(
        "echo compiling the assets\necho 'error: missing semicolon' >&2\nexit 3\n"
    )
    with environment(tmp_path) as env:
        env.start()
        env.write("www", desired_yaml(site, extra="build:\n  command: sleep 1\n"))
        env.write("broken", desired_yaml(broken, extra="build:\n  command: sh build.sh\n"))
        app = tmp_path / "app"
        app.mkdir()
        (app / "Procfile").write_text("web: python3 -m http.server $PORT\n")
        (app / "index.html").write_text("<p>an app found by its Procfile</p>")
        env.write("app", desired_yaml(app))
        (env.desired / "typo.yaml").write_text("source: x\nproduction:\n  state: runing\n")
        first = env.wait_serving("www", "version one")
        env.wait_status("broken", "failed")
        server = serve_api(env)
        base = f"http://127.0.0.1:{server.port}"
        # bypass_csp: the test's own wait_for_function needs eval; the page's CSP is checked below
        page = browser.new_page(viewport={"width": 1100, "height": 900}, bypass_csp=True)  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            # the list: every project, the invalid file with its path:line:col
            page.goto(f"{base}/")
            page.wait_for_selector("tr[data-project=www] .badge.running")
            row = page.locator("tr[data-project=www]")
            assert first.productionHash in row.inner_text()
            assert page.locator("tr[data-project=broken] .badge").inner_text() == "failed"
            typo = page.locator("tr[data-project=typo]")
            assert "invalid file" in typo.inner_text()
            assert "typo.yaml:3:10: production.state" in page.inner_text("body")
            shot(page, "list")

            # how a version was found to build and start
            env.wait_status("app", "running")
            page.goto(f"{base}/#/p/app")
            page.wait_for_selector("#app")
            found = page.inner_text("#app")
            assert "detected procfile from Procfile" in found, found
            assert "starts: exec python3 -m http.server $PORT" in found, found
            page.wait_for_selector("#history tbody tr")  # the history loads after the status
            assert "procfile (Procfile)" in page.inner_text("#history")

            # a failed build's output
            page.goto(f"{base}/")
            page.click("tr[data-project=broken] a")
            page.wait_for_selector("#status-error")
            assert "exited with code 3" in page.inner_text("#status-error")
            page.wait_for_function(
                "document.querySelector('#log').textContent.includes('missing semicolon')"
            )
            assert "compiling the assets" in page.inner_text("#log")
            shot(page, "failed-build")

            # deploy from the page: progress arrives live, then the new version serves
            (site / "dist" / "index.html").write_text("<p>version two</p>")
            page.goto(f"{base}/#/p/www")
            page.wait_for_selector("#status.running")
            page.click("#deploy")
            page.wait_for_function(
                "document.querySelector('#progress').textContent.includes('Build started')"
            )
            page.wait_for_function(
                "document.querySelector('#progress').textContent.includes('Ready:')", timeout=60000
            )
            text = page.inner_text("#progress")
            assert text.index("Build started") < text.index("Build complete") < text.index("Ready:")
            second = env.wait_serving("www", "version two")
            assert second.productionHash != first.productionHash
            shot(page, "deployed")

            # roll back from the history
            page.wait_for_selector(f"tr[data-version='{first.productionHash}'] button.rollback")
            page.click(f"tr[data-version='{first.productionHash}'] button.rollback")
            page.wait_for_function(
                "document.querySelector('#progress').textContent.includes('Rolled back')"
                " || document.querySelector('#progress').textContent.includes('Pinned')",
                timeout=60000,
            )
            env.wait_serving("www", "version one")
            wait_for(
                lambda: "(active)" in page.locator(
                    f"tr[data-version='{first.productionHash}']").inner_text(),
                20, "the history marks the rolled-back version",
            )  # fmt: skip
            shot(page, "rolled-back")

            # a phone-sized screen still shows every project
            page.set_viewport_size({"width": 390, "height": 800})
            page.goto(f"{base}/")
            page.wait_for_selector("tr[data-project=www] .badge")
            assert page.locator("tr[data-project=typo]").is_visible()
            shot(page, "list-phone")
            assert errors == []
        finally:
            page.close()
            server.stop()


def test_writes_need_the_token_and_it_never_goes_in_a_url_or_cookie(
    tmp_path: Path, browser: object
) -> None:
    site = make_site(tmp_path / "site", "<p>one</p>")
    with environment(tmp_path) as env:
        env.start()
        env.write("www", desired_yaml(site))
        env.wait_serving("www", "one")
        server = serve_api(env, token="t0ken-for-writes")
        base = f"http://127.0.0.1:{server.port}"
        page = browser.new_page()  # type: ignore[attr-defined]
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        try:
            page.goto(f"{base}/#/p/www")
            page.wait_for_selector("#status.running")  # reads work without it
            page.click("#stop")
            page.wait_for_selector("#notice:not([hidden])")
            assert "token" in page.inner_text("#notice")
            env.resync_and_wait("www")
            assert env.status("www") == "running", "refused: nothing changed"
            page.fill("#token", "t0ken-for-writes")
            page.click("#token-save")
            page.click("#stop")
            env.wait_status("www", "stopped")
            assert not any("t0ken" in url for url in requests)
            assert page.context.cookies() == []
            headers = page.goto(f"{base}/").headers  # type: ignore[union-attr]
            assert "default-src 'none'" in headers["content-security-policy"]
        finally:
            page.close()
            server.stop()
