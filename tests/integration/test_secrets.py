"""Secrets with a real daemon: a site gets its secret's value in its environment, a new value
starts a new instance with it (the API tells the daemon through its nudge), the value is in no
desired file, state row, event or log line, and a secret that is not set fails the start with
how to set it while what served keeps serving."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from reconciler.readside.operations import Operations
from reconciler.stores.opened import open_stores
from tests.integration.harness import desired_yaml, environment, get

pytestmark = pytest.mark.timeout(180)

APP = """\
import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(os.environ.get("TOKEN", "none").encode())


HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Hello).serve_forever()
"""


def test_a_secret_reaches_the_site_and_a_new_value_restarts_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text(APP)
    with environment(tmp_path) as env:
        env.start()
        ops = Operations.of(open_stores(env.config()), env.config())
        ops.set_secret("api-token", "first-Secret-1")
        extra = "start:\n  command: exec python3 app.py\nbuild:\n  output: .\n"
        env.write("www", desired_yaml(app, extra=extra + "env:\n  TOKEN: {secret: api-token}\n"))
        first = env.wait_serving("www", "first-Secret-1", timeout=60)
        settings = ops.status(ops.project("www")).config

        ops.set_secret("api-token", "second-Secret-2")  # the daemon is nudged
        second = env.wait_serving("www", "second-Secret-2", timeout=60)
        assert second.productionHash == first.productionHash  # the same version, a new instance
        assert ops.status(ops.project("www")).config not in (None, settings)  # new settings

        # unset: a new start fails and says how to set it; what served keeps serving
        ops.delete_secret("api-token")
        ops.deploy(ops.project("www"))
        failed = env.wait_status("www", "failed", timeout=60)
        assert "secret 'api-token' is not set: set it with `reconciler secret set api-token`" in (
            failed.productionError or ""
        )
        assert failed.productionPort is not None
        assert get(f"http://127.0.0.1:{failed.productionPort}/") == "second-Secret-2"

        # the values are nowhere but in the vault, encrypted
        seen = [(env.desired / "www.yaml").read_text(), caplog.text]
        seen += [str(row) for row in env.db.recent_events("www", limit=500)]
        seen += [str(env.db.project("www"))]
        for log in (env.data / "production" / "www").rglob("*.log"):
            seen.append(log.read_text(errors="replace"))
        for vault in (env.data / "vault").iterdir():
            seen.append(vault.read_bytes().decode(errors="replace"))
        assert not any("Secret-1" in text or "Secret-2" in text for text in seen)
        ops.db.close()
