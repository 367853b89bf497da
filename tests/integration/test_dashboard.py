"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a real
daemon and the real API over HTTP. Screenshots of each page go to artifacts/dashboard/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.api.app import create_app
from reconciler.api.server import ApiServer
from tests.conftest import REPO, free_port
from tests.integration.harness import Env, desired_yaml, environment, make_site

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


def watch(page: object) -> tuple[list[str], list[str]]:
    """The page's script errors, and every answer of 400 or more it got (none expected:
    not even a favicon's 404)."""
    errors: list[str] = []
    refused: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))  # type: ignore[attr-defined]
    page.on(
        "response", lambda r: refused.append(f"{r.status} {r.url}") if r.status >= 400 else None
    )  # type: ignore[attr-defined]
    return errors, refused


def open_page(env: Env, browser: object) -> tuple[ApiServer, str, Any, tuple[list[str], list[str]]]:
    """The API on a free port, and a page with what it meets watched. ``bypass_csp``: the
    test's own ``wait_for_function`` needs eval (the page's CSP is checked on its own)."""
    server = serve_api(env)
    page = browser.new_page(viewport={"width": 1200, "height": 900}, bypass_csp=True)  # type: ignore[attr-defined]
    return server, f"http://127.0.0.1:{server.port}", page, watch(page)


def confirm(page: object) -> None:
    """Say yes to the confirmation dialog that is open."""
    page.wait_for_selector("#confirm[open]")  # type: ignore[attr-defined]
    page.click("#confirm-ok")  # type: ignore[attr-defined]


def progress_has(page: object, text: str, timeout: float = 60000) -> None:
    page.wait_for_function(  # type: ignore[attr-defined]
        f"document.querySelector('#progress').textContent.includes({text!r})", timeout=timeout
    )


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
        server, base, page, (errors, refused) = open_page(env, browser)
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
            page.goto(f"{base}/#/p/app/versions")
            page.wait_for_selector("#app")
            found = page.inner_text("#app")
            assert "detected procfile from Procfile" in found, found
            assert "starts: exec python3 -m http.server $PORT" in found, found
            page.wait_for_selector("#history tbody tr")
            assert "procfile (Procfile)" in page.inner_text("#history")

            # a failed build's output; the error apart from the command that shows more
            page.goto(f"{base}/")
            page.click("tr[data-project=broken] td.name a")
            page.wait_for_selector("#status-error")
            assert "exited with code 3" in page.inner_text("#status-error")
            page.click(".tabs a[data-tab=logs]")
            page.wait_for_function(
                "document.querySelector('#log').textContent.includes('missing semicolon')"
            )
            assert "compiling the assets" in page.inner_text("#log")
            shot(page, "failed-build")

            # deploy from the page: progress arrives live, in words, then the new version serves
            (site / "dist" / "index.html").write_text("<p>version two</p>")
            page.goto(f"{base}/#/p/www")
            page.wait_for_selector("#status.running")
            page.click("#deploy")
            progress_has(page, "Build started")
            progress_has(page, "Live")
            text = page.inner_text("#progress")
            assert text.index("Build started") < text.index("Build complete") < text.index("Live")
            assert "production." not in text  # no raw event names
            second = env.wait_serving("www", "version two")
            assert second.productionHash != first.productionHash
            # the timeline: the deploy, its phases and durations, what set it off
            page.wait_for_function(  # the page looks again every 3 s
                "document.querySelector('.deployment')?.classList.contains('succeeded')"
            )
            latest = page.locator(".deployment").first.inner_text()
            assert "deploy" in latest and "api: deploy" in latest, latest
            for phase in ("build", "stage", "start", "ready", "switch"):
                assert phase in latest, latest
            assert page.locator("#charts figure").count() == 5
            shot(page, "deployed")

            # roll back from the versions, after saying yes
            page.click(".tabs a[data-tab=versions]")
            page.wait_for_selector(f"tr[data-version='{first.productionHash}'] button.rollback")
            page.click(f"tr[data-version='{first.productionHash}'] button.rollback")
            confirm(page)
            progress_has(page, "Rolled back")
            env.wait_serving("www", "version one")
            page.wait_for_selector("#pinned")  # pinned, with the way back
            assert "not following" in page.inner_text("#pinned")
            shot(page, "rolled-back")
            page.click("#unpin")
            page.wait_for_selector("#pinned", state="detached")

            # a phone-sized screen: every project, no label without a value
            page.set_viewport_size({"width": 390, "height": 800})
            page.goto(f"{base}/")
            page.wait_for_selector("tr[data-project=www] .badge")
            assert page.locator("tr[data-project=typo]").is_visible()
            labels = page.eval_on_selector_all(
                "#projects td[data-label]",
                "cells => cells.filter(c => getComputedStyle(c).display !== 'none'"
                " && !c.textContent.trim()).length",
            )
            assert labels == 0
            shot(page, "list-phone")
            assert errors == [] and refused == [], (errors, refused)
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
            page.click("#confirm-cancel")  # asked first; cancelled: nothing is sent
            page.click("#stop")
            confirm(page)
            page.wait_for_selector("#notice:not([hidden])")
            assert "token" in page.inner_text("#notice")
            env.resync_and_wait("www")
            assert env.status("www") == "running", "refused: nothing changed"
            page.fill("#token", "t0ken-for-writes")
            page.click("#token-save")
            page.click("#stop")
            confirm(page)
            env.wait_status("www", "stopped")
            assert not any("t0ken" in url for url in requests)
            assert page.context.cookies() == []
            headers = page.goto(f"{base}/").headers  # type: ignore[union-attr]
            assert "default-src 'none'" in headers["content-security-policy"]
        finally:
            page.close()
            server.stop()


