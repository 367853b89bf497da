"""Deploy notifications against loopback receivers: one that takes them, one that fails twice
before it does, one that never answers; a real daemon and real deploys."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.api.app import create_app
from reconciler.controller.metrics import Finished
from reconciler.core.kinds import DeploymentKind, DeploymentState, EventType
from reconciler.core.spec import NotifyTarget, ProjectId
from reconciler.daemon.notifications import Notifications
from reconciler.stores.state import StateDB
from tests.conftest import free_port
from tests.integration.harness import desired_yaml, environment, make_site, wait_for

pytestmark = pytest.mark.timeout(180)


@dataclass
class Receiver:
    """A loopback webhook receiver: ``ok`` answers 200; ``flaky`` 500 ``fail_first`` times
    first; ``hang`` never answers (until the test ends)."""

    mode: str
    fail_first: int = 2
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    calls: int = 0
    port: int = field(default_factory=free_port)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> http.server.ThreadingHTTPServer:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls += 1
                if receiver.mode == "hang":
                    receiver.release.wait(30)
                    return
                if receiver.mode == "flaky" and receiver.calls <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    made = {mode: Receiver(mode) for mode in ("ok", "flaky", "hang")}
    servers = [r.start() for r in made.values()]
    yield made
    for receiver in made.values():
        receiver.release.set()
    for server in servers:
        server.shutdown()
        server.server_close()


def notify_yaml(receivers: dict[str, Receiver]) -> str:
    return (
        "notify:\n"
        f"  - url: {receivers['ok'].url}\n"
        f"  - url: {receivers['flaky'].url}\n    format: slack\n"
        f"    events: [deploy.succeeded]\n"
        f"  - url: {receivers['hang'].url}\n"
    )


def signed(secret: bytes, headers: dict[str, str], body: bytes) -> bool:
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["x-reconciler-signature-256"], expected)


def test_deploys_failures_and_rollbacks_are_told_without_waiting_for_receivers(
    tmp_path: Path, receivers: dict[str, Receiver]
) -> None:
    site = make_site(tmp_path / "site", "<p>one</p>")
    extra = {"notify_timeout": 0.5, "notify_backoff": 0.05, "notify_attempts": 3}
    with environment(tmp_path, extra_config=extra) as env:
        env.start()
        started = time.monotonic()
        env.write("www", desired_yaml(site, extra=notify_yaml(receivers)))
        first = env.wait_serving("www", "one")
        # the deploy finished while the hanging receiver still holds its first attempt
        assert time.monotonic() - started < 10

        ok, flaky, hang = receivers["ok"], receivers["flaky"], receivers["hang"]
        wait_for(lambda: ok.got and len(flaky.got) == 1, 20, "ok and flaky delivered")
        secret = (env.data / "hooks" / "secrets" / "_notify").read_bytes().strip()
        headers, body = ok.got[0]
        assert signed(secret, headers, body)
        assert headers["x-reconciler-event"] == "deploy.succeeded"
        sent = json.loads(body)
        assert sent["event"] == "deploy.succeeded" and sent["project"] == "www"
        assert sent["hash"] == first.productionHash and sent["url"] == first.productionUrl
        headers, body = flaky.got[0]
        assert signed(secret, headers, body)
        assert json.loads(body) == {
            "text": f"www: deployed {first.productionHash} at {first.productionUrl}"
        }
        assert flaky.calls == 3, "two failures, then delivered"

        def attempts(target: str) -> list[dict[str, Any]]:
            return [
                e.payload() for e in env.db.events_after("www", 0)
                if e.type == EventType.NOTIFICATION and e.payload()["target"] == target
            ]  # fmt: skip

        wait_for(lambda: len(attempts(hang.url)) == 3, 20, "three attempts at the hanging one")
        tried = attempts(hang.url)
        assert [a["attempt"] for a in tried] == [1, 2, 3]
        assert not any(a["delivered"] for a in tried)
        assert (
            tried[-1]["message"].endswith("giving up")
            and "no answer within 0.5 s" in tried[-1]["outcome"]
        )
        assert [a["delivered"] for a in attempts(flaky.url)] == [False, False, True]
        # the same attempts through the API (and the dashboard, which reads it)
        api = create_app(env.config()).test_client()
        listed = api.get("/api/projects/www/events?type=production.notification").json
        assert len([e for e in listed["events"] if e["data"]["target"] == hang.url]) == 3  # type: ignore[index]
        assert api.get("/api/projects/www/events?limit=0").status_code == 400
        assert api.get("/api/projects/www/events?type=nope").status_code == 400

        # a failed deploy: told to the targets that want deploy.failed
        (site / "dist").rename(site / "gone")
        env.write("www", desired_yaml(site, generation=2, extra=notify_yaml(receivers)))
        env.wait_status("www", "failed")
        wait_for(lambda: len(ok.got) == 2, 20, "the failure told")
        failure = json.loads(ok.got[1][1])
        assert failure["event"] == "deploy.failed" and "the source has no dist/" in failure["error"]
        assert len(flaky.got) == 1, "flaky takes deploy.succeeded only"

        # a rollback (pin a kept version)
        (site / "gone").rename(site / "dist")
        (site / "dist" / "index.html").write_text("<p>two</p>")
        env.write("www", desired_yaml(site, generation=3, extra=notify_yaml(receivers)))
        env.wait_serving("www", "two")
        wait_for(lambda: len(ok.got) == 3, 20, "the second deploy told")
        env.write("www", desired_yaml(site, generation=3, version=str(first.productionHash),
                                      extra=notify_yaml(receivers)))  # fmt: skip
        env.wait_serving("www", "one")
        wait_for(lambda: len(ok.got) == 4, 20, "the rollback told")
        rollback = json.loads(ok.got[3][1])
        assert rollback["event"] == "rollback.succeeded"
        assert rollback["hash"] == first.productionHash


def test_repeated_repairs_are_told_once(tmp_path: Path, receivers: dict[str, Receiver]) -> None:
    db = StateDB(tmp_path / "state.db")
    ok = receivers["ok"]
    notifications = Notifications(
        db, lambda _p: None, lambda: b"secret", defaults=[NotifyTarget(url=ok.url)],
        timeout=1, backoff=0.01,
    )  # fmt: skip
    try:
        repair = Finished(ProjectId("app"), DeploymentKind.REPAIR, DeploymentState.SUCCEEDED,
                          0.2, None, {"hash": "aaaaaaaa"}, None)  # fmt: skip
        for _ in range(5):
            notifications.deployment_finished(repair)
        wait_for(lambda: ok.got, 10, "told")
        time.sleep(0.3)  # (a second telling would have come by now)
        assert len(ok.got) == 1
        told = json.loads(ok.got[0][1])
        assert told["event"] == "repair.repeated" and told["repairs"] == 3
        # the same failure again (a transient error retried) is told once; a new one is told
        failed = Finished(ProjectId("web"), DeploymentKind.DEPLOY, DeploymentState.FAILED, 0.1,
                          "git fetch: the remote hung up", None, None)  # fmt: skip
        for _ in range(3):
            notifications.deployment_finished(failed)
        wait_for(lambda: len(ok.got) == 2, 10, "the failure told")
        other = Finished(ProjectId("web"), DeploymentKind.DEPLOY, DeploymentState.FAILED, 0.1,
                         "Build failed: exit 2", None, None)  # fmt: skip
        notifications.deployment_finished(other)
        wait_for(lambda: len(ok.got) == 3, 10, "a different failure told")
        time.sleep(0.3)
        assert [json.loads(body)["event"] for _h, body in ok.got] == [
            "repair.repeated",
            "deploy.failed",
            "deploy.failed",
        ]
        # a stop or an activation without a pin tells nobody
        for kind in (DeploymentKind.STOP, DeploymentKind.ACTIVATE):
            notifications.deployment_finished(
                Finished(ProjectId("app"), kind, DeploymentState.SUCCEEDED, 0.1, None, None, None)
            )
        time.sleep(0.3)
        assert len(ok.got) == 3
    finally:
        notifications.close()
        db.close()
