"""Deploys that tell the truth: what runs is what the desired file asks for, and every answer
(status, history, the CLI, the daemon log) says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.client import LocalClient
from reconciler.kinds import EdgeMode
from tests.integration.harness import desired_yaml, environment, get, wait_for

pytestmark = pytest.mark.timeout(180)

SERVER = """\
import http.server, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ.get("GREETING", "unset").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def app_site(root: Path) -> Path:
    (root / "dist").mkdir(parents=True)
    (root / "dist" / "server.py").write_text(SERVER)
    return root


def app_yaml(site: Path, greeting: str, *, generation: int = 1, command: str = "") -> str:
    start = command or "exec python3 server.py"
    return desired_yaml(
        site,
        generation=generation,
        extra=f"start:\n  command: {start}\nenv:\n  GREETING: {greeting}\n",
    )


@pytest.mark.parametrize("edge", [EdgeMode.OFF, EdgeMode.ON])
def test_a_settings_change_starts_a_new_instance_of_the_same_release(
    tmp_path: Path, edge: EdgeMode
) -> None:
    site = app_site(tmp_path / "site")
    with environment(tmp_path, edge=edge) as env:
        env.start()
        ops = LocalClient(env.desired, env.data)
        env.write("app", app_yaml(site, "one"))
        first = env.wait_serving("app", "one")
        before = ops.status("app")
        assert before["hash"] == first.productionHash and before["config"] is not None

        # the same dist, new env and a generation bump: a deploy of a new instance
        env.write("app", app_yaml(site, "two", generation=2))
        second = env.wait_serving("app", "two")
        assert second.productionHash == first.productionHash, "the same release"
        after = ops.status("app")
        assert after["config"] is not None and after["config"] != before["config"]
        wait_for(lambda: len(env.instances("app")) == 1, 20, "the old instance retired")
        assert [i.config for i in env.instances("app")] == [after["config"]]
        if edge == EdgeMode.ON:
            assert second.productionPort == first.productionPort
        else:
            assert get(f"http://127.0.0.1:{first.productionPort}/") is None
        (active,) = [v for v in ops.history("app")["versions"] if v["isActive"]]
        assert active["config"] == after["config"]

        # a start command change alone (no bump) converges too: the file is the truth
        env.write(
            "app",
            app_yaml(site, "two", generation=2, command="GREETING=three exec python3 server.py"),
        )
        third = env.wait_serving("app", "three")
        assert third.productionHash == first.productionHash
        assert ops.status("app")["config"] not in (before["config"], after["config"])
        ops.close()