GREETER = """\
import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{os.environ.get('GREETING', 'no greeting')} / {os.environ.get('TOKEN', 'no token')}"
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())


HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Hello).serve_forever()
"""


def test_a_project_created_configured_with_a_secret_and_deleted_from_the_page(
    tmp_path: Path, browser: object
) -> None:
    app = tmp_path / "greeter"
    app.mkdir()
    (app / "Procfile").write_text("web: python3 app.py\n")
    (app / "app.py").write_text(GREETER)
    with environment(tmp_path) as env:
        env.start()
        server, base, page, (errors, refused) = open_page(env, browser)
        try:
            page.goto(f"{base}/")
            page.wait_for_selector("#list-empty:not([hidden])")  # nothing yet: says how to start
            shot(page, "empty")

            # a new project: its build worked out from its files, the file reviewed, created
            page.click("#list-empty a")
            page.fill("#new-id", "greeter")
            page.fill("#new-source", str(app))
            page.click("#new-detect")
            page.wait_for_selector("#new-found dl")
            assert "procfile" in page.inner_text("#new-found")
            assert "python3 app.py" in page.inner_text("#new-found")
            page.fill("#new-text", page.input_value("#new-text") + "keep: 3\n")
            page.click("#new-review-button")
            page.wait_for_selector("#new-review pre.diff")
            assert "+keep: 3" in page.inner_text("#new-review")
            shot(page, "new-project")
            page.click("#new-create")
            page.wait_for_url("**/#/p/greeter")
            env.wait_serving("greeter", "no greeting / no token", timeout=60)

            # a secret, set on its page; the value is never shown again
            page.goto(f"{base}/#/secrets")
            page.fill("#secret-name", "api-token")
            page.fill("#secret-value", "s3cret-value")
            page.click("#secret-save")
            page.wait_for_selector("tr[data-secret=api-token]")
            assert "s3cret" not in page.inner_text("body")

            # env: a value and the secret, the diff first, then saved; a new instance has them
            page.goto(f"{base}/#/p/greeter/settings")
            page.wait_for_selector("#editor")
            page.click("#add-env")
            page.fill("#env .env-row:nth-child(1) .env-name", "GREETING")
            page.fill("#env .env-row:nth-child(1) .env-value", "hello")
            page.click("#add-env")
            page.fill("#env .env-row:nth-child(2) .env-name", "TOKEN")
            page.fill("#env .env-row:nth-child(2) .env-value", "api-token")
            page.check("#env .env-row:nth-child(2) .env-secret")
            page.click("#review-env")
            page.wait_for_selector("#review pre.diff")
            review = page.inner_text("#review")
            assert (
                "+env:" in review
                and "+  GREETING: hello" in review
                and "secret: api-token" in review
            )
            assert "s3cret" not in review
            shot(page, "settings-diff")
            page.click("#save-settings")
            env.wait_serving("greeter", "hello / s3cret-value", timeout=60)
            assert "s3cret" not in (env.desired / "greeter.yaml").read_text()
            page.wait_for_selector("#env .env-row:nth-child(2) .env-secret:checked")  # read back

            # a version that crashes at start: history says it never served, and why; a
            # rollback to it is warned about first
            good = env.row("greeter")
            assert good is not None
            (app / "app.py").write_text("import sys\nsys.exit('the database is gone')\n")
            page.goto(f"{base}/#/p/greeter")
            page.wait_for_selector("#status.running")
            page.click("#deploy")
            progress_has(page, "Failed")
            env.wait_status("greeter", "failed", timeout=60)
            page.goto(f"{base}/#/p/greeter/versions")
            page.wait_for_selector("tr.unserved")
            unserved = page.locator("tr.unserved")
            assert "never served" in unserved.inner_text()
            assert "exited with code 1 before it became ready" in unserved.inner_text()
            unserved.locator("button.rollback").click()
            page.wait_for_selector("#confirm[open]")
            assert "never served" in page.inner_text("#confirm-text")
            assert page.inner_text("#confirm-ok") == "Roll back anyway"
            shot(page, "rollback-warning")
            page.click("#confirm-cancel")
            assert env.row("greeter").productionHash == good.productionHash  # type: ignore[union-attr]

            # several at once: stop every selected project, after saying yes
            page.goto(f"{base}/")
            page.check("tr[data-project=greeter] input[type=checkbox]")
            page.wait_for_selector("#bulk:not([hidden])")
            page.click("#bulk-stop")
            confirm(page)
            env.wait_status("greeter", "stopped", timeout=60)
            (app / "app.py").write_text(GREETER)  # the same files: the version that served
            page.goto(f"{base}/#/p/greeter")
            page.wait_for_selector("#start:not([hidden])")
            page.click("#deploy")
            env.wait_serving("greeter", "hello / s3cret-value", timeout=60)
            assert env.row("greeter").productionHash == good.productionHash  # type: ignore[union-attr]

            # dark mode, by the system's preference
            page.emulate_media(color_scheme="dark")
            page.goto(f"{base}/#/p/greeter")
            page.wait_for_selector(".deployment")
            background = page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert background == "rgb(15, 19, 24)", background
            shot(page, "project-dark")
            page.emulate_media(color_scheme="light")

            # deleted, after saying yes: the site stops and the project leaves the list
            page.click("#delete")
            confirm(page)
            page.wait_for_url(f"{base}/#/")
            env.wait_status("greeter", "stopped", timeout=60)
            page.wait_for_selector("#list-empty:not([hidden])")
            assert errors == [] and refused == [], (errors, refused)
        finally:
            page.close()
            server.stop()
