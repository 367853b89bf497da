"""Push webhooks through Flask's test client: payloads shaped as GitHub, Gitea and GitLab send
them, real HMAC signatures, a real secret file and the nudge file the daemon watches."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from reconciler.api.app import create_app
from reconciler.core.config import Config
from reconciler.core.kinds import EdgeMode
from reconciler.readside.operations import Operations
from reconciler.sources import hooks

FOLLOWS = """\
source:
  git: https://git.example.com/team/www.git
  ref: main
production:
  state: running
  follow: true
"""

SHA = "9fceb02d0ae598e95dc970b74767f19372d61af8"


def github_push(ref: str = "refs/heads/main", commits: int = 1) -> bytes:
    """The fields of GitHub's push event payload, in its shape."""
    return json.dumps({
        "ref": ref, "before": "0" * 40, "after": SHA, "created": False, "deleted": False,
        "forced": False, "compare": "https://github.com/team/www/compare/000000...9fceb0",
        "repository": {"id": 1296269, "name": "www", "full_name": "team/www",
                       "clone_url": "https://github.com/team/www.git", "default_branch": "main"},
        "pusher": {"name": "dev", "email": "dev@example.com"},
        "head_commit": {"id": SHA, "message": "Update the page", "timestamp":
                        "2026-11-28T10:00:00Z"},
        "commits": [{"id": SHA, "message": f"change {i}", "added": [], "removed": [],
                     "modified": ["dist/index.html"]} for i in range(commits)],
    }).encode()  # fmt: skip


def gitea_push(ref: str = "refs/heads/main") -> bytes:
    return json.dumps({
        "ref": ref, "before": "0" * 40, "after": SHA,
        "compare_url": "https://gitea.example.com/team/www/compare/000000...9fceb0",
        "commits": [{"id": SHA, "message": "Update the page\n", "url": "https://gitea.example.com"
                     "/team/www/commit/9fceb0", "author": {"name": "dev", "email": "d@e.com"}}],
        "repository": {"id": 3, "name": "www", "full_name": "team/www", "default_branch": "main"},
        "pusher": {"login": "dev"}, "sender": {"login": "dev"},
    }).encode()  # fmt: skip


def gitlab_push(ref: str = "refs/heads/main") -> bytes:
    return json.dumps({
        "object_kind": "push", "event_name": "push", "before": "0" * 40, "after": SHA,
        "ref": ref, "checkout_sha": SHA, "user_username": "dev", "project_id": 15,
        "project": {"name": "www", "path_with_namespace": "team/www", "default_branch": "main"},
        "commits": [{"id": SHA, "message": "Update the page", "title": "Update the page"}],
        "total_commits_count": 1,
    }).encode()  # fmt: skip


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    desired = tmp_path / "desired"
    desired.mkdir()
    (desired / "www.yaml").write_text(FOLLOWS)
    (desired / "plain.yaml").write_text("source: ../site\n")
    return Config(desired_dir=desired, data_dir=tmp_path / "data", edge=EdgeMode.OFF)


@pytest.fixture
def app(config: Config) -> Iterator[Flask]:
    app = create_app(config, token="s3cret-token")
    yield app
    ops: Operations = app.extensions["reconciler"]
    ops.db.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


URL = "/api/projects/www/hooks/git"


def nudged(config: Config) -> bool:
    return (config.nudge_dir / "www").exists()


def test_a_signed_github_push_to_the_followed_branch_nudges(
    client: FlaskClient, config: Config
) -> None:
    secret = hooks.make_secret(config.hook_secret_dir, "www")
    assert (config.hook_secret_dir / "www").stat().st_mode & 0o777 == 0o600
    body = github_push(commits=400)  # well over the API's 16 KiB body limit for writes
    assert len(body) > 16 * 1024
    response = client.post(URL, data=body, headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push",
        "X-Hub-Signature-256": f"sha256={sign(secret, body)}",
    })  # fmt: skip
    assert response.status_code == 202, response.json
    assert response.json == {
        "accepted": True,
        "message": "a push to refs/heads/main: checking it now",
    }
    assert nudged(config)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=short"},
        {"X-GitHub-Event": "push"},
        {"X-Gitea-Event": "push", "X-Gitea-Signature": "f" * 64},
        {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "not-the-secret"},
    ],
    ids=["wrong", "malformed", "unsigned", "gitea-wrong", "gitlab-wrong"],
)
def test_a_bad_signature_is_401_and_changes_nothing(
    client: FlaskClient, config: Config, headers: dict[str, str]
) -> None:
    hooks.make_secret(config.hook_secret_dir, "www")
    response = client.post(URL, data=github_push(), headers=headers)
    assert response.status_code == 401
    assert "error" in response.json  # type: ignore[operator]
    assert not nudged(config)


def test_gitea_and_gitlab_payloads(client: FlaskClient, config: Config) -> None:
    secret = hooks.make_secret(config.hook_secret_dir, "www")
    body = gitea_push()
    response = client.post(URL, data=body, headers={
        "X-Gitea-Event": "push", "X-Gitea-Signature": sign(secret, body),
    })  # fmt: skip
    assert response.status_code == 202 and response.json["accepted"]  # type: ignore[index]
    (config.nudge_dir / "www").unlink()
    body = gitlab_push()
    response = client.post(URL, data=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret,
    })  # fmt: skip
    assert response.status_code == 202 and response.json["accepted"]  # type: ignore[index]
    assert nudged(config)


def test_a_push_to_another_branch_is_ignored_with_202(client: FlaskClient, config: Config) -> None:
    secret = hooks.make_secret(config.hook_secret_dir, "www")
    body = github_push("refs/heads/feature")
    response = client.post(URL, data=body, headers={
        "X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={sign(secret, body)}",
    })  # fmt: skip
    assert response.status_code == 202
    assert response.json == {
        "accepted": False, "message": "ignored: a push to refs/heads/feature, not main"
    }  # fmt: skip
    assert not nudged(config)


def test_ping_and_other_events(client: FlaskClient, config: Config) -> None:
    secret = hooks.make_secret(config.hook_secret_dir, "www")
    body = b'{"zen": "Keep it logically awesome.", "hook_id": 1}'
    signature = {"X-Hub-Signature-256": f"sha256={sign(secret, body)}"}
    ping = client.post(URL, data=body, headers={"X-GitHub-Event": "ping", **signature})
    assert ping.status_code == 200 and ping.json["message"] == "pong"  # type: ignore[index]
    issue = client.post(URL, data=body, headers={"X-GitHub-Event": "issues", **signature})
    assert issue.status_code == 202 and not issue.json["accepted"]  # type: ignore[index]
    assert not nudged(config)


def test_a_rotated_secret_refuses_the_old_one(client: FlaskClient, config: Config) -> None:
    old = hooks.make_secret(config.hook_secret_dir, "www")
    assert hooks.make_secret(config.hook_secret_dir, "www") == old  # stable until rotated
    new = hooks.make_secret(config.hook_secret_dir, "www", rotate=True)
    assert new != old
    body = github_push()
    stale = client.post(URL, data=body, headers={
        "X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={sign(old, body)}"})  # fmt: skip
    assert stale.status_code == 401 and not nudged(config)
    fresh = client.post(URL, data=body, headers={
        "X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={sign(new, body)}"})  # fmt: skip
    assert fresh.status_code == 202 and nudged(config)


def test_no_secret_or_no_follow_is_409(client: FlaskClient, config: Config) -> None:
    body = github_push()
    response = client.post(URL, data=body, headers={"X-Hub-Signature-256": "sha256=00"})
    assert response.status_code == 409
    assert "hook-secret" in response.json["error"]  # type: ignore[index]
    secret = hooks.make_secret(config.hook_secret_dir, "plain")
    response = client.post("/api/projects/plain/hooks/git", data=body, headers={
        "X-Hub-Signature-256": f"sha256={sign(secret, body)}"})  # fmt: skip
    assert response.status_code == 409
    assert "follow" in response.json["error"]  # type: ignore[index]
    assert not (config.nudge_dir / "plain").exists()


def test_hostile_ids_and_the_bearer_token(client: FlaskClient, config: Config) -> None:
    assert client.post("/api/projects/..%2Fetc/hooks/git", data=b"{}").status_code in (400, 404)
    assert client.post("/api/projects/nope/hooks/git", data=b"{}").status_code == 404
    # other writes still need the bearer token; the webhook has its own check
    assert client.post("/api/projects/www/deploy", json={}).status_code == 401


PREVIEWED = """\
source:
  git: https://git.example.com/team/site.git
  ref: main
production:
  state: running
previews:
  branches: [feature/*]
  requests: true
"""


def github_pull(action: str, number: int = 12, branch: str = "feature/login") -> bytes:
    """The fields of GitHub's (and Gitea's) pull_request event, in its shape."""
    return json.dumps({
        "action": action, "number": number,
        "pull_request": {"number": number, "state": "closed" if action == "closed" else "open",
                         "merged": False, "head": {"ref": branch, "sha": SHA},
                         "base": {"ref": "main"}},
        "repository": {"full_name": "team/site"}, "sender": {"login": "dev"},
    }).encode()  # fmt: skip


def gitlab_merge_request(action: str, iid: int = 4, branch: str = "fix-typo") -> bytes:
    return json.dumps({
        "object_kind": "merge_request", "event_type": "merge_request",
        "project": {"path_with_namespace": "team/site"},
        "object_attributes": {"iid": iid, "source_branch": branch, "target_branch": "main",
                              "action": action, "state": "merged" if action == "merge" else
                              "opened"},
    }).encode()  # fmt: skip


def test_requests_and_pushes_to_any_branch_reach_a_previewed_project(
    client: FlaskClient, config: Config
) -> None:
    (config.desired_dir / "site.yaml").write_text(PREVIEWED)
    secret = hooks.make_secret(config.hook_secret_dir, "site")
    url = "/api/projects/site/hooks/git"
    requests = config.layout.previews / "requests"

    def post(body: bytes, **headers: str) -> dict[str, object]:
        response = client.post(url, data=body, headers=headers)
        assert response.status_code == 202, response.json
        return response.json  # type: ignore[no-any-return]

    github = {"X-Hub-Signature-256": f"sha256={sign(secret, github_pull('opened'))}"}
    opened = post(github_pull("opened"), **{"X-GitHub-Event": "pull_request", **github})
    assert opened["accepted"] and "request 12 (feature/login) open" in str(opened["message"])
    assert hooks.open_requests(requests, "site") == {12: "feature/login"}
    assert (config.nudge_dir / "site").exists()

    body = github_pull("closed")
    post(body, **{"X-Gitea-Event": "pull_request", "X-Gitea-Signature": sign(secret, body)})
    assert hooks.open_requests(requests, "site") == {}

    post(gitlab_merge_request("open"), **{"X-Gitlab-Event": "Merge Request Hook",
                                          "X-Gitlab-Token": secret})  # fmt: skip
    assert hooks.open_requests(requests, "site") == {4: "fix-typo"}
    post(gitlab_merge_request("merge"), **{"X-Gitlab-Event": "Merge Request Hook",
                                           "X-Gitlab-Token": secret})  # fmt: skip
    assert hooks.open_requests(requests, "site") == {}

    body = github_push("refs/heads/feature/other")  # not the followed ref: a preview's news
    pushed = post(body, **{"X-GitHub-Event": "push",
                           "X-Hub-Signature-256": f"sha256={sign(secret, body)}"})  # fmt: skip
    assert pushed == {"accepted": True, "message":
                      "a push to refs/heads/feature/other: previews checked now"}  # fmt: skip


def test_a_request_event_is_ignored_where_nothing_is_previewed(
    client: FlaskClient, config: Config
) -> None:
    secret = hooks.make_secret(config.hook_secret_dir, "www")
    body = github_pull("opened")
    response = client.post(URL, data=body, headers={
        "X-GitHub-Event": "pull_request", "X-Hub-Signature-256": f"sha256={sign(secret, body)}",
    })  # fmt: skip
    assert response.status_code == 202 and not response.json["accepted"]  # type: ignore[index]
    assert not nudged(config)
    assert hooks.open_requests(config.layout.previews / "requests", "www") == {}


def test_a_payload_over_the_webhook_limit_is_refused_with_that_limit(client: FlaskClient) -> None:
    body = b"{" + b" " * hooks.MAX_PAYLOAD + b"}"
    response = client.post(URL, data=body, headers={"X-Hub-Signature-256": "sha256=00"})
    assert response.status_code == 413
    assert response.json["error"].startswith(  # type: ignore[index]
        f"the body is larger than {hooks.MAX_PAYLOAD} bytes"
    )
